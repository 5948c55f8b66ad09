"""PEFT interop: compile bricks into a PEFT LoRA adapter, publish a PEFT adapter as a brick."""

from __future__ import annotations

from pathlib import Path

import click

from cli.common import BrickCommand, host_option, open_registry


@click.command("export-peft", cls=BrickCommand)
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("refs", nargs=-1, required=True)
@host_option(help="The host the bricks were built for (its down_proj weights compile neuron gains).")
@click.option("--max-rank", default=512, show_default=True, help="SVD-truncate above this rank.")
@click.pass_context
def export_peft(ctx: click.Context, out: str, refs: tuple[str, ...], host_spec: str, max_rank: int) -> None:
    """Compile REFS (neuron gains, LoRA, no growth) into one PEFT LoRA adapter folder OUT."""
    from bricks.host import load_host
    from bricks.peft_io import export_peft as compile_to_peft

    reg = open_registry(ctx)
    bricks = [reg.get(r) for r in refs]
    adapter = compile_to_peft(bricks, load_host(host_spec), Path(out), max_rank)
    click.echo(f"wrote PEFT adapter (rank {adapter.rank}, max truncation error {adapter.max_error():.2e}) to {out}")


@click.command("import-peft", cls=BrickCommand)
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Brick name to publish under.")
@host_option()
@click.option("--version", "version", default=None)
@click.pass_context
def import_peft(ctx: click.Context, folder: str, name: str, host_spec: str, version: str | None) -> None:
    """Publish a PEFT LoRA adapter folder as a `lora` brick."""
    from bricks.host import host_ref
    from bricks.peft_io import brick_from_peft

    v = open_registry(ctx).publish(brick_from_peft(Path(folder), name, host_ref(host_spec)), version=version)
    click.echo(f"published {v.ref}")
