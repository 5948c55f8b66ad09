"""`brick host`: the host models bricks are built for."""

from __future__ import annotations

import click
from rich.table import Table

from bricks.constants import DEFAULT_HOST
from cli.common import BrickGroup, console, emit_json


@click.group(cls=BrickGroup)
def host() -> None:
    """Host models."""


@host.command("info")
@click.argument("spec", default=DEFAULT_HOST)
@click.option("--json", "as_json", is_flag=True)
def host_info(spec: str, as_json: bool) -> None:
    """Fingerprint and shape of a host (built-in name or HF folder); converts the built-in once."""
    from bricks.host import host_ref, resolve_host_path

    ref = host_ref(spec)
    data = {**ref.model_dump(), "path": str(resolve_host_path(spec)),
            "neurons": ref.n_layers * ref.d_ff}
    if as_json:
        emit_json(data)
        return
    t = Table("field", "value", show_header=False)
    for k, v in data.items():
        t.add_row(k, str(v))
    console.print(t)
