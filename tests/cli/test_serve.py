"""The commands that start engines (serve, generate, demo): --verbose reaches vLLM's log set-up, the log file
is named once and again on a failure. Nothing here starts an engine."""

from __future__ import annotations

import pytest

from bricks.errors import BrickError
from cli.common import engine_logs, err_console, quiet_vllm
from serving.vllm_logs import USER_SETTINGS


@pytest.fixture
def log_setup(monkeypatch):
    """Records each configure_vllm_logs call's `verbose`; the command stops right after it."""
    import bricks.host
    import cli.serve
    import serving.vllm_logs

    calls = []

    def stop(*args, **kwargs):
        raise BrickError("stopped by the test")

    monkeypatch.setattr(serving.vllm_logs, "configure_vllm_logs", lambda folder, verbose: calls.append(verbose))
    monkeypatch.setattr(cli.serve, "_open", stop)
    monkeypatch.setattr(bricks.host, "host_ref", stop)
    return calls


@pytest.mark.parametrize("command", [["serve", "M"], ["generate", "M", "Bonjour"], ["demo"]])
def test_verbose_reaches_the_log_setup(run, log_setup, tmp_path, command):
    manifest = tmp_path / "m.yaml"
    manifest.write_text("name: m\n")
    args = [str(manifest) if a == "M" else a for a in command]
    assert "stopped by the test" in run(*args, code=1)
    run(*args, "--verbose", code=1)
    assert log_setup == [False, True]


def test_the_log_goes_under_the_cache(tmp_path, monkeypatch):
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BRICK_CACHE", str(tmp_path))
    log = quiet_vllm(verbose=False)
    assert log.parent == tmp_path / "logs" and log.suffix == ".log"


def test_a_failure_names_the_log_again(tmp_path):
    log = tmp_path / "vllm-x.log"
    with err_console.capture() as out, pytest.raises(RuntimeError), engine_logs(log, "vllm"):
        raise RuntimeError("Engine core initialization failed")
    assert out.get().count(str(log)) == 2


def test_no_log_named_without_vllm(tmp_path):
    with err_console.capture() as out, engine_logs(tmp_path / "vllm-x.log", "transformers"):
        pass
    with err_console.capture() as none_configured, engine_logs(None, "vllm"):
        pass
    assert out.get() == "" and none_configured.get() == ""
