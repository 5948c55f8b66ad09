"""Limits and auth on the HTTP app (tiny host, transformers engine): oversized bodies are refused before
they are parsed, prompts too long to fit before they are tokenized, and with an API key nothing that reveals
the server answers without it."""

import json
import time

import pytest

from tests.serving.tiny_app import KEY, KEY_ENV, client_for, tiny_service

AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def svc(tmp_path_factory, tiny_host):
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("limits")
    mp.setenv("BRICK_CACHE", str(root / "cache"))
    mp.setenv(KEY_ENV, KEY)
    yield tiny_service(root, tiny_host, f"  api_key_env: {KEY_ENV}\n")
    mp.undo()


@pytest.fixture(scope="module")
def client(svc):
    with client_for(svc) as c:
        yield c


def chat(content: str, **kw) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_tokens": 2, **kw}


def test_a_normal_request_is_served(client):
    r = client.post("/v1/chat/completions", json=chat("hello", bricks=["french"]), headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["brickwork"]["bricks"] == ["fr@1.0.0"]


def test_a_20_mb_body_is_refused_before_it_is_read(client):
    """Before: the body was parsed and tokenized in full (18.7 s of CPU on SmolLM2) and answered 422."""
    body = json.dumps(chat("hello world " * (20_000_000 // 12))).encode()
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", content=body, headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert time.perf_counter() - t0 < 2
    assert "at most 4096 (server.max_body_bytes)" in r.json()["error"]["message"]


def test_a_chunked_body_is_counted_as_it_comes(client):
    body = json.dumps(chat("x" * 10_000)).encode()
    sent = []

    def chunks():
        for i in range(0, len(body), 1000):
            sent.append(i)
            yield body[i:i + 1000]

    r = client.post("/v1/completions", content=chunks(), headers={**AUTH, "content-type": "application/json"})
    assert r.status_code == 413 and "more than 4096 bytes" in r.json()["error"]["message"]


def test_a_prompt_that_cannot_fit_is_refused_by_characters_before_tokenizing(client, svc, monkeypatch):
    limit = 128 * svc.longest_token
    monkeypatch.setattr(svc.host.tokenizer.__class__, "__call__", lambda *a, **k: pytest.fail("tokenized"))
    r = client.post("/v1/completions", json={"prompt": "a" * (limit + 1), "max_tokens": 1}, headers=AUTH)
    assert r.status_code == 422 and f"prompt is {limit + 1} characters" in r.json()["error"]["message"]


def test_the_character_bound_never_refuses_a_prompt_that_fits(svc):
    """The bound is a true lower bound on tokens: the text of the longest tokens, repeated, still fits."""
    tok = svc.host.tokenizer
    words = sorted(tok.convert_ids_to_tokens(list(range(len(tok)))), key=len)[-5:]
    text = tok.convert_tokens_to_string(words * 20)
    assert len(svc.tokenize(text)) <= len(text) and len(text) <= 100 * svc.longest_token


@pytest.mark.parametrize("body,word", [
    ({"messages": [{"role": "user", "content": "hi"}] * 17, "max_tokens": 1}, "at most 16 (server.max_messages)"),
    ({"prompt": "hi", "max_tokens": 9}, "above the server's limit 8"),
    ({"prompt": "hi", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"prompt": "hi", "stop": "s" * 300}, "stop"),
    ({"prompt": "hi", "bricks": ["b"] * 65}, "bricks"),
    ({"prompt": "hi", "bricks": [{"ref": "r" * 300}]}, "at most 256"),
    ({"prompt": "hi", "model": "m" * 300}, "model"),
    ({"prompt": "hi", "seed": 2**64}, "seed"),
    ({"prompt": "\ud800"}, "surrogate"),
    ({"prompt": ""}, "the prompt is empty"),
    ({"prompt": "hi", "temperature": 1e-300, "max_tokens": 1}, None),
])
def test_sizes_are_capped(client, body, word):
    path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
    # json.dumps escapes the surrogate as JSON allows ("\ud800"); httpx's json= cannot encode it
    r = client.post(path, content=json.dumps(body), headers={**AUTH, "content-type": "application/json"})
    if word is None:  # served: a temperature below 1e-5 is greedy, as in vLLM (was NaN probabilities, a 500)
        assert r.status_code == 200, r.text
        return
    assert r.status_code == 422, r.text
    assert word in r.json()["error"]["message"]


# --- auth ------------------------------------------------------------------------------------------------
def test_every_route_but_bare_health_needs_the_key(client):
    """Routes are listed from the app, so a route added later is covered too."""
    paths = {route.path: sorted(route.methods) for route in client.app.routes if hasattr(route, "methods")}
    assert set(paths) >= {"/v1/models", "/v1/bricks", "/metrics", "/health", "/openapi.json", "/docs"}
    for path, methods in paths.items():
        for method in methods:
            if path == "/health" or method == "HEAD":
                continue
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                r = client.request(method, path, headers=headers, json={"prompt": "x"})
                assert r.status_code == 401, (method, path, r.status_code)
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/health", headers=AUTH).json()["engine"] == "transformers"
    assert client.get("/v1/bricks", headers=AUTH).json()["data"][0]["resolved"] == "fr@1.0.0"


def test_no_route_changes_the_registry(client):
    """Only the two completion routes accept a body; every other route is GET/HEAD (reads)."""
    writes = {route.path for route in client.app.routes
              if set(getattr(route, "methods", ())) - {"GET", "HEAD"}}
    assert writes == {"/v1/chat/completions", "/v1/completions"}
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/v1/bricks", "/v1/bricks/fr", "/v1/models", "/v1/registry"):
            assert client.request(method, path, headers=AUTH).status_code in (404, 405)


def test_the_key_never_appears_in_answers_or_logs(client, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    answers = [client.post("/v1/completions", json={"prompt": KEY, "bricks": [KEY]}, headers=AUTH),
               client.post("/v1/completions", json={"prompt": 5}, headers=AUTH),
               client.get("/v1/models", headers={"Authorization": f"Bearer {KEY}x"}),
               client.get("/v1/models", headers={"Authorization": KEY[:-1]}),
               client.get("/metrics", headers=AUTH), client.get("/health", headers=AUTH)]
    assert [r.status_code for r in answers] == [404, 422, 401, 401, 200, 200]  # 404: no brick named so
    for r in answers[1:]:  # the first echoes what it was sent
        assert KEY not in r.text and KEY[:12] not in r.text
    assert KEY not in caplog.text


def test_a_missing_key_variable_is_named_not_shown(tmp_path, tiny_host, monkeypatch):
    from bricks.errors import InvalidInputError

    monkeypatch.setenv("BRICK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BRICK_UNSET_KEY", raising=False)
    svc = tiny_service(tmp_path, tiny_host, "  api_key_env: BRICK_UNSET_KEY\n")
    with pytest.raises(InvalidInputError, match="BRICK_UNSET_KEY"):
        client_for(svc)


def test_logprobs_in_the_openai_shapes(client):
    """Chat `logprobs: true` and completions `logprobs: 0`: each generated token with its logprob, the same
    streamed as in one response; alternatives (top_logprobs > 0) are refused, the engine keeps none."""
    r = client.post("/v1/chat/completions", json=chat("hello", max_tokens=4, temperature=0, logprobs=True),
                    headers=AUTH).json()
    content = r["choices"][0]["logprobs"]["content"]
    assert len(content) == r["usage"]["completion_tokens"] and all(c["logprob"] <= 0 for c in content)
    assert "".join(c["token"] for c in content) == r["choices"][0]["message"]["content"]
    with client.stream("POST", "/v1/chat/completions", headers=AUTH,
                       json=chat("hello", max_tokens=4, temperature=0, logprobs=True, stream=True)) as s:
        events = [json.loads(line[6:]) for line in s.iter_lines() if line.startswith("data: {")]
    streamed = [c for e in events for c in (e["choices"][0].get("logprobs") or {}).get("content", [])]
    assert [c["logprob"] for c in streamed] == [c["logprob"] for c in content]
    comp = client.post("/v1/completions", json={"prompt": "hello", "max_tokens": 3, "temperature": 0, "logprobs": 0},
                       headers=AUTH).json()["choices"][0]
    lp = comp["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["text_offset"]) and lp["text_offset"][0] == 0
    plain = client.post("/v1/chat/completions", json=chat("hello"), headers=AUTH).json()
    assert "logprobs" not in plain["choices"][0]
    bad = client.post("/v1/chat/completions", json=chat("hello", logprobs=True, top_logprobs=3), headers=AUTH)
    assert bad.status_code == 422 and "top_logprobs" in bad.text
