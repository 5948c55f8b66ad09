"""`brick export-model`: a manifest's fixed assembly as a plain Hugging Face model folder (bricks/export.py).

Which bricks go in: with `routing.policy: static`, the manifest's bricks (each with its gain and
offset_scale), as every request runs them. A manifest that routes per request (retrieval, or explicit:
each request names its own) has no one fixed set, so the command asks for one: `--assembly NAME` (a named
assembly of the manifest) or `--bricks KEY,KEY` (aliases or refs from its `bricks`, in that order, with
their manifest gains). Either also overrides a static manifest's set.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from cli.common import BrickCommand, console, emit_json, err_console, open_registry

if TYPE_CHECKING:
    from bricks.export import ExportedBrick
    from bricks.kinds.base import BrickUse
    from serving.manifest import BrickEntry, Manifest


def export_entries(manifest: Manifest, bricks: list[str] | None = None, assembly: str | None = None
                   ) -> list[BrickEntry]:
    """The manifest entries an export merges, in assembly order (see the module's docstring)."""
    from bricks.errors import InvalidInputError

    if bricks and assembly:
        raise InvalidInputError("--bricks and --assembly both choose the bricks", "pass one of them")
    if assembly:
        return manifest.assembly(assembly)
    if bricks:
        return [_entry(manifest, key) for key in _unique(bricks)]
    if manifest.routing.policy == "static":
        return list(manifest.bricks)
    named = ", ".join(manifest.assemblies) or "none defined"
    raise InvalidInputError(
        f"manifest {manifest.name!r} routes per request (policy {manifest.routing.policy}), so it has no one set "
        "of bricks to export",
        f"choose them with --assembly NAME (assemblies: {named}) or --bricks KEY,KEY (aliases or refs of its bricks)")


def _unique(keys: list[str]) -> list[str]:
    from bricks.errors import InvalidInputError

    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise InvalidInputError(f"--bricks names {', '.join(repeated)} more than once", "name each brick once")
    return keys


def _entry(manifest: Manifest, key: str) -> BrickEntry:
    from bricks.errors import NotFoundError

    entry = manifest.entry_for(key)
    if entry is None:
        keys = [k for b in manifest.bricks for k in (b.alias, b.ref) if k]
        raise NotFoundError(f"{key!r} is not a brick of manifest {manifest.name!r}",
                            f"use an alias or ref from its bricks: {', '.join(keys) or '(none)'}")
    return entry


def resolved_uses(manifest: Manifest, registry, entries: list[BrickEntry]
                  ) -> tuple[list[BrickUse], list[ExportedBrick]]:
    """Each entry's exact registry version (as the manifest resolved it) as a brick use, with its provenance."""
    from bricks.compose import BrickUse
    from bricks.export import ExportedBrick

    uses, sources = [], []
    for e in entries:
        info = manifest.resolved[e.ref]
        uses.append(BrickUse(registry.get(info.ref), e.gain, e.offset_scale))
        sources.append(ExportedBrick(info.name, info.version, info.kind, info.digest, e.gain, e.offset_scale))
    return uses, sources


@click.command("export-model", cls=BrickCommand)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--out", required=True, type=click.Path(file_okay=False), help="Folder to write (absent or empty).")
@click.option("--bricks", "brick_keys", default=None, metavar="KEY,KEY",
              help="Export these manifest bricks (aliases or refs, in order) instead of the static set.")
@click.option("--assembly", default=None, help="Export this named assembly of the manifest.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Dtype of the saved weights (the merge itself runs in fp32).")
@click.option("--force", is_flag=True, help="Replace OUT if it exists and is not empty.")
@click.option("--json", "as_json", is_flag=True, help="Print the export record as JSON.")
@click.pass_context
def export_model_cmd(ctx: click.Context, manifest_path: str, out: str, brick_keys: str | None, assembly: str | None,
                     dtype: str, force: bool, as_json: bool) -> None:
    """Merge MANIFEST's fixed set of bricks into its host and write a plain Hugging Face model folder.

    The folder loads with transformers or `vllm serve OUT` alone, no brickwork needed: LoRA merged into the
    weights, neuron gains folded into down_proj (offsets become its bias, mlp_bias), growth neurons appended
    to the FFN. OUT/brickwork-export.json records the brick versions, digests and the host fingerprint.
    """
    from bricks.export import export_model
    from bricks.host import host_ref
    from serving.manifest import load_manifest

    reg = open_registry(ctx)
    spec = load_manifest(manifest_path).host.spec  # schema only: which host to fingerprint
    manifest = load_manifest(manifest_path, registry=reg, host=host_ref(spec))
    keys = [k.strip() for k in brick_keys.split(",") if k.strip()] if brick_keys else None
    uses, sources = resolved_uses(manifest, reg, export_entries(manifest, keys, assembly))
    about = {"manifest": manifest.name, "manifest_path": str(manifest_path), "assembly": assembly}
    with err_console.status(f"merging {len(uses)} brick(s) into {manifest.host.spec}", spinner="dots"):
        report = export_model(manifest.host.spec, uses, out, dtype=dtype, force=force, sources=sources, about=about)
    if as_json:
        emit_json({"path": str(report.path), **report.record})
        return
    names = ", ".join(s.ref for s in report.bricks) or "no bricks (the plain host)"
    console.print(f"exported {names} on {report.host} to {report.path}", highlight=False, markup=False)
    widened = report.intermediate_size - report.host_intermediate_size
    console.print(f"  dtype {report.dtype}, intermediate_size {report.intermediate_size}"
                  + (f" (+{widened} grown)" if widened else "") + f", mlp_bias {str(report.mlp_bias).lower()}",
                  highlight=False, markup=False)
    console.print(f"  load it with AutoModelForCausalLM.from_pretrained({str(report.path)!r}) or "
                  f"vllm serve {report.path}", highlight=False, markup=False)
