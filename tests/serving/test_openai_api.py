"""The OpenAI API as vLLM's serving layer speaks it, through `brick serve` (the official openai client on
loopback, session engine), with brickwork's bricks, report, header and limits around it; and the same
request bodies (content parts) on the reference engine's own layer (tiny host)."""

import httpx
import pytest

from serving.engine import GenRequest
from tests.serving.conftest import KEY

CAPITAL = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture
def client(base_url):
    from openai import OpenAI

    return OpenAI(base_url=f"{base_url}/v1", api_key=KEY)


def chat(client, **kw):
    kw = {"model": "equivalence", "messages": CAPITAL, "max_tokens": 10, "temperature": 0, **kw}
    return client.chat.completions.create(**kw)


@pytest.mark.real
@pytest.mark.vllm
def test_content_parts_are_the_same_prompt(client):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]}]
    raw = client.chat.completions.with_raw_response.create(model="equivalence", messages=parts, max_tokens=10,
                                                           temperature=0, extra_body={"bricks": ["amp"]})
    got = raw.parse()
    assert raw.headers["x-brick-assembly"] == got.model_extra["brickwork"]["assembly"] != "none"
    assert got.model == "equivalence"
    assert got.choices[0].message.content == chat(client, extra_body={"bricks": ["amp"]}).choices[0].message.content


@pytest.mark.real
@pytest.mark.vllm
def test_logprobs_with_top_logprobs(client):
    got = chat(client, logprobs=True, top_logprobs=3).choices[0].logprobs.content
    assert got and all(len(t.top_logprobs) == 3 for t in got)
    for t in got:  # greedy: the chosen token is the most likely one
        assert t.logprob == pytest.approx(max(x.logprob for x in t.top_logprobs), abs=1e-4)
        assert t.token == t.top_logprobs[0].token


@pytest.mark.real
@pytest.mark.vllm
def test_n_choices_and_seed_reproducibility(client):
    kw = {"temperature": 1.0, "seed": 1234, "max_tokens": 12, "extra_body": {"bricks": ["steer"]}}
    first, again = chat(client, n=2, **kw), chat(client, n=2, **kw)
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert first.usage.completion_tokens > 0


@pytest.mark.real
@pytest.mark.vllm
def test_streaming_with_usage_and_the_report(client):
    chunks = list(chat(client, stream=True, stream_options={"include_usage": True},
                       extra_body={"bricks": [{"ref": "staged", "generated_offset_scale": 0.7}]}))
    assert chunks[0].model_extra["brickwork"]["bricks"][0].startswith("staged@")
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage.completion_tokens > 0 and usage.prompt_tokens > 0
    plain = chat(client, extra_body={"bricks": [{"ref": "staged", "generated_offset_scale": 0.7}]})
    assert text == plain.choices[0].message.content and usage.completion_tokens == plain.usage.completion_tokens


@pytest.mark.real
@pytest.mark.vllm
def test_stop_sequences_and_ignore_eos(client):
    full = client.completions.create(model="equivalence", prompt="The capital of France is", max_tokens=12,
                                     temperature=0).choices[0].text
    word = full.split()[2]
    cut = client.completions.create(model="equivalence", prompt="The capital of France is", max_tokens=12,
                                    temperature=0, stop=[word]).choices[0]
    assert cut.text == full[:full.index(word)] and cut.finish_reason == "stop"
    long = client.completions.create(model="equivalence", prompt="Hi", max_tokens=20, temperature=0,
                                     extra_body={"ignore_eos": True, "min_tokens": 20})
    assert long.usage.completion_tokens == 20


@pytest.mark.real
@pytest.mark.vllm
@pytest.mark.parametrize("bricks", [["abl", "amp"], [{"ref": "staged", "generated_offset_scale": 0.7}], ["lora"],
                                    ["grow"]], ids=["neurons", "staged", "lora", "growth"])
def test_bricks_run_as_the_engine_runs_that_assembly(client, served, bg_loop, bricks):
    got = chat(client, max_tokens=8, logprobs=True, extra_body={"bricks": bricks})
    _, built = served.plan(CAPITAL[0]["content"], bricks)
    assert got.model_extra["brickwork"]["assembly"] == built.id
    ids = served.tokenize_chat(CAPITAL)
    want = bg_loop.run(served.engine.generate(GenRequest(ids, 8, logprobs=True), built))
    assert got.choices[0].message.content == want.text
    lps = [t.logprob for t in got.choices[0].logprobs.content]
    assert lps == pytest.approx(want.logprobs, abs=1e-4)


@pytest.mark.real
@pytest.mark.vllm
@pytest.mark.parametrize("body,status,word", [
    ({"prompt": list(range(1, 600))}, 422, "prompt is 599 tokens"),
    ({"prompt": "x", "vllm_xargs": {"brick_row": "/etc/passwd"}}, 422, "brickwork's own"),
    ({"prompt": "x", "model": "no-such-model"}, 404, "no-such-model"),
    ({"prompt": "x", "logprobs": 50}, 400, "logprobs"),
])
def test_limits_and_vllm_errors_are_json(base_url, body, status, word):
    r = httpx.post(f"{base_url}/v1/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    assert word in r.json()["error"]["message"]


@pytest.mark.real
@pytest.mark.vllm
def test_streamed_tokens_are_counted(client, base_url):
    def completion_tokens() -> float:
        text = httpx.get(f"{base_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        line = next(x for x in text.splitlines() if x.startswith('brick_tokens_total{kind="completion"}'))
        return float(line.split()[-1])

    before = completion_tokens()
    list(client.completions.create(model="equivalence", prompt="Hi", max_tokens=5, temperature=0, stream=True,
                                   extra_body={"ignore_eos": True}))
    assert completion_tokens() - before == 5


# --- the reference engine's own layer takes the same bodies ------------------------------------------------
def test_reference_layer_flattens_content_parts(tmp_path, tiny_host, monkeypatch):
    from tests.serving.tiny_app import client_for, tiny_service

    monkeypatch.setenv("BRICK_CACHE", str(tmp_path / "cache"))
    svc = tiny_service(tmp_path, tiny_host)
    with client_for(svc) as c:
        def ask(content):
            body = {"messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 0}
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"]

        assert ask([{"type": "text", "text": "hello"}, {"type": "text", "text": "there"}]) == ask("hello\nthere")
        r = c.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": [{"type": "image_url"}]}]})
        assert r.status_code == 422


# --- brickwork's glue around vLLM's layer, on a scripted engine (tiny host, no vLLM engine started) --------
class ScriptedLLM:
    """What vLLM's serving classes use of an AsyncLLM, with the tiny host's reference engine generating:
    records every request's prompt, SamplingParams and LoRARequest."""

    def __init__(self, host, reference):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.renderers import renderer_from_config

        self.vllm_config = AsyncEngineArgs(model=str(host.path), dtype="float32", max_model_len=256,
                                           max_logprobs=20).create_engine_config()
        self.model_config = self.vllm_config.model_config
        self.renderer = renderer_from_config(self.vllm_config)
        self.input_processor = None
        self.errored = False
        self.reference, self.seen = reference, []

    def check_admission(self, n: int = 1, request_id=None) -> None:
        pass

    async def generate(self, prompt, params, request_id, lora_request=None, **kw):
        from vllm.logprobs import Logprob
        from vllm.outputs import CompletionOutput, RequestOutput
        from vllm.sampling_params import RequestOutputKind

        self.seen.append((prompt, params, lora_request))
        built = self.reference_assembly
        gen = GenRequest(list(prompt["prompt_token_ids"]), params.max_tokens, logprobs=True)
        delta = params.output_kind == RequestOutputKind.DELTA
        text, ids, lps = "", [], []
        async for d in self.reference.stream(gen, built):
            text, ids = (d.text, d.token_ids) if delta else (text + d.text, ids + d.token_ids)
            lps = [{t: Logprob(lp, 1, None)} for t, lp in zip(d.token_ids, d.logprobs)] if delta else (
                lps + [{t: Logprob(lp, 1, None)} for t, lp in zip(d.token_ids, d.logprobs)])
            finished = d.finish_reason is not None
            if delta or finished:
                out = CompletionOutput(0, text, list(ids), None, lps if params.logprobs is not None else None,
                                       d.finish_reason and "length")
                yield RequestOutput(request_id, None, prompt["prompt_token_ids"], None, [out], finished)


class ScriptedEngine:
    name = "vllm"

    def __init__(self, llm):
        self.llm = llm

    def lora_request(self, built):
        return None


@pytest.fixture(scope="module")
def glue(tmp_path_factory, tiny_host):
    from tests.serving.tiny_app import client_for, tiny_service

    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("glue")
    mp.setenv("BRICK_CACHE", str(root / "cache"))
    svc = tiny_service(root, tiny_host)
    llm = ScriptedLLM(tiny_host, svc.reference)
    svc.engine = ScriptedEngine(llm)
    with client_for(svc) as c:
        yield svc, llm, c
    mp.undo()


def test_glue_sets_the_assembly_where_vllm_reads_it(glue):
    svc, llm, c = glue
    _, built = svc.plan("hello", ["french"])
    llm.reference_assembly = built
    body = {"messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}], "max_tokens": 3,
            "temperature": 0, "bricks": ["french"], "cache_salt": "mine", "vllm_xargs": {"other": 1}}
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-brick-assembly"] == built.id == r.json()["brickwork"]["assembly"]
    prompt, params, _ = llm.seen[-1]
    assert prompt["prompt_token_ids"] == svc.tokenize_chat([{"role": "user", "content": "hello"}])
    assert prompt["cache_salt"] == f"brick-{built.id}/client-mine"
    assert params.extra_args["brick_row"] == str(built.row_path) and params.extra_args["other"] == 1
    want = bg_free_generate(svc, prompt["prompt_token_ids"], 3, built)
    assert r.json()["choices"][0]["message"]["content"] == want


def bg_free_generate(svc, ids, n, built) -> str:
    import asyncio

    return asyncio.run(svc.reference.generate(GenRequest(ids, n), built)).text


def test_glue_streams_the_report_first_and_counts_tokens(glue):
    svc, llm, c = glue
    _, llm.reference_assembly = svc.plan("hi", [])
    body = {"prompt": "hi", "max_tokens": 4, "temperature": 0, "stream": True, "model": "fr-only"}
    _, llm.reference_assembly = svc.plan("hi", None, "fr-only")
    with c.stream("POST", "/v1/completions", json=body) as r:
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    import json

    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["brickwork"]["bricks"] == ["fr@1.0.0"] and "brickwork" not in chunks[-1]
    assert {ch["model"] for ch in chunks} == {"fr-only"}
    assert "cache_salt" in llm.seen[-1][0] and llm.seen[-1][0]["cache_salt"].startswith("brick-")
    metrics = c.get("/metrics").text
    assert 'brick_tokens_total{kind="completion"}' in metrics


@pytest.mark.parametrize("body,status,word", [
    ({"prompt": "x", "vllm_xargs": {"brick_row": "/etc/passwd"}}, 422, "brickwork's own"),
    ({"prompt": "x", "bricks": ["nope"]}, 404, "nope"),
    ({"prompt": "x", "max_tokens": 100}, 422, "max_tokens"),
    ({"prompt": "x" * 20_000}, 413, "body"),
    ({"prompt": list(range(3, 200))}, 422, "prompt is 197 tokens"),
    ({"prompt": "x", "model": "other"}, 404, "other"),
    ({"messages": [{"role": "user", "content": "x"}] * 17}, 422, "messages"),
    ({"prompt": 5}, 422, "prompt"),
    ({"prompt": "x", "temperature": -1}, 422, "temperature"),
    ({"prompt": "x", "bricks": [{"ref": "fr", "gian": 2}]}, 422, "gian"),
])
def test_glue_limits_and_errors(glue, body, status, word):
    svc, llm, c = glue
    _, llm.reference_assembly = svc.plan("x", [])
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = c.post(path, json=body)
    assert r.status_code == status, r.text
    assert word in r.json()["error"]["message"]
