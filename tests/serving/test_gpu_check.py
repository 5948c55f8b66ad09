"""bench/gpu_check.py in its CPU mode (what CI without a GPU can run): the capture check's eager half, and
the reference-engine part on a 1-layer model, so the GPU run does not find a broken script."""

import json
import subprocess
import sys
from pathlib import Path

import torch

TORCH_THREADS = 1
SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.py"


def test_cpu_mode_says_no_cuda_checks_the_eager_half_and_exits_0():
    run = subprocess.run([sys.executable, str(SCRIPT), "--cpu", "--replays", "20"], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "no CUDA" in run.stderr
    report = json.loads(run.stdout)
    (capture,) = report["capture"]
    assert report["ok"] and capture["ok"] and capture["replays"] == 20 and not capture["failures"]
    assert capture["max_diff_vs_reference"] == 0.0 and capture["row_rewrites"] > 0


def test_reference_engine_part_runs_on_a_small_model():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    out = gpu_check.reference_engine(torch.device("cpu"), tokens=2, layers=1)
    assert out["gain_table_ok"] and out["brick_changes_logits_by"] > 0 and out["tokens_per_s_plain"] > 0
