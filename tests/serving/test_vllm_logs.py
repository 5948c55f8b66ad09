"""Where vLLM's logs go: the environment and logging config brickwork sets up before an engine starts
(checked by applying the config to the `vllm` logger; no engine, no vLLM import)."""

from __future__ import annotations

import json
import logging
import logging.config
import os

import pytest

from serving.vllm_logs import KEEP_LOGS, USER_SETTINGS, configure_vllm_logs


@pytest.fixture
def clean_env(monkeypatch):
    """No vLLM logging settings of the user's; whatever configure_vllm_logs sets is undone afterwards."""
    for name in USER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def vllm_logger():
    """The `vllm` logger, restored (handlers closed) after a test applied a config to it."""
    logger = logging.getLogger("vllm")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    for h in logger.handlers:
        h.close()
    logger.handlers, logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _apply(log_file):
    config = json.loads((log_file.with_suffix(".json")).read_text())
    logging.config.dictConfig(config)
    return config


@pytest.mark.parametrize("verbose", [False, True])
def test_info_goes_to_the_file_and_only_verbose_shows_it(tmp_path, clean_env, vllm_logger, capsys, verbose):
    log = configure_vllm_logs(tmp_path / "logs", verbose=verbose)
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == str(log.with_suffix(".json"))
    _apply(log)
    logging.getLogger("vllm.engine").info("loading weights")
    logging.getLogger("vllm.engine").error("engine core failed")
    for h in vllm_logger.handlers:
        h.flush()
    err = capsys.readouterr().err
    assert "engine core failed" in err  # errors always reach the console
    assert ("loading weights" in err) == verbose
    text = log.read_text()
    assert "loading weights" in text and "engine core failed" in text


def test_other_loggers_keep_working(tmp_path, clean_env, vllm_logger):
    mine = logging.getLogger("brickwork.test")
    mine.disabled = False
    _apply(configure_vllm_logs(tmp_path))
    assert not mine.disabled


@pytest.mark.parametrize("name,value", [("VLLM_LOGGING_LEVEL", "DEBUG"), ("VLLM_CONFIGURE_LOGGING", "0"),
                                        ("VLLM_LOGGING_CONFIG_PATH", "/somewhere/mine.json")])
def test_the_users_own_setting_is_kept(tmp_path, clean_env, monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    assert configure_vllm_logs(tmp_path) is None
    assert os.environ.get("VLLM_LOGGING_CONFIG_PATH") == (value if name == "VLLM_LOGGING_CONFIG_PATH" else None)
    assert not any(tmp_path.iterdir())


def test_old_logs_are_removed(tmp_path, clean_env):
    for i in range(KEEP_LOGS + 3):
        for suffix in (".json", ".log"):
            old = tmp_path / f"vllm-old{i:02d}{suffix}"
            old.write_text("")
            os.utime(old, (i, i))
    log = configure_vllm_logs(tmp_path)
    left = sorted(p.name for p in tmp_path.glob("vllm-*.json"))
    assert len(left) == KEEP_LOGS and log.with_suffix(".json").name in left
    assert "vllm-old00.json" not in left and not (tmp_path / "vllm-old00.log").exists()


@pytest.mark.parametrize("verbose", [False, True])
def test_known_platform_notices_stay_in_the_file_unless_verbose(tmp_path, clean_env, vllm_logger, capsys, verbose):
    log = configure_vllm_logs(tmp_path / "logs", verbose=verbose)
    _apply(log)
    worker = logging.getLogger("vllm.v1.worker.cpu_worker")
    worker.warning("libtcmalloc is not found in LD_PRELOAD. For best performance, please follow ...")
    worker.warning("KV cache is nearly full")  # not a known notice: always shown
    for h in vllm_logger.handlers:
        h.flush()
    err = capsys.readouterr().err
    assert "KV cache is nearly full" in err
    assert ("LD_PRELOAD" in err) == verbose
    assert "LD_PRELOAD" in log.read_text()
