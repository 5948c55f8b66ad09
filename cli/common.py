"""What every command module shares: clean user errors, the registry, JSON output, the host option.

A BrickError (a user mistake) prints its message and fix and exits 1, never a traceback — also when a
command runs on its own (click's test runner), outside the `brick` group.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from rich.console import Console

from bricks.constants import DEFAULT_HOST, ENGINE_KINDS
from bricks.errors import BrickError

console = Console()
err_console = Console(stderr=True)


class _CleanErrors:
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrickError as e:
            raise click.ClickException(str(e)) from None


class BrickCommand(_CleanErrors, click.Command):
    """A command whose user mistakes print one message with the fix."""


class MethodsCommand(BrickCommand):
    """A command that runs one of a registry's methods (`--method NAME`); its --help ends with every method,
    its paper and its options. `methods` returns the registry and the options model every method shares
    (or None), when --help asks: importing the methods loads torch. Shared options are listed once, last."""

    def __init__(self, *args: Any, methods: Callable[[], tuple[Any, type | None]], **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.methods = methods

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self.epilog = methods_help(*self.methods())
        super().format_epilog(ctx, formatter)


def methods_help(registry, shared: type | None = None) -> str:
    """The methods of `registry` for --help (\\b keeps click from rewrapping the lines)."""
    from bricks.extract.options import option_names

    common = set(option_names(shared)) if shared is not None else set()
    lines = ["Methods (--method NAME; options with --opt KEY=VALUE):", "", "\b"]
    for spec in registry.values():
        lines.append(f"  {spec.heading}: {spec.summary}  ({spec.reference_url})")
        lines += _option_lines(spec.options, leave_out=common)
    if shared is not None:
        lines += ["", "Options of every method:", "", "\b"]
        lines += _option_lines(shared, leave_out={"method", "progress"})
    return "\n".join(lines)


def _option_lines(model, leave_out: set[str]) -> list[str]:
    from bricks.extract.options import describe_option, option_names

    return [f"      {key}: {describe_option(model, key)}"[:160] for key in option_names(model) if key not in leave_out]


class BrickGroup(_CleanErrors, click.Group):
    """A group whose commands and subgroups are BrickCommand / BrickGroup."""

    command_class = BrickCommand
    group_class = type


def open_registry(ctx: click.Context, path: str | None = None):
    """The registry: `path` (a command's own --registry), else the root group's --registry, else
    $BRICK_REGISTRY / the user data dir. Opened once per invocation."""
    from registry import Registry, default_registry_path

    root = ctx.find_root()
    chosen = default_registry_path(path or root.params.get("registry"))
    cache = root.meta.setdefault("brickwork.registries", {})
    if chosen not in cache:
        cache[chosen] = Registry(chosen)
    return cache[chosen]


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def host_option(help: str = "Built-in host name or a local HF model folder.", default: str | None = DEFAULT_HOST):
    return click.option("--host", "host_spec", default=default, show_default=default is not None, help=help)


def signed(v: float | None) -> str:
    return "-" if v is None else f"{v:+.1f}"


ENGINES = click.Choice(ENGINE_KINDS)

verbose_option = click.option("--verbose", is_flag=True,
                              help="Show vLLM's INFO logs here too (by default: only its warnings and errors; "
                              "all of it goes to a log file under the brickwork cache).")


def quiet_vllm(verbose: bool) -> Path | None:
    """First thing in a command that may start a vLLM engine, before vLLM is imported: vLLM's log goes to a
    file under the cache's logs/ folder (returned; None when the user configured vLLM's logging)."""
    from bricks.host import cache_dir
    from serving.vllm_logs import configure_vllm_logs

    return configure_vllm_logs(cache_dir() / "logs", verbose)


@contextmanager
def engine_logs(log: Path | None, engine_kind: str) -> Iterator[None]:
    """Around starting and running an engine: names vLLM's log file once, and again when anything fails
    (vLLM's own error is on the console: its warnings and errors always are)."""
    if log is None or engine_kind != "vllm":
        yield
        return
    err_console.print(f"[dim]vLLM's log: {log} (--verbose shows it here)[/dim]", highlight=False, soft_wrap=True)
    try:
        yield
    except Exception:
        err_console.print(f"[red]vLLM's full log: {log}[/red]", highlight=False, soft_wrap=True)
        raise
