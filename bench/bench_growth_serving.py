"""Growth-brick serving on SmolLM2 (vLLM, CPU): both growth paths, each as a ratio to no bricks in the same
engine and run. Prints one JSON object.

engine G, engine.growth_path: gain_table (the growth brick resident in the served host's slots, gated by the
  gain table; LoRA off, so torch.compile stays on unless --eager): base (no bricks), growth (the brick in every
  request), growth + neurons (8 assemblies: the brick and one neuron brick each), base again.
engine L, engine.growth_path: lora (the brick through the assembly's adapter; LoRA on, which turns
  torch.compile off on CPU): base, growth, base again.
Each ratio divides by the mean of its engine's two base runs; `vs_gain_table_base` divides by G's.
`no_brick_identity`: the greedy tokens and logprobs of no-brick requests, G vs L and (with --plain) vs the
plain host on G's settings (no growth slots): equal tokens, and the largest logprob difference (0 = bit-identical).

    python bench/bench_growth_serving.py [--requests 64] [--tokens 64] [--neurons 16 | --grown FILE] [--eager] [--plain]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_serving import PROMPTS, throughput  # bench/ is sys.path[0] when this runs as a script

from bricks.constants import DEFAULT_HOST
from bricks.format import Brick, BrickMeta, load_brick
from bricks.host import load_host
from bricks.kinds.growth import GrowthNeurons
from bricks.kinds.neurons import neuron_brick
from registry import Registry
from router.assembly import BrickChoice
from serving.engine import GenRequest, VllmEngine, VllmSettings
from serving.service import BrickService, open_service

GROWTH_LAYERS = (8, 12, 16, 20)


def make_bricks(ref, k: int, grown: str | None = None) -> list[Brick]:
    """One growth brick (`grown`, a brick file such as bench_grow.py --save writes, or k random new neurons in
    each of GROWTH_LAYERS, the scale of a few grown facts) and 8 neuron bricks."""
    g = torch.Generator().manual_seed(0)
    if grown:
        grow = load_brick(grown, ref)
        grow.meta.name = "grown"
    else:
        grow = Brick(BrickMeta(name="grown", kind="growth", host=ref), {
            i: GrowthNeurons(torch.randn(k, ref.d_model, generator=g) * 0.1,
                             torch.randn(k, ref.d_model, generator=g) * 0.1,
                             torch.randn(ref.d_model, k, generator=g) * 0.1) for i in GROWTH_LAYERS})
    out = [grow]
    for n in range(8):
        layers = {i: torch.randperm(ref.d_ff, generator=g)[:15] for i in range(n % 3, ref.n_layers, 3)}
        out.append(neuron_brick(f"nb{n}", ref, layers, gain=[0.0, 0.5, 1.5, 2.0][n % 4]))
    return out


def write_manifest(folder: Path, bricks: list[Brick], growth_path: str, eager: bool, k: int) -> Path:
    text = (f"name: growth-{growth_path.replace('_', '-')}\nhost:\n  spec: {DEFAULT_HOST}\n  growth_slots: {k}\n"
            "bricks:\n" + "".join(f"  - ref: {b.name}@^1\n" for b in bricks)
            + f"routing:\n  policy: explicit\nengine:\n  kind: vllm\n  growth_path: {growth_path}\n"
            + f"  max_loras: 8\n  max_lora_rank: {max(16, 1 << (k - 1).bit_length())}\n  max_model_len: 512\n"
            + f"  enforce_eager: {str(eager).lower()}\n  max_assemblies: 32\n"
            + "server:\n  max_tokens: 128\n  max_prompt_tokens: 256\n")
    path = folder / f"{growth_path}.yaml"
    path.write_text(text)
    return path


def requests(svc: BrickService, n: int, tokens: int, logprobs: bool = False) -> list[GenRequest]:
    return [GenRequest(svc.tokenize_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]), tokens,
                       ignore_eos=not logprobs, logprobs=logprobs) for i in range(n)]


async def no_brick_outputs(engine, svc: BrickService) -> list:
    """Greedy no-brick replies with logprobs, the 8 prompts in one batch."""
    none = svc.cache.get([])
    return await asyncio.gather(*(engine.generate(r, none) for r in requests(svc, 8, 32, logprobs=True)))


def compare(a: list, b: list) -> dict:
    diffs = [abs(x - y) for ga, gb in zip(a, b) for x, y in zip(ga.logprobs, gb.logprobs)]
    return {"tokens_equal": [g.token_ids for g in a] == [g.token_ids for g in b],
            "max_logprob_diff": max(diffs, default=0.0)}


async def run_engine(reg, folder, bricks, args, growth_path: str, host) -> tuple[dict, list, BrickService]:
    eager = args.eager or growth_path == "lora"  # LoRA turns torch.compile off on CPU anyway
    svc = open_service(write_manifest(folder, bricks, growth_path, eager, args.neurons), reg)
    svc.host = host
    t0 = time.perf_counter()
    await svc.start()
    out = {"engine_start_s": round(time.perf_counter() - t0, 1), "lora_on": svc.engine.s.enable_lora,
           "compile": not eager}
    try:
        outputs = await no_brick_outputs(svc.engine, svc)  # first: nothing in the prefix cache yet
        growth = [[BrickChoice("grown@^1")]]
        out["base"] = await throughput(svc, [[]], args.requests, args.tokens)
        out["growth_each"] = await throughput(svc, growth, args.requests, args.tokens)
        if growth_path == "gain_table":
            mixed = [[BrickChoice("grown@^1"), BrickChoice(f"nb{k}@^1")] for k in range(8)]
            out["growth_and_neurons_8_assemblies"] = await throughput(svc, mixed, args.requests, args.tokens)
        out["base_again"] = await throughput(svc, [[]], args.requests, args.tokens)
    finally:
        await svc.stop()
    base = (out["base"]["tok_per_s"] + out["base_again"]["tok_per_s"]) / 2
    out["ratio_growth_vs_base"] = round(out["growth_each"]["tok_per_s"] / base, 3)
    if "growth_and_neurons_8_assemblies" in out:
        out["ratio_growth_and_neurons_vs_base"] = round(out["growth_and_neurons_8_assemblies"]["tok_per_s"] / base, 3)
    return out, outputs, svc


async def plain_outputs(host, svc: BrickService) -> list:
    """No-brick outputs of the plain host (no growth slots, no LoRA) on `svc`'s (stopped) engine settings."""
    s = svc.engine.s
    engine = VllmEngine(host, VllmSettings(dtype=s.dtype, max_model_len=s.max_model_len, enforce_eager=s.enforce_eager,
                                           enable_prefix_caching=s.enable_prefix_caching, max_rows=s.max_rows,
                                           max_num_seqs=s.max_num_seqs))
    await engine.start()
    try:
        return await no_brick_outputs(engine, svc)
    finally:
        await engine.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--neurons", type=int, default=16, help="grown neurons per layer (4 layers); also growth_slots")
    ap.add_argument("--grown", default=None, help="serve this growth brick file (e.g. bench_grow.py --save's "
                    "tpatcher.brick) instead of a random one; growth_slots follow its size")
    ap.add_argument("--eager", action="store_true", help="engine G without torch.compile (faster start)")
    ap.add_argument("--plain", action="store_true", help="also start the plain host, to compare no-brick outputs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    host = load_host()
    folder = Path(tempfile.mkdtemp(prefix="bench-growth-"))
    reg = Registry(folder / "registry")
    bricks = make_bricks(host.ref, args.neurons, args.grown)
    args.neurons = max(bricks[0].per_layer().values())
    for b in bricks:
        reg.publish(b)
    result = {"requests": args.requests, "max_tokens": args.tokens,
              "growth_brick": {"file": args.grown, "neurons_per_layer": bricks[0].per_layer()}}
    result["gain_table"], g_out, g_svc = asyncio.run(run_engine(reg, folder, bricks, args, "gain_table", host))
    result["lora"], l_out, _ = asyncio.run(run_engine(reg, folder, bricks, args, "lora", host))
    g_base = (result["gain_table"]["base"]["tok_per_s"] + result["gain_table"]["base_again"]["tok_per_s"]) / 2
    for path in ("gain_table", "lora"):
        result[path]["growth_vs_gain_table_base"] = round(result[path]["growth_each"]["tok_per_s"] / g_base, 3)
    identity = {"gain_table_vs_lora": compare(g_out, l_out)}
    if args.plain:
        identity["gain_table_vs_plain_host"] = compare(g_out, asyncio.run(plain_outputs(host, g_svc)))
    result["no_brick_identity"] = identity
    result["faster_path"] = max(("gain_table", "lora"), key=lambda p: result[p]["growth_vs_gain_table_base"])
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
