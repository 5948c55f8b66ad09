"""vLLM (gain-table plugin + multi-LoRA) against the transformers reference, on the real SmolLM2.

Every assembly kind runs in ONE batch: no bricks, ablation, amplification, steering (offset), two
overlapping neuron bricks, a LoRA brick, a resident growth brick (gain table), a growth brick published
after start (so served through LoRA, in the slots after the resident one), both growth bricks together,
and mixes of growth with neuron and LoRA bricks, with all LoRA slots in use, half the prompts sharing a
long prefix across assemblies (prefix cache on), and the same neuron bricks compiled to LoRA (the second
neuron path). Greedy tokens must be equal and logprobs close.
"""

import asyncio

import pytest

from router.assembly import AssemblyCache, BrickChoice
from serving.engine import GenRequest
from tests.serving.conftest import late_growth

pytestmark = [pytest.mark.real, pytest.mark.vllm]

LOGPROB_ATOL = 2e-3  # fp32 on CPU: vLLM's attention/matmul kernels vs transformers' SDPA
PREFIX = ("You are a careful assistant. Answer briefly and precisely, in plain words, without lists. "
          "Think about what the user really asks before answering, and never invent facts. ")
PROMPTS = [PREFIX + "What is the capital of France?", PREFIX + "Name three colours of the rainbow.",
           PREFIX + "Why is the sky blue?", PREFIX + "What do bees make?",
           "def fibonacci(n):", "The integral of x squared is", "Le chat est", "Once upon a time, a fox"]
ASSEMBLIES = {
    "none": [], "ablation": ["abl"], "amplification": ["amp"], "steering": ["steer"], "overlap": ["ov1", "ov2"],
    "lora": ["lora"], "growth": ["grow"], "mix": ["abl", "lora", "grow"],
    "growth-lora": ["grow-late"], "growth-both": ["grow", "grow-late"], "growth-neurons": ["grow", "steer", "amp"],
}
LORA_PATH = {"lora-path:ablation": ["abl"], "lora-path:overlap-gains": ["ov1", "amp"]}


def _built(svc, names, cache=None):
    return (cache or svc.cache).get([BrickChoice(f"{n}@^1") for n in names])


def _requests(svc):
    tok = svc.host.tokenizer
    lora_cache = AssemblyCache(svc.registry, svc.host.ref, svc.cache.dir.parent / "lora-path", max_rank=128,
                               reserved=svc.manifest.host.growth_slots, neuron_path="lora",
                               w_down={i: svc.host.adapter.down_proj(svc.host.model, i).weight.detach()
                                       for i in range(svc.host.n_layers)})
    out = []
    for label, names in ASSEMBLIES.items():
        for p in PROMPTS:
            out.append((label, p, _built(svc, names)))
    for label, names in LORA_PATH.items():
        for p in PROMPTS[:4]:
            out.append((label, p, _built(svc, names, lora_cache)))
    return [(label, p, GenRequest(tok(p).input_ids, max_tokens=12, logprobs=True), b) for label, p, b in out]


@pytest.fixture(scope="module")
def results(served, bg_loop):
    late_growth(served)
    reqs = _requests(served)

    async def run_all():
        return await asyncio.gather(*(served.engine.generate(r, b) for _, _, r, b in reqs))

    got = bg_loop.run(run_all())
    want = [bg_loop.run(served.reference.generate(r, b)) for _, _, r, b in reqs]
    return reqs, got, want


def test_vllm_equals_reference_for_every_assembly(results):
    reqs, got, want = results
    worst = 0.0
    for (label, prompt, _, _), g, w in zip(reqs, got, want):
        assert g.token_ids == w.token_ids, f"{label} / {prompt[-30:]!r}: vllm {g.text!r} != reference {w.text!r}"
        worst = max([worst] + [abs(a - b) for a, b in zip(g.logprobs, w.logprobs)])
    print(f"max |logprob diff| over {len(reqs)} requests: {worst:.2e}")
    assert worst < LOGPROB_ATOL


def test_growth_bricks_take_their_paths(results):
    """`grow` is served from the host's slots (no adapter), `grow-late` through LoRA."""
    reqs, _, _ = results
    by = {label: b for label, _, _, b in reqs}
    assert by["growth"].adapter_path is None and [r.split("@")[0] for r in by["growth"].resident] == ["grow"]
    assert by["growth-lora"].adapter_path is not None and not by["growth-lora"].resident
    assert by["growth-both"].adapter_path is not None and len(by["growth-both"].resident) == 1


def test_bricks_really_change_the_output(results):
    reqs, got, _ = results
    by = {(label, p): g.token_ids for (label, p, _, _), g in zip(reqs, got)}
    for label in ASSEMBLIES:
        if label != "none":
            changed = sum(by[(label, p)] != by[("none", p)] for p in PROMPTS)
            assert changed >= 2, f"{label} barely changes the output: the test would not see a leak"


def test_no_brick_requests_equal_the_plain_host(results, served):
    """The 'none' requests ran beside full LoRA slots and other rows; they must equal plain generation."""
    reqs, got, _ = results
    import torch

    model = served.host.model

    for (label, p, r, _), g in zip(reqs, got):
        if label != "none":
            continue
        ids = torch.tensor([r.prompt_ids])
        with torch.no_grad():
            plain = model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1]:].tolist()
        assert g.token_ids == plain[: len(g.token_ids)], p


def test_startup_self_test_ran(served):
    rep = served.self_test_report
    assert rep is not None and not rep["mismatches"] and rep["max_logprob_diff"] < LOGPROB_ATOL
