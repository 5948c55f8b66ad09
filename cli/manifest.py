"""`brick manifest`: check a manifest, print its schema."""

from __future__ import annotations

import sys

import click

from cli.common import BrickGroup, emit_json, open_registry


@click.group(cls=BrickGroup)
def manifest() -> None:
    """Manifests: YAML files declaring model assemblies."""


@manifest.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--offline", is_flag=True, help="Check syntax and schema only; do not resolve bricks.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def manifest_validate(ctx: click.Context, file: str, offline: bool, as_json: bool) -> None:
    """Check a manifest; print every problem with its YAML path and line."""
    from serving.manifest import ManifestError, load_manifest

    try:
        m = load_manifest(file, registry=None if offline else open_registry(ctx))
    except ManifestError as e:
        if as_json:
            emit_json({"ok": False, "problems": [p.__dict__ if hasattr(p, "__dict__") else dict(p)
                                                  for p in e.problems]})
        else:
            click.echo(str(e), err=True)
        sys.exit(1)
    msg = f"{file}: ok ({m.name}: {len(m.bricks)} brick(s), policy {m.routing.policy}, engine {m.engine.kind})"
    emit_json({"ok": True, "name": m.name}) if as_json else click.echo(msg)


@manifest.command("schema")
def manifest_schema() -> None:
    """Print the manifest JSON Schema."""
    from serving.manifest import manifest_json_schema

    emit_json(manifest_json_schema())
