"""What every command module shares: clean user errors, the registry, JSON output, the host option.

A BrickError (a user mistake) prints its message and fix and exits 1, never a traceback — also when a
command runs on its own (click's test runner), outside the `brick` group.
"""

from __future__ import annotations

import json
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
