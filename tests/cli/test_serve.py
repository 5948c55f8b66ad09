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


def test_brick_serve_answers_over_loopback_and_stops_on_sigint(tmp_path, tiny_host):
    """The real command in its own process (uvloop's event loop where installed): /health, a chat request
    naming a brick, then Ctrl-C stops it cleanly."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import httpx

    from registry import Registry
    from tests.conftest import labelled_brick
    from tests.serving.tiny_app import MANIFEST

    Registry(tmp_path / "registry").publish(labelled_brick(tiny_host, gain=0.0, name="fr"))
    manifest = tmp_path / "m.yaml"
    manifest.write_text(MANIFEST.format(host=tiny_host.path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "BRICK_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "cli.main", "--registry", str(tmp_path / "registry"), "serve",
                             str(manifest), "--port", str(port)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "brick serve did not answer /health in 120 s"
            time.sleep(0.5)
        r = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": [{"role": "user", "content": "le chat"}], "max_tokens": 4,
            "bricks": ["fr@^1"]})
        assert r.status_code == 200, r.text
        assert r.json()["brickwork"]["bricks"] == ["fr@1.0.0"] and r.headers["x-brick-assembly"]
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        out = proc.stdout.read()
        assert proc.returncode == 0 and "stopped" in out, out
        assert "Traceback" not in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
