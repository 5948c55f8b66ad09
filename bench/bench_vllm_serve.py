"""brick serve vs stock `vllm serve`, measured with vLLM's own client (`vllm bench serve`). Prints one JSON object.

Starts two servers on loopback ports, once, and keeps both up: stock `vllm serve <host HF folder>` (without
brickwork's vLLM plugin) with the engine settings `brick serve` uses (fp32, max_model_len, max_num_seqs 64,
seed 0, prefix caching on, the same KV-cache size), and `brick serve MANIFEST` over a temporary registry of 8
random neuron bricks (routing: explicit, engine.kind: vllm). Then, in alternated rounds so that every ratio
comes from one run:

1. `vllm bench serve --dataset-name random` (fixed input/output lengths, --ignore-eos, greedy) for
   `--backend openai` (/v1/completions) and `--backend openai-chat` (/v1/chat/completions) against
   stock, brick serve with no bricks, and brick serve with `--extra-body '{"bricks": ["nb0@^1"]}'`;
   per config the output tok/s of each round, the median, failed requests, and the ratios to stock.
2. Scale of assemblies: N chat requests at once (an httpx async client) over N distinct neuron-brick
   assemblies (brick k % 8 with a gain from N / 8 values: more assemblies than gain-table rows, so rows
   are recycled while requests run) vs the same N requests with no bricks, on the same brick serve.

Each round uses its own dataset seed (and prompts), so no round reuses another's prefix cache.

    flock /tmp/brickwork-heavy.lock .venv/bin/python bench/bench_vllm_serve.py [--quick] [--rounds 2] [--out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
NAME = "vbench"
N_BRICKS = 8
ONE_BRICK = "nb0@^1"
CONFIGS = ("stock", "brick_none", "brick_brick")
BACKENDS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}
TOPICS = ["the history of Rome", "the sea", "how vaccines work", "learning French", "recursion",
          "black holes", "a good breakfast", "autumn leaves"]


def log(msg: str) -> None:
    print(f"[bench_vllm_serve {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError as e:
        return f"(no log: {e})"


# --- setup -------------------------------------------------------------------------------------------------
def publish_bricks(registry_dir: Path) -> list[str]:
    """8 random neuron bricks (15 neurons on every third layer) in a fresh registry."""
    import torch

    from bricks.constants import DEFAULT_HOST
    from bricks.host import host_ref
    from bricks.kinds.neurons import neuron_brick
    from registry import Registry

    ref = host_ref(DEFAULT_HOST)
    reg = Registry(registry_dir)
    g = torch.Generator().manual_seed(0)
    names = []
    for k in range(N_BRICKS):
        layers = {i: torch.randperm(ref.d_ff, generator=g)[:15] for i in range(k % 3, ref.n_layers, 3)}
        reg.publish(neuron_brick(f"nb{k}", ref, layers, gain=[0.0, 0.5, 1.5, 2.0][k % 4]))
        names.append(f"nb{k}")
    return names


def write_manifest(folder: Path, bricks: list[str], max_model_len: int, max_assemblies: int) -> Path:
    from bricks.constants import DEFAULT_HOST

    text = (f"name: {NAME}\nhost:\n  spec: {DEFAULT_HOST}\nbricks:\n"
            + "".join(f"  - ref: {b}@^1\n" for b in bricks)
            + "routing:\n  policy: explicit\n"
            + f"engine:\n  kind: vllm\n  dtype: float32\n  max_model_len: {max_model_len}\n"
            + f"  max_assemblies: {max_assemblies}\n  enable_prefix_caching: true\n"
            + f"server:\n  max_tokens: 128\n  max_prompt_tokens: {max_model_len - 128}\n")
    path = folder / f"{NAME}.yaml"
    path.write_text(text)
    return path


class Server:
    """A server subprocess in its own process group, its output in a log file."""

    def __init__(self, label: str, cmd: list[str], env: dict, port: int, logfile: Path):
        self.label, self.cmd, self.env, self.port, self.logfile = label, cmd, env, port, logfile
        self.proc: subprocess.Popen | None = None
        self.start_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float) -> None:
        log(f"starting {self.label} on port {self.port} (log: {self.logfile})")
        t0 = time.perf_counter()
        with open(self.logfile, "wb") as f:
            self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited with {self.proc.returncode} before it was ready; "
                                   f"log tail:\n{tail(self.logfile)}")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    self.start_s = round(time.perf_counter() - t0, 1)
                    log(f"{self.label} ready after {self.start_s} s")
                    return
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"{self.label} not ready after {timeout} s; log tail:\n{tail(self.logfile)}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        log(f"stopping {self.label} (pid {self.proc.pid})")
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        except ProcessLookupError:
            pass


def servers(tmp: Path, manifest: Path, host_path: Path, args) -> tuple[Server, Server]:
    env = {**os.environ, "BRICK_REGISTRY": str(tmp / "registry")}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib))  # the same KV cache for both servers
    stock_env = {**env, "VLLM_PLUGINS": ""}  # stock: without brickwork's vLLM plugin
    p1, p2 = free_port(), free_port()
    stock = Server("stock vllm serve", [
        str(VENV_BIN / "vllm"), "serve", str(host_path), "--host", "127.0.0.1", "--port", str(p1),
        "--served-model-name", NAME, "--dtype", "float32", "--max-model-len", str(args.max_model_len),
        "--max-num-seqs", "64", "--seed", "0", "--enable-prefix-caching", "--gpu-memory-utilization", "0.3",
        "--max-logprobs", "20"], stock_env, p1, tmp / "stock.log")
    brick = Server("brick serve", [str(VENV_BIN / "brick"), "serve", str(manifest), "--host", "127.0.0.1",
                                   "--port", str(p2)], env, p2, tmp / "brick.log")
    return stock, brick


def sanity(stock: Server, brick: Server) -> dict:
    """One request each: the servers answer, and brick serve runs the brick it was asked for."""
    out = {}
    body = {"model": NAME, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    r = httpx.post(f"{stock.url}/v1/completions", json=body, timeout=120)
    r.raise_for_status()
    out["stock"] = r.json()["choices"][0]["text"]
    r = httpx.post(f"{brick.url}/v1/completions", json={**body, "bricks": [ONE_BRICK]}, timeout=120)
    if r.status_code != 200:
        raise RuntimeError(f"brick serve refused a brick request: {r.status_code} {r.text[:500]}")
    out["brick_brick"] = r.json()["choices"][0]["text"]
    out["brick_ran"] = r.json().get("brickwork", {}).get("bricks")
    out["x_brick_assembly"] = r.headers.get("x-brick-assembly")
    if not out["brick_ran"]:
        raise RuntimeError(f"brick serve did not report running {ONE_BRICK}: {r.text[:500]}")
    return out


# --- 1. vllm bench serve ----------------------------------------------------------------------------------
def bench_serve(server: Server, backend: str, extra_body: dict | None, seed: int, out_dir: Path, tag: str,
                host_path: Path, args, timeout: float) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    fname = f"{tag}.json"
    cmd = [str(VENV_BIN / "vllm"), "bench", "serve", "--backend", backend, "--base-url", server.url,
           "--endpoint", BACKENDS[backend], "--model", NAME, "--tokenizer", str(host_path),
           "--dataset-name", "random", "--random-input-len", str(args.input_len),
           "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
           "--ignore-eos", "--temperature", "0", "--seed", str(seed), "--disable-tqdm",
           "--save-result", "--result-dir", str(out_dir), "--result-filename", fname]
    if extra_body is not None:
        cmd += ["--extra-body", json.dumps(extra_body)]
    logfile = out_dir / f"{tag}.log"
    t0 = time.perf_counter()
    with open(logfile, "wb") as f:
        try:
            rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                timeout=timeout, cwd=ROOT, env={**os.environ, "VLLM_PLUGINS": ""}).returncode
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"vllm bench serve {tag} ran past {timeout} s; log tail:\n{tail(logfile)}") from None
    wall = time.perf_counter() - t0
    if rc != 0 or not (out_dir / fname).is_file():
        raise RuntimeError(f"vllm bench serve {tag} failed (rc {rc}); log tail:\n{tail(logfile)}")
    res = json.loads((out_dir / fname).read_text())
    errors = [e for e in res.get("errors", []) if e]
    row = {"output_tok_s": round(res["output_throughput"], 2),
           "total_tok_s": round(res["total_token_throughput"], 2),
           "completed": res["completed"], "failed": res["failed"],
           "input_tokens": res["total_input_tokens"], "output_tokens": res["total_output_tokens"],
           "duration_s": round(res["duration"], 2), "median_ttft_ms": round(res["median_ttft_ms"], 1),
           "median_tpot_ms": round(res["median_tpot_ms"], 2), "wall_s": round(wall, 1), "seed": seed}
    if errors:
        row["errors"] = errors[:3]
    return row


def summarize(rounds: dict[str, list[dict]]) -> dict:
    out = {}
    for c in CONFIGS:
        tps = [r["output_tok_s"] for r in rounds[c]]
        out[c] = {"output_tok_s_rounds": tps, "output_tok_s_median": round(statistics.median(tps), 2),
                  "failed": sum(r["failed"] for r in rounds[c]),
                  "completed": sum(r["completed"] for r in rounds[c]),
                  "median_tpot_ms_rounds": [r["median_tpot_ms"] for r in rounds[c]],
                  "rounds": rounds[c]}
    s = out["stock"]["output_tok_s_median"]
    out["ratio_brick_none_vs_stock"] = round(out["brick_none"]["output_tok_s_median"] / s, 3)
    out["ratio_brick_brick_vs_stock"] = round(out["brick_brick"]["output_tok_s_median"] / s, 3)
    # per round (each ratio from neighbouring runs of the same round)
    out["ratio_brick_none_vs_stock_rounds"] = [round(b["output_tok_s"] / a["output_tok_s"], 3)
                                               for a, b in zip(rounds["stock"], rounds["brick_none"])]
    out["ratio_brick_brick_vs_stock_rounds"] = [round(b["output_tok_s"] / a["output_tok_s"], 3)
                                                for a, b in zip(rounds["stock"], rounds["brick_brick"])]
    return out


# --- 2. scale of assemblies -------------------------------------------------------------------------------
def scale_bodies(n: int, max_tokens: int, rnd: int, with_bricks: bool) -> list[dict]:
    """n chat requests; with bricks, request i runs nb{i % 8} at the (i // 8)-th of n / 8 gains: n distinct
    assemblies. The prompts name the round, so no round reuses another's prefix cache."""
    per = -(-n // N_BRICKS)
    gains = [round(0.5 + j * 1.0 / per, 4) for j in range(per)]
    out = []
    for i in range(n):
        body = {"model": NAME, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True,
                "messages": [{"role": "user", "content": f"(round {rnd}, request {i}) Write a few sentences "
                              f"about {TOPICS[i % len(TOPICS)]}."}]}
        if with_bricks:
            body["bricks"] = [{"ref": f"nb{i % N_BRICKS}@^1", "gain": gains[i // N_BRICKS]}]
        out.append(body)
    return out


async def _one(client: httpx.AsyncClient, body: dict) -> tuple[int, str | None, str | None]:
    try:
        r = await client.post("/v1/chat/completions", json=body)
    except httpx.HTTPError as e:
        return 0, f"{type(e).__name__}: {e}", None
    if r.status_code != 200:
        return 0, f"{r.status_code}: {r.text[:300]}", None
    j = r.json()
    return j["usage"]["completion_tokens"], None, r.headers.get("x-brick-assembly")


async def _load(url: str, bodies: list[dict], timeout: float) -> dict:
    limits = httpx.Limits(max_connections=len(bodies) + 4, max_keepalive_connections=len(bodies) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        t0 = time.perf_counter()
        got = await asyncio.wait_for(asyncio.gather(*(_one(client, b) for b in bodies)), timeout + 30)
        wall = time.perf_counter() - t0
    tokens = sum(t for t, _, _ in got)
    errors = [e for _, e, _ in got if e]
    row = {"requests": len(bodies), "distinct_assemblies": len({a for _, e, a in got if not e}),
           "errors": len(errors), "output_tokens": tokens, "wall_s": round(wall, 2),
           "output_tok_s": round(tokens / wall, 2)}
    if errors:
        row["first_errors"] = errors[:3]
    return row


def scale(brick: Server, n: int, max_tokens: int, rnd: int, with_bricks: bool, timeout: float) -> dict:
    return asyncio.run(_load(brick.url, scale_bodies(n, max_tokens, rnd, with_bricks), timeout))


# --- main -------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a sanity run: 1 round, 16 prompts, 32 scale requests")
    ap.add_argument("--rounds", type=int, default=2, help="alternated rounds (stock, brick-none, brick-brick, ...)")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--input-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--scale-requests", type=int, default=256, help="requests (= distinct assemblies) at once")
    ap.add_argument("--scale-tokens", type=int, default=32, help="max_tokens of each scale request")
    ap.add_argument("--scale-rounds", type=int, default=2)
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--max-assemblies", type=int, default=128, help="engine.max_assemblies (the engine keeps at "
                    "least 2 x max_num_seqs + 2 = 130 gain-table rows)")
    ap.add_argument("--kv-cache-gib", type=int, default=2, help="VLLM_CPU_KVCACHE_SPACE for both servers "
                    "(unless it is set already)")
    ap.add_argument("--start-timeout", type=float, default=900)
    ap.add_argument("--run-timeout", type=float, default=900, help="seconds one benchmark run may take")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated `vllm bench serve` backends")
    ap.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, vllm bench results)")
    args = ap.parse_args()
    args.backends = [b for b in args.backends.split(",") if b]
    unknown = sorted(set(args.backends) - set(BACKENDS))
    if unknown:
        ap.error(f"unknown backends {unknown}; choose from {sorted(BACKENDS)}")
    if args.quick:
        args.rounds, args.num_prompts, args.scale_requests, args.scale_rounds = 1, 16, 32, 1

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below
    from bricks.constants import DEFAULT_HOST
    from bricks.host import resolve_host_path

    t_start = time.perf_counter()
    host_path = resolve_host_path(DEFAULT_HOST)
    tmp = Path(tempfile.mkdtemp(prefix="bench-vllm-serve-"))
    bricks = publish_bricks(tmp / "registry")
    manifest = write_manifest(tmp, bricks, args.max_model_len, args.max_assemblies)
    stock, brick = servers(tmp, manifest, host_path, args)
    import vllm

    result: dict = {"vllm": vllm.__version__, "host": str(host_path), "quick": args.quick,
                    "settings": {"dtype": "float32", "max_model_len": args.max_model_len, "max_num_seqs": 64,
                                 "seed": 0, "prefix_caching": True, "kv_cache_gib": os.environ.get(
                                     "VLLM_CPU_KVCACHE_SPACE", str(args.kv_cache_gib)),
                                 "max_assemblies": args.max_assemblies, "bricks": N_BRICKS},
                    "cpus": os.cpu_count()}
    failed = None
    try:
        stock.start(args.start_timeout)
        brick.start(args.start_timeout)
        result["start_s"] = {"stock": stock.start_s, "brick": brick.start_s}
        result["sanity"] = sanity(stock, brick)
        log(f"sanity: {result['sanity']}")

        vbs = {"num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
               "ignore_eos": True, "temperature": 0, "dataset": "random", "request_rate": "inf",
               "brick_extra_body": {"bricks": [ONE_BRICK]}}
        per_backend = {b: {c: [] for c in CONFIGS} for b in args.backends}
        targets = {"stock": (stock, None), "brick_none": (brick, None), "brick_brick": (brick, {"bricks": [ONE_BRICK]})}
        # warm-up (not measured): one short run per server and backend, so compile/first-batch costs stay out
        for backend in args.backends:
            for c in ("stock", "brick_brick"):
                srv, extra = targets[c]
                warm = argparse.Namespace(**{**vars(args), "num_prompts": min(16, args.num_prompts)})
                log(f"warm-up {c} {backend}")
                bench_serve(srv, backend, extra, 10_000 + args.seed, tmp / "results", f"warmup-{backend}-{c}",
                            host_path, warm, args.run_timeout)
        for rnd in range(args.rounds):
            for backend in args.backends:
                for c in CONFIGS:
                    srv, extra = targets[c]
                    log(f"round {rnd} {backend} {c}")
                    row = bench_serve(srv, backend, extra, args.seed + rnd, tmp / "results",
                                      f"r{rnd}-{backend}-{c}", host_path, args, args.run_timeout)
                    log(f"  -> {row['output_tok_s']} output tok/s, failed {row['failed']}")
                    per_backend[backend][c].append(row)
                    if not (stock.alive() and brick.alive()):
                        raise RuntimeError("a server died")
        result["vllm_bench_serve"] = {"settings": vbs, **{b: summarize(per_backend[b]) for b in args.backends}}

        rows = {"bricks": [], "none": []}
        for rnd in range(args.scale_rounds):
            for kind in ("none", "bricks"):
                log(f"scale round {rnd}: {args.scale_requests} chat requests, {kind}")
                row = scale(brick, args.scale_requests, args.scale_tokens, rnd, kind == "bricks", args.run_timeout)
                log(f"  -> {row['output_tok_s']} output tok/s, errors {row['errors']}, "
                    f"{row['distinct_assemblies']} distinct assemblies")
                rows[kind].append(row)
        med = {k: statistics.median(r["output_tok_s"] for r in v) for k, v in rows.items()}
        result["scale_of_assemblies"] = {
            "requests": args.scale_requests, "max_tokens": args.scale_tokens, "endpoint": "/v1/chat/completions",
            "ignore_eos": True, "gain_table_rows": max(args.max_assemblies, 2 * 64 + 2),
            "assemblies_per_bricks_round": args.scale_requests,
            "none": {"output_tok_s_rounds": [r["output_tok_s"] for r in rows["none"]],
                     "output_tok_s_median": round(med["none"], 2),
                     "errors": sum(r["errors"] for r in rows["none"]), "rounds": rows["none"]},
            "bricks": {"output_tok_s_rounds": [r["output_tok_s"] for r in rows["bricks"]],
                       "output_tok_s_median": round(med["bricks"], 2),
                       "errors": sum(r["errors"] for r in rows["bricks"]), "rounds": rows["bricks"]},
            "ratio_bricks_vs_none": round(med["bricks"] / med["none"], 3),
            "ratio_bricks_vs_none_rounds": [round(b["output_tok_s"] / a["output_tok_s"], 3)
                                            for a, b in zip(rows["none"], rows["bricks"])]}
    except BaseException as e:
        failed = f"{type(e).__name__}: {e}"
        result["error"] = failed
        for s in (stock, brick):
            result.setdefault("log_tails", {})[s.label] = tail(s.logfile, 30)
        log(f"FAILED: {failed}")
        for s in (stock, brick):
            log(f"--- {s.label} log tail ({s.logfile}) ---\n{tail(s.logfile, 30)}")
    finally:
        for s in (brick, stock):
            try:
                s.stop()
            except Exception as e:  # noqa: BLE001 - keep stopping the other one
                log(f"stopping {s.label}: {e}")
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    result["tmp"] = str(tmp) if args.keep or failed else None
    if not (args.keep or failed):
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
