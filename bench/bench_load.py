"""Load on the HTTP server over loopback: many concurrent requests over many assemblies, each checked against
the same request sent alone, with latency percentiles and throughput.

    python bench/bench_load.py [--requests 200] [--assemblies 150] [--max-tokens 8] [--out bench-load.json]

Starts a vLLM server (SmolLM2, LoRA on with 3 slots of rank 16, 8 growth slots, the gain table) over a registry of
hand-made bricks (the equivalence test's: ablation, amplification, steering, staged steering, overlapping
bricks, a LoRA brick, resident and LoRA-served growth), then sends `--requests` chat requests at once, half
of them streaming, over `--assemblies` distinct assemblies (gains and strengths varied per request, so there
are more assemblies than gain-table rows and LoRA slots and rows are recycled while requests run). Every
response's tokens and logprobs are compared with the same request sent alone afterwards. Prints JSON:
errors, mismatches, worst logprob difference, p50/p99 latency and time to first token, tokens/s.
`tests/serving/test_load.py` runs the same load on the test session's engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

PROMPTS = ["What is the capital of France?", "Name three colours of the rainbow.", "Why is the sky blue?",
           "What do bees make?", "Write a haiku about rain.", "How many legs does a spider have?",
           "Give me a word that rhymes with cat.", "What is two plus three?"]
LOGPROB_ATOL = 2e-3


def assembly(k: int, lora: bool = True) -> list:
    """The k-th assembly of the mix: none, or neuron / steering / staged / growth bricks (and, with `lora`,
    LoRA-served ones) with a strength that depends on k, so every k is its own assembly (its own row, and
    its own LoRA id when it has a LoRA part)."""
    x = (k // 8) * 0.01
    kinds = [
        [],
        [{"ref": "abl", "gain": round(0.1 + x, 4)}],
        [{"ref": "steer", "offset_scale": round(0.5 + x, 4)}],
        [{"ref": "staged", "generated_offset_scale": round(0.3 + x, 4)}],
        [{"ref": "ov1", "gain": round(0.3 + x, 4)}, "ov2"],
        ["lora", {"ref": "amp", "gain": round(1.5 + x, 4)}] if lora else [{"ref": "amp", "gain": round(1.5 + x, 4)}],
        ["grow", {"ref": "abl", "gain": round(0.2 + x, 4)}],
        ["grow-late", {"ref": "steer", "offset_scale": round(1.0 + x, 4)}] if lora
        else ["grow", {"ref": "staged", "offset_scale": round(0.5 + x, 4)}],
    ]
    return kinds[k % len(kinds)]


def request_mix(n: int, n_assemblies: int, max_tokens: int = 8, lora: bool = True) -> list[dict]:
    """n chat request bodies: greedy, with logprobs, over n_assemblies assemblies and the PROMPTS; every
    other one streaming. Without `lora`, no assembly has a LoRA part (see tests/serving/test_load.py)."""
    out = []
    for i in range(n):
        k = i % n_assemblies
        out.append({"messages": [{"role": "user", "content": PROMPTS[(i * 7 + k) % len(PROMPTS)]}],
                    "max_tokens": max_tokens, "temperature": 0, "logprobs": True, "stream": i % 2 == 1,
                    "bricks": assembly(k, lora)})
    return out


@dataclass
class Result:
    text: str = ""
    logprobs: list[float] = field(default_factory=list)
    latency_s: float = 0.0
    first_token_s: float | None = None
    error: str | None = None


async def send(client: httpx.AsyncClient, body: dict) -> Result:
    t0 = time.perf_counter()
    try:
        if not body.get("stream"):
            r = await client.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                return Result(error=f"{r.status_code}: {r.text[:200]}")
            choice = r.json()["choices"][0]
            dt = time.perf_counter() - t0
            return Result(choice["message"]["content"], [c["logprob"] for c in choice["logprobs"]["content"]],
                          dt, dt)
        res = Result()
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return Result(error=f"{r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return Result(error=str(event["error"]))
                choice = event["choices"][0]
                res.text += choice["delta"].get("content") or ""
                got = [c["logprob"] for c in (choice.get("logprobs") or {}).get("content", [])]
                if got and res.first_token_s is None:
                    res.first_token_s = time.perf_counter() - t0
                res.logprobs += got
        res.latency_s = time.perf_counter() - t0
        return res
    except httpx.HTTPError as e:
        return Result(error=f"{type(e).__name__}: {e}")


async def run_load(base_url: str, bodies: list[dict], key: str | None = None, timeout: float = 900) -> dict:
    """All `bodies` at once, then each distinct one alone; the comparison and the figures."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        loaded = await asyncio.gather(*(send(client, b) for b in bodies))
        wall = time.perf_counter() - t0
        alone: dict[str, Result] = {}
        for b in bodies:
            key_ = _key(b)
            if key_ not in alone:
                alone[key_] = await send(client, {**b, "stream": False})
    mismatches, worst = [], 0.0
    for b, got in zip(bodies, loaded):
        want = alone[_key(b)]
        if got.error or want.error or got.text != want.text or len(got.logprobs) != len(want.logprobs):
            mismatches.append({"bricks": b["bricks"], "stream": b["stream"], "load": got.text, "alone": want.text,
                               "error": got.error or want.error})
            continue
        worst = max([worst] + [abs(x - y) for x, y in zip(got.logprobs, want.logprobs)])
    ok = [r for r in loaded if not r.error]
    lat = np.array([r.latency_s for r in ok]) if ok else np.array([np.nan])
    first = np.array([r.first_token_s for r in ok if r.first_token_s is not None] or [np.nan])
    tokens = sum(len(r.logprobs) for r in ok)
    return {"requests": len(bodies), "distinct": len(alone), "errors": sum(1 for r in loaded if r.error),
            "mismatches": mismatches, "max_logprob_diff": worst, "wall_s": round(wall, 2),
            "tokens": tokens, "tokens_per_s": round(tokens / wall, 1),
            "latency_s": _percentiles(lat), "first_token_s": _percentiles(first)}


def _percentiles(x: np.ndarray) -> dict[str, float]:
    return {"p50": round(float(np.percentile(x, 50)), 3), "p99": round(float(np.percentile(x, 99)), 3)}


def _key(body: dict) -> str:
    return json.dumps({k: v for k, v in body.items() if k != "stream"}, sort_keys=True)


async def serve_and_load(args) -> dict:
    """A fresh server on a free loopback port (the bricks of tests/serving/conftest.py), then the load."""
    import importlib.util
    import socket
    import tempfile

    import uvicorn

    from bricks.host import load_host
    from registry import Registry
    from serving.app import create_app
    from serving.service import open_service

    spec = importlib.util.spec_from_file_location("serving_conftest", Path(__file__).resolve().parents[1]
                                                  / "tests" / "serving" / "conftest.py")
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    host = load_host()
    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    reg = Registry(root / "registry")
    bricks = fixtures.hand_made_bricks(host.ref)
    for b in bricks.values():
        reg.publish(b)
    (root / "m.yaml").write_text(
        "name: load\nhost:\n  spec: smollm2-135m-instruct\n  growth_slots: 8\nbricks:\n"
        + "".join(f"  - ref: {n}@^1\n" for n in bricks) + "routing:\n  policy: explicit\n"
        "engine:\n  kind: vllm\n  growth_path: gain_table\n  max_loras: 3\n  max_lora_rank: 16\n"
        f"  max_model_len: 1024\n  max_assemblies: {args.rows}\n"
        "server:\n  max_tokens: 64\n  max_prompt_tokens: 512\n")
    svc = open_service(root / "m.yaml", reg)
    svc.host = host
    await svc.start()
    fixtures.late_growth(svc)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(svc), host="127.0.0.1", port=port, log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        return await run_load(f"http://127.0.0.1:{port}", request_mix(args.requests, args.assemblies, args.max_tokens))
    finally:
        server.should_exit = True
        await task
        await svc.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--assemblies", type=int, default=150)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--rows", type=int, default=32, help="engine.max_assemblies (the engine keeps at least "
                    "2 x max_num_seqs + 2 rows)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = asyncio.run(serve_and_load(args))
    text = json.dumps(out, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
