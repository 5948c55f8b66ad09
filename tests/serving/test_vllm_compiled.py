"""The gain table with torch.compile on (engine.enforce_eager: false, what `brick serve` runs by default).

The shared `served` engine runs eager (fast to start); this module starts its own compiled engine over the
neuron bricks only (no LoRA, which would switch compile off on CPU). Its start-up self-test already compares
prefill and staggered decode steps with the reference; the test adds the hand-made neuron assemblies in one
batch (identity, ablation, amplification, steering, overlapping bricks), in two orders. Run it in its own
pytest process: starting a compiled engine takes minutes here, and two engines at once strain the RAM.
"""

import asyncio

import pytest

from router.assembly import BrickChoice
from serving.engine import GenRequest
from tests.serving.conftest import hand_made_bricks

pytestmark = [pytest.mark.real, pytest.mark.vllm]

LOGPROB_ATOL = 2e-3
NEURONS = ("abl", "amp", "steer", "ov1", "ov2")
ASSEMBLIES = {"none": [], "ablation": ["abl"], "amplification": ["amp"], "steering": ["steer"],
              "overlap": ["ov1", "ov2"]}
PROMPTS = ["What is the capital of France?", "def fibonacci(n):", "Le chat est", "Once upon a time, a fox"]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, real_host, bg_loop):
    from registry import Registry
    from serving.service import open_service

    root = tmp_path_factory.mktemp("compiled")
    reg = Registry(root / "registry")
    bricks = hand_made_bricks(real_host.ref)
    for name in NEURONS:
        reg.publish(bricks[name])
    manifest = root / "m.yaml"
    manifest.write_text(
        "name: compiled\nhost:\n  spec: smollm2-135m-instruct\n"
        "bricks:\n" + "".join(f"  - ref: {n}@^1\n" for n in NEURONS) +
        "routing:\n  policy: explicit\n"
        "engine:\n  kind: vllm\n  enforce_eager: false\n  max_model_len: 512\n  max_assemblies: 16\n"
        "  gpu_memory_utilization: 0.15\n"
        "server:\n  max_tokens: 64\n  max_prompt_tokens: 256\n")
    svc = open_service(manifest, reg)
    svc.host = real_host
    bg_loop.run(svc.start())
    yield svc
    bg_loop.run(svc.stop())


def test_compiled_engine_equals_the_reference_for_every_row_in_both_orders(compiled, bg_loop):
    tok = compiled.host.tokenizer
    reqs = [(label, p, GenRequest(tok(p).input_ids, max_tokens=12, logprobs=True),
             compiled.cache.get([BrickChoice(f"{n}@^1") for n in names]))
            for label, names in ASSEMBLIES.items() for p in PROMPTS]

    async def run(order):
        return await asyncio.gather(*(compiled.engine.generate(reqs[i][2], reqs[i][3]) for i in order))

    forward = bg_loop.run(run(range(len(reqs))))
    backward = bg_loop.run(run(reversed(range(len(reqs)))))[::-1]
    worst = 0.0
    for (label, p, r, b), g1, g2 in zip(reqs, forward, backward):
        want = bg_loop.run(compiled.reference.generate(r, b))
        for g in (g1, g2):
            assert g.token_ids == want.token_ids, f"{label} / {p!r}: vllm {g.text!r} != reference {want.text!r}"
            worst = max([worst] + [abs(a - c) for a, c in zip(g.logprobs, want.logprobs)])
    assert worst < LOGPROB_ATOL
    changed = {label for (label, p, _, _), g in zip(reqs, forward) if label != "none"
               and g.token_ids != forward[PROMPTS.index(p)].token_ids}
    assert len(changed) >= 3, f"only {sorted(changed)} change the output: the test could hardly see a leak"


def test_the_self_test_ran_compiled_with_decode_steps(compiled):
    rep = compiled.self_test_report
    assert rep is not None and not rep["mismatches"] and rep["max_logprob_diff"] < LOGPROB_ATOL
    assert rep["runner"] == "v1" and rep["enforce_eager"] is False and "NONE" not in rep["compile"]
    assert rep["decode_steps"] >= 8 and rep["requests"] == 2 * 3 * len(compiled.probe_assemblies())
