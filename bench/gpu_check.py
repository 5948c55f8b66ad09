"""GPU check of the gain-table op under CUDA graphs (issue 18). Needs only PyTorch with CUDA: no vLLM, no
network. Prints one JSON object; exits 1 if any check fails. About a minute on one GPU.

1. capture: the op body vLLM runs (serving/gain_table.py: `neuron_affine` over every layer) is captured in
   a torch.cuda.CUDAGraph per padded batch size, with persistent buffers (table rows, per-token rows, h),
   then replayed many times while the per-token rows (`fill_token_rows`, the runners' fill) and the table
   rows (`write_row`, a recycled row) change between replays. Every replay must equal the same body run
   eagerly, bit for bit, and an independent reference (h * G[row] + O[row] per token, padded tokens on
   row 0, the identity).
2. no host sync: the fills and replays run under torch.cuda.set_sync_debug_mode("error").
3. reference engine on CUDA (when brickwork's `bricks` package imports: it needs transformers and
   pydantic): a randomly initialised SmolLM2-shaped Llama (no weights to carry), greedy decoding with a KV
   cache as serving/engine.py's ReferenceEngine does, tokens/s with no brick and with a neuron brick applied
   by bricks.apply.assembly_applied; and the same brick served by the gain-table op (a down_proj pre-hook
   reading the table) must give the reference's logits.

Without CUDA it says so, runs the capture check's eager half on the CPU (so CI can smoke-test it) and exits 0.

    python bench/gpu_check.py [--replays 300] [--tokens 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serving.gain_table import GainTable, neuron_affine  # noqa: E402  (pure torch + numpy)

CAPTURE_SIZES = (1, 4, 16, 64, 128)  # padded batch sizes, as vLLM captures (128: the shipped max)
LAYERS, WIDTH, ROWS = 6, 1536, 8  # SmolLM2's FFN width; the table's last 8 columns are gated (growth slots)


def forward(table: GainTable, h: torch.Tensor) -> None:
    """What one forward does to the FFN activations of every layer, in order (the layers' matmuls left out)."""
    for layer in range(table.gain.shape[1]):
        neuron_affine(table, h, layer)


def expected(table: GainTable, x: torch.Tensor, token_rows: np.ndarray) -> torch.Tensor:
    """The same map computed another way: rows expanded on the host, advanced indexing, out of place."""
    idx = torch.zeros(x.shape[0], dtype=torch.long)
    idx[: len(token_rows)] = torch.from_numpy(token_rows)
    idx = idx.to(x.device)
    h = x.clone()
    for layer in range(table.gain.shape[1]):
        h = h * table.gain[idx, layer] + table.offset[idx, layer]
    return h


def random_row(gen: torch.Generator, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    gain = (0.25 + 1.5 * torch.rand(LAYERS, WIDTH, generator=gen)).to(device, dtype)
    offset = (0.1 * torch.randn(LAYERS, WIDTH, generator=gen)).to(device, dtype)
    return gain, offset


def random_step(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A batch that fits `size` padded tokens: per-request rows and query_start_loc (decodes and prefills)."""
    num_reqs = int(rng.integers(1, min(size, 12) + 1))
    counts = np.ones(num_reqs, dtype=np.int64)
    spare = size - num_reqs
    if spare and rng.random() < 0.5:  # some steps carry prefill chunks
        extra = rng.multinomial(int(rng.integers(0, spare + 1)), np.ones(num_reqs) / num_reqs)
        counts += extra
    qsl = np.concatenate([[0], np.cumsum(counts)])
    return rng.integers(0, ROWS, num_reqs), qsl


def check_capture(device: torch.device, dtype: torch.dtype, replays: int, graphs: bool) -> dict:
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    table = GainTable(ROWS, LAYERS, WIDTH, device, dtype, gated=(WIDTH - 8, WIDTH), max_tokens=max(CAPTURE_SIZES))
    for row in range(1, ROWS):
        table.write_row(row, *random_row(gen, device, dtype))
    static = {s: torch.zeros(s, WIDTH, device=device, dtype=dtype) for s in CAPTURE_SIZES}
    captured = {}
    if graphs:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up before capture, as torch.cuda.graphs asks
            for s in CAPTURE_SIZES:
                forward(table, static[s])
        torch.cuda.current_stream().wait_stream(side)
        for s in CAPTURE_SIZES:
            captured[s] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(captured[s]):
                forward(table, static[s])
    worst_eager = worst_ref = 0.0
    failures, changed, rewrites = [], 0, 0
    for i in range(replays):
        size = CAPTURE_SIZES[int(rng.integers(0, len(CAPTURE_SIZES)))]
        rows, qsl = random_step(rng, size)
        if i % 7 == 3:  # a row recycled for another assembly between replays
            table.write_row(int(rng.integers(1, ROWS)), *random_row(gen, device, dtype))
            rewrites += 1
        x = torch.randn(size, WIDTH, generator=gen).to(device, dtype)
        table.fill_token_rows(rows, qsl)
        static[size].copy_(x)
        if graphs:
            captured[size].replay()
        else:
            forward(table, static[size])
        got = static[size].clone()
        eager = x.clone()
        forward(table, eager)
        want = expected(table, x, np.repeat(rows, np.diff(qsl)))
        d_eager = float((got.float() - eager.float()).abs().max())
        d_ref = float((got.float() - want.float()).abs().max())
        worst_eager, worst_ref = max(worst_eager, d_eager), max(worst_ref, d_ref)
        changed += int(not torch.equal(got, x))
        if not (torch.equal(got, eager) and torch.equal(got, want)) and len(failures) < 5:
            failures.append({"replay": i, "size": size, "rows": rows.tolist(), "qsl": qsl.tolist(),
                             "max_diff_eager": d_eager, "max_diff_reference": d_ref})
    out = {"dtype": str(dtype).split(".")[-1], "graphs": graphs, "replays": replays, "row_rewrites": rewrites,
           "sizes": list(CAPTURE_SIZES), "max_diff_vs_eager": worst_eager, "max_diff_vs_reference": worst_ref,
           "replays_that_changed_h": changed, "failures": failures}
    out["ok"] = not failures and changed == replays  # gated columns: every step changes h
    if graphs:
        out.update(sync_and_timing(table, captured, static, rng))
    return out


def sync_and_timing(table: GainTable, captured: dict, static: dict, rng: np.random.Generator) -> dict:
    """Fill + replay with host syncs made errors; then the captured step's time against eager."""
    out = {}
    try:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        for _ in range(20):
            size = CAPTURE_SIZES[int(rng.integers(0, len(CAPTURE_SIZES)))]
            table.fill_token_rows(*random_step(rng, size))
            captured[size].replay()
        out["no_host_sync"] = True
    except RuntimeError as e:
        out["no_host_sync"], out["sync_error"] = False, str(e)[:300]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    size = max(CAPTURE_SIZES)
    for name, run in (("graph", captured[size].replay), ("eager", lambda: forward(table, static[size]))):
        run()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(200):
            run()
        torch.cuda.synchronize()
        out[f"us_per_step_{name}_{size}_tokens_{LAYERS}_layers"] = round((time.perf_counter() - t0) / 200 * 1e6, 1)
    return out


def reference_engine(device: torch.device, tokens: int, layers: int = 30) -> dict:
    """The transformers reference path on CUDA: tokens/s and the gain-table op against it."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM

        from bricks.adapters import adapter_for
        from bricks.compose import BrickUse, assemble
        from bricks.format import HostRef
        from bricks.kinds.neurons import neuron_brick
    except Exception as e:  # a bare GPU box may lack pydantic & co.: the op checks above still stand
        return {"skipped": f"{type(e).__name__}: {e}"}

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=layers,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                      tie_word_embeddings=True, rms_norm_eps=1e-5)
    model = LlamaForCausalLM(cfg).to(device).eval()
    adapter = adapter_for({"architectures": ["LlamaForCausalLM"]})
    ref = HostRef(fingerprint="sha256:random-smollm2-shape", arch="LlamaForCausalLM", n_layers=layers, d_model=576,
                  d_ff=1536, n_heads=9, n_kv_heads=3, head_dim=64)
    g = torch.Generator().manual_seed(1)
    brick = neuron_brick("probe", ref, {i: torch.randperm(1536, generator=g)[:200] for i in range(layers)},
                         gain=0.5 + torch.rand(200, generator=g),
                         offset={i: 0.05 * torch.randn(200, generator=g) for i in range(layers)})
    assembly = assemble(ref, [BrickUse(brick)])
    prompt = torch.randint(0, 49152, (1, 24), generator=g).to(device)
    out = {"model": f"random SmolLM2-shaped Llama ({layers} layers), fp32, batch 1", "tokens": tokens}
    for name, ctx in (("plain", None), ("neuron_brick", assembly)):
        out[f"tokens_per_s_{name}"] = round(_greedy_tokens_per_s(model, adapter, ctx, prompt, tokens), 1)
    out.update(_gain_table_vs_reference(model, adapter, assembly, prompt, device))
    return out


def _greedy_tokens_per_s(model, adapter, assembly, prompt: torch.Tensor, tokens: int) -> float:
    from contextlib import nullcontext

    from bricks.apply import assembly_applied

    ctx = assembly_applied(model, adapter, assembly) if assembly is not None else nullcontext()
    with torch.inference_mode(), ctx:
        for _warm_up_first in range(2):
            ids, past = prompt, None
            _sync(prompt.device)
            t0 = time.perf_counter()
            for _ in range(tokens):
                o = model(input_ids=ids, past_key_values=past, use_cache=True)
                past = o.past_key_values
                ids = o.logits[:, -1].argmax(-1, keepdim=True)
            _sync(prompt.device)
            took = time.perf_counter() - t0
    return tokens / took


def _gain_table_vs_reference(model, adapter, assembly, prompt: torch.Tensor, device) -> dict:
    from bricks.apply import assembly_applied

    nmap = assembly.neuron_map
    layers = nmap.gain.shape[0]
    table = GainTable(4, layers, 1536, device, torch.float32, max_tokens=64)
    table.write_row(2, nmap.gain.to(device), nmap.offset.to(device))
    table.fill_token_rows([2], [0, prompt.shape[1]])

    def hook(layer):
        def pre(module, args):
            h = args[0].reshape(-1, args[0].shape[-1]).clone()
            neuron_affine(table, h, layer)
            return (h.view_as(args[0]),)
        return pre

    with torch.inference_mode():
        with assembly_applied(model, adapter, assembly):
            want = model(prompt).logits
        handles = [adapter.down_proj(model, i).register_forward_pre_hook(hook(i)) for i in range(layers)]
        try:
            got = model(prompt).logits
        finally:
            for h in handles:
                h.remove()
        plain = model(prompt).logits
    diff = float((got - want).abs().max())
    return {"gain_table_vs_reference_max_logit_diff": diff,
            "brick_changes_logits_by": float((want - plain).abs().max()),
            "gain_table_ok": diff <= 1e-4}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replays", type=int, default=300)
    ap.add_argument("--tokens", type=int, default=64, help="greedy tokens per tokens/s measurement")
    ap.add_argument("--cpu", action="store_true", help="the CPU smoke run even where CUDA is present")
    args = ap.parse_args(argv)
    report: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if args.cpu or not torch.cuda.is_available():
        print("no CUDA: running the capture check's eager half on the CPU only (the GPU checks did not run)",
              file=sys.stderr)
        report["capture"] = [check_capture(torch.device("cpu"), torch.float32, min(args.replays, 40), graphs=False)]
        ok = all(c["ok"] for c in report["capture"])
        report["ok"] = ok
        print(json.dumps(report, indent=1))
        return 0 if ok else 1
    device = torch.device("cuda")
    report["device"] = torch.cuda.get_device_name(device)
    t0 = time.perf_counter()
    report["capture"] = [check_capture(device, dt, args.replays, graphs=True) for dt in (torch.float32, torch.bfloat16)]
    report["reference_engine"] = reference_engine(device, args.tokens)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    ok = all(c["ok"] and c.get("no_host_sync", True) for c in report["capture"])
    ok = ok and report["reference_engine"].get("gain_table_ok", True)
    report["ok"] = ok
    print(json.dumps(report, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
