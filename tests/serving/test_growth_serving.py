"""A request that does not route a growth brick gets exactly the plain host's output, on both growth paths.

`served` holds `grow` resident (gain table) and, published after start, `grow-late` (LoRA); `plain` is
the same engine settings on the plain host (no growth slots, no LoRA). The same batch of no-brick
requests on both must give the same tokens and the same logprobs bit for bit; and no-brick requests
batched beside requests that route the growth bricks (both paths) must too.
"""

import asyncio

import pytest

from router.assembly import BrickChoice
from serving.engine import GenRequest, VllmEngine, VllmSettings
from tests.serving.conftest import late_growth

pytestmark = [pytest.mark.real, pytest.mark.vllm]

ALONE = ["Write one sentence about winter mornings.", "What is the boiling point of water?",
         "List two uses of copper.", "Translate 'good night' into Spanish.", "def is_even(n):",
         "The three primary colours are", "Who wrote Romeo and Juliet?", "A haiku about the moon:"]
BESIDE = ["Describe a lighthouse in one line.", "What is seven times eight?", "Name a planet with rings.",
          "import numpy as np\n", "The opposite of ancient is", "Give a synonym for quick.",
          "Why do cats purr?", "Rain falls because"]
ROUTED = {"resident": ["grow"], "lora": ["grow-late"], "mix": ["grow", "grow-late", "abl"]}


@pytest.fixture(scope="module")
def plain(served, real_host, bg_loop):
    """The plain host on vLLM with `served`'s settings except growth slots, resident bricks and LoRA."""
    s = served._settings()
    settings = VllmSettings(dtype=s.dtype, max_model_len=s.max_model_len, enforce_eager=s.enforce_eager,
                            enable_prefix_caching=s.enable_prefix_caching, max_rows=s.max_rows,
                            max_num_seqs=s.max_num_seqs, gpu_memory_utilization=0.15)
    engine = VllmEngine(real_host, settings)
    bg_loop.run(engine.start())
    yield engine
    bg_loop.run(engine.stop())


def _run(engine, bg_loop, jobs):
    async def run_all():
        return await asyncio.gather(*(engine.generate(r, b) for r, b in jobs))

    return bg_loop.run(run_all())


def _request(svc, prompt):
    return GenRequest(svc.tokenize(prompt), max_tokens=16, logprobs=True)


def _max_diff(a, b):
    return max((abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga.logprobs, gb.logprobs)), default=0.0)


@pytest.fixture(scope="module")
def outputs(served, plain, bg_loop):
    late_growth(served)
    none = served.cache.get([])
    routed = {k: served.cache.get([BrickChoice(n) for n in names]) for k, names in ROUTED.items()}
    plain_alone = _run(plain, bg_loop, [(_request(served, p), none) for p in ALONE])
    plain_beside = _run(plain, bg_loop, [(_request(served, p), none) for p in BESIDE])
    alone = _run(served.engine, bg_loop, [(_request(served, p), none) for p in ALONE])
    jobs = [(_request(served, p), none) for p in BESIDE]
    jobs += [(_request(served, p), b) for b in routed.values() for p in BESIDE]
    beside = _run(served.engine, bg_loop, jobs)
    return {"plain_alone": plain_alone, "plain_beside": plain_beside, "alone": alone,
            "beside": beside[: len(BESIDE)], "routed": beside[len(BESIDE):]}


@pytest.mark.parametrize(("batch", "what"), [
    ("alone", "no-brick batch, growth engine vs plain host"),
    ("beside", "no-brick requests beside routed growth (both paths) vs plain host alone"),
], ids=["alone", "beside"])
def test_no_brick_requests_equal_the_plain_host(outputs, batch, what):
    got, want = outputs[batch], outputs[f"plain_{batch}"]
    assert [g.token_ids for g in got] == [w.token_ids for w in want]
    diff = _max_diff(got, want)
    print(f"{what}: max |logprob diff| {diff:.2e}")
    assert diff == 0.0


def test_the_growth_bricks_did_run(outputs):
    routed, none = outputs["routed"], outputs["plain_beside"]
    n = len(BESIDE)
    for k, label in enumerate(ROUTED):
        changed = sum(r.token_ids != p.token_ids for r, p in zip(routed[k * n : (k + 1) * n], none))
        assert changed >= 2, f"{label}: the growth brick barely changes the output, the test would see no leak"
