"""Serving benchmark on SmolLM2 (vLLM, CPU). Prints one JSON object; every ratio is from one run.

engine A (LoRA off: torch.compile on unless --eager):
  (a) 64 requests over 8 distinct neuron-brick assemblies (gain table) vs the same requests with no bricks,
      in alternated rounds (the median of each round's ratio to the base runs beside it)
engine B (LoRA on: vLLM turns torch.compile off on CPU), same requests:
  base, gain table, (b) the same neuron bricks compiled to LoRA, (c) a LoRA brick in every assembly
plus (d) cold/warm assembly latency, (e) publish-to-first-use on a running HTTP server, (f) routing
latency over 10k synthetic bricks (FAISS + the MiniLM embedder).

    python bench/bench_serving.py [--requests 64] [--tokens 64] [--eager] [--skip-b] [--rounds 5] [--only-a|--only-b]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bricks.constants import DEFAULT_HOST
from bricks.format import Brick, BrickMeta
from bricks.host import load_host
from bricks.kinds.lora import LoraModule
from bricks.kinds.neurons import neuron_brick
from registry import Registry
from router.assembly import AssemblyCache, BrickChoice
from serving.engine import GenRequest
from serving.service import BrickService, open_service
from serving.vllm_plugin import CPU_LORA_ENV

PROMPTS = ["Tell me about the history of Rome.", "Write a short poem about the sea.", "How do vaccines work?",
           "Give me three tips for learning French.", "Explain recursion to a child.", "What is a black hole?",
           "Describe a good breakfast.", "Why do leaves change colour in autumn?"]


def make_bricks(ref, n: int = 8) -> list[Brick]:
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(n):
        layers = {i: torch.randperm(ref.d_ff, generator=g)[:15] for i in range(k % 3, ref.n_layers, 3)}
        out.append(neuron_brick(f"nb{k}", ref, layers, gain=[0.0, 0.5, 1.5, 2.0][k % 4]))
    for k in range(n):
        mod = f"model.layers.{(3 * k) % ref.n_layers}.mlp.down_proj"
        lm = LoraModule(torch.randn(8, ref.d_ff, generator=g) / ref.d_ff**0.5,
                        torch.randn(ref.d_model, 8, generator=g) * 0.05, 8.0)
        out.append(Brick(BrickMeta(name=f"lb{k}", kind="lora", host=ref), {mod: lm}))
    return out


def write_manifest(folder: Path, bricks: list[Brick], lora: bool, eager: bool, name: str) -> Path:
    used = [b for b in bricks if lora or b.kind == "neurons"]
    text = (f"name: {name}\nhost:\n  spec: {DEFAULT_HOST}\nbricks:\n"
            + "".join(f"  - ref: {b.name}@^1\n" for b in used)
            + "routing:\n  policy: explicit\nengine:\n  kind: vllm\n  max_loras: 8\n  max_lora_rank: 16\n"
            + f"  max_model_len: 512\n  enforce_eager: {str(eager).lower()}\n  max_assemblies: 32\n"
            + "server:\n  max_tokens: 128\n  max_prompt_tokens: 256\n")
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path


async def throughput(svc: BrickService, assemblies: list[list[BrickChoice]], n: int, tokens: int,
                     cache: AssemblyCache | None = None) -> dict:
    cache = cache or svc.cache
    built = [cache.get(a) for a in assemblies]
    reqs = [GenRequest(svc.tokenize_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]), tokens,
                       ignore_eos=True) for i in range(n)]
    await asyncio.gather(*(svc.engine.generate(r, built[i % len(built)]) for i, r in enumerate(reqs[:8])))  # warm
    t0 = time.perf_counter()
    outs = await asyncio.gather(*(svc.engine.generate(r, built[i % len(built)]) for i, r in enumerate(reqs)))
    dt = time.perf_counter() - t0
    toks = sum(len(o.token_ids) for o in outs)
    return {"tokens": toks, "seconds": round(dt, 2), "tok_per_s": round(toks / dt, 2)}


async def engine_a(reg, folder, bricks, args, host) -> dict:
    svc = open_service(write_manifest(folder, bricks, False, args.eager, "bench-a"), reg)
    svc.host = host
    t0 = time.perf_counter()
    await svc.start()
    start_s = time.perf_counter() - t0
    try:
        neuron = [[BrickChoice(f"nb{k}@^1")] for k in range(8)]
        # alternated rounds: base, gain, base, gain, ..., base; each gain run is compared with the mean of
        # the base runs on either side of it, and the reported ratio is the median over rounds
        bases = [await throughput(svc, [[]], args.requests, args.tokens)]
        gains = []
        for _ in range(args.rounds):
            gains.append(await throughput(svc, neuron, args.requests, args.tokens))
            bases.append(await throughput(svc, [[]], args.requests, args.tokens))
    finally:
        await svc.stop()
    ratios = [g["tok_per_s"] / ((bases[i]["tok_per_s"] + bases[i + 1]["tok_per_s"]) / 2) for i, g in enumerate(gains)]
    return {"engine_start_s": round(start_s, 1), "compile": not args.eager, "rounds": args.rounds,
            "base_tok_per_s": [b["tok_per_s"] for b in bases], "gain_table_tok_per_s": [g["tok_per_s"] for g in gains],
            "ratios": [round(r, 3) for r in ratios], "base": bases[0], "gain_table": gains[-1],
            "ratio_gain_table_vs_base": round(statistics.median(ratios), 3)}


async def engine_b(reg, folder, bricks, args, host) -> dict:
    svc = open_service(write_manifest(folder, bricks, True, True, "bench-b"), reg)
    svc.host = host
    await svc.start()
    try:
        w_down = {i: host.adapter.down_proj(host.model, i).weight.detach() for i in range(host.n_layers)}
        lora_cache = AssemblyCache(reg, host.ref, svc.cache.dir.parent / "bench-lora-path", max_rank=16,
                                   neuron_path="lora", w_down=w_down)
        neuron = [[BrickChoice(f"nb{k}@^1")] for k in range(8)]
        with_lora = [[BrickChoice(f"nb{k}@^1"), BrickChoice(f"lb{k}@^1")] for k in range(8)]
        base = await throughput(svc, [[]], args.requests, args.tokens)
        gain = await throughput(svc, neuron, args.requests, args.tokens)
        as_lora = await throughput(svc, neuron, args.requests, args.tokens, cache=lora_cache)
        lora = await throughput(svc, with_lora, args.requests, args.tokens)
    finally:
        await svc.stop()
    b = base["tok_per_s"]
    return {"base": base, "gain_table": gain, "neurons_as_lora": as_lora, "lora_brick_each": lora,
            "ratio_gain_table_vs_base": round(gain["tok_per_s"] / b, 3),
            "ratio_neurons_as_lora_vs_base": round(as_lora["tok_per_s"] / b, 3),
            "ratio_lora_brick_vs_base": round(lora["tok_per_s"] / b, 3)}


def assembly_latency(reg, host, folder) -> dict:
    cache = AssemblyCache(reg, host.ref, folder / "latency-cache")
    cold, warm = [], []
    for k in range(8):
        choice = [BrickChoice(f"nb{k}@^1"), BrickChoice(f"nb{(k + 1) % 8}@^1", gain=1.25)]
        t0 = time.perf_counter()
        cache.get(choice)
        cold.append((time.perf_counter() - t0) * 1e3)
        for _ in range(50):
            t0 = time.perf_counter()
            cache.get(choice)
            warm.append((time.perf_counter() - t0) * 1e3)
    return {"cold_ms_p50": round(statistics.median(cold), 2), "cold_ms_max": round(max(cold), 2),
            "warm_ms_p50": round(statistics.median(warm), 3), "warm_ms_p99": round(np.percentile(warm, 99), 3)}


def routing_latency(n_bricks: int = 10_000) -> dict:
    """bench_routing's measurement (one definition): MiniLM, the router's default rule, every prompt embedded."""
    from bench_routing import routing_latency as measure  # bench/ is sys.path[0] when this runs as a script

    from router.policy import DEFAULT_RULE

    return measure(n_bricks, embedder="minilm", rule=DEFAULT_RULE)


async def publish_to_first_use(reg, folder, bricks, host) -> dict:
    """Publish a new brick while an HTTP server runs, then time until the first response that used it."""
    import httpx
    import uvicorn

    from serving.app import create_app

    svc = open_service(write_manifest(folder, bricks, False, True, "bench-e"), reg, self_test=False)
    svc.host = host
    await svc.start()
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=8765, log_level="warning"))
    task = asyncio.get_running_loop().create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    times = []
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            for k in range(5):
                fresh = neuron_brick(f"fresh{k}", host.ref, {i: [k, k + 10, k + 20] for i in range(30)}, gain=0.0)
                t0 = time.perf_counter()
                reg.publish(fresh)
                r = await client.post("http://127.0.0.1:8765/v1/completions", json={
                    "prompt": "Hello", "max_tokens": 1, "temperature": 0, "bricks": [f"fresh{k}"]})
                times.append((time.perf_counter() - t0) * 1e3)
                assert r.json()["brickwork"]["bricks"] == [f"fresh{k}@1.0.0"], r.text
    finally:
        server.should_exit = True
        await task
        await svc.stop()
    return {"ms_p50": round(statistics.median(times), 1), "ms_max": round(max(times), 1),
            "includes": "publish + HTTP request with max_tokens=1 (prefill of a short prompt)"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--eager", action="store_true", help="engine A without torch.compile (faster start)")
    ap.add_argument("--skip-b", action="store_true")
    ap.add_argument("--rounds", type=int, default=5, help="engine A: alternated base / gain-table rounds")
    ap.add_argument("--only-a", action="store_true", help="engine A's ratio only (no b-f)")
    ap.add_argument("--only-b", action="store_true", help="engine B's ratios only (the LoRA path; run it with "
                    "BRICK_CPU_LORA=stock for vLLM's own per-token CPU LoRA ops)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    host = load_host()
    folder = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    reg = Registry(folder / "registry")
    bricks = make_bricks(host.ref)
    for b in bricks:
        reg.publish(b)
    result = {"requests": args.requests, "max_tokens": args.tokens, "assemblies": 8}
    partial = args.only_a or args.only_b
    if not partial:
        result["d_assembly_latency"] = assembly_latency(reg, host, folder)
        result["f_routing"] = routing_latency()
    if not args.only_b:
        result["a_engine_no_lora"] = asyncio.run(engine_a(reg, folder, bricks, args, host))
    if not (args.skip_b or args.only_a):
        result["cpu_lora_ops"] = os.environ.get(CPU_LORA_ENV, "grouped")
        result["bc_engine_lora_on"] = asyncio.run(engine_b(reg, folder, bricks, args, host))
    if not partial:
        result["e_publish_to_first_use"] = asyncio.run(publish_to_first_use(reg, folder, bricks, host))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
