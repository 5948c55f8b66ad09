"""Browsing and curating the registry: list, show, tag, rm, gc, verify, export, import, publish."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Column, Table
from rich.tree import Tree

from cli.common import BrickCommand, console, emit_json, err_console, open_registry


@click.command("list", cls=BrickCommand)
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List brick versions (all, or one brick's)."""
    reg = open_registry(ctx)
    rows = reg.list(name)
    if as_json:
        emit_json([_version_dict(v) for v in rows])
        return
    if not rows:
        console.print("no bricks" + (f" named {name}" if name else "") + f" in {reg.root}")
        return
    cells = [_list_cells(v) for v in rows]
    shown = _fit_columns(cells, console.width)
    t = Table(*[Column(c, no_wrap=c in KEEP_WHOLE, min_width=_width(c, cells) if c in KEEP_WHOLE else None)
                for c in shown])
    for row in cells:
        t.add_row(*[row[c] for c in shown])
    console.print(t)


LIST_COLUMNS = ("brick", "version", "kind", "method", "size", "layers", "host", "created")
KEEP_WHOLE = ("brick", "version")  # never cut: a truncated name is no use to copy
DROP_FIRST = ("created", "host", "layers", "method", "size", "kind")  # what goes when the terminal is narrow


def _list_cells(v) -> dict[str, str]:
    b = v.meta
    created = v.created.strftime("%Y-%m-%d %H:%M") if hasattr(v.created, "strftime") else str(v.created)
    return {"brick": v.name, "version": v.version, "kind": v.kind, "method": b.method,
            "size": str(b.params.get("size", "")), "layers": _layer_summary(v), "host": b.host.short(),
            "created": created}


def _width(column: str, cells: list[dict[str, str]]) -> int:
    return max([len(column), *(len(row[column]) for row in cells)])


def _fit_columns(cells: list[dict[str, str]], width: int) -> list[str]:
    """The columns that fit `width` unwrapped (a table border and padding take 3 per column, plus 1)."""
    shown = list(LIST_COLUMNS)
    for column in DROP_FIRST:
        if sum(_width(c, cells) + 3 for c in shown) + 1 <= width:
            break
        shown.remove(column)
    return shown


def _layer_summary(v) -> str:
    layers = v.meta.params.get("layers") or v.meta.metrics.get("layers")
    return ",".join(map(str, layers)) if isinstance(layers, list) and len(layers) <= 6 else (
        f"{len(layers)} layers" if isinstance(layers, list) else "")


def _version_dict(v) -> dict:
    return {"name": v.name, "version": v.version, "ref": f"{v.name}@{v.version}", "kind": v.kind,
            "digest": v.digest, "host_fingerprint": v.host_fingerprint, "created": str(v.created),
            "size_bytes": v.size_bytes, "method": v.meta.method, "description": v.meta.description}


@click.command(cls=BrickCommand)
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show one brick version: metadata, layers touched, lineage, tags, profile."""
    reg = open_registry(ctx)
    v = reg.resolve(ref)
    brick = reg.get(v.ref)
    lineage = reg.lineage(v.ref)
    tags = {t: ver for t, ver in reg.tags(v.name).items() if ver == v.version}
    per_layer = brick.per_layer()
    if as_json:
        emit_json({**_version_dict(v), "meta": json.loads(brick.meta.model_dump_json()), "layers": per_layer,
                    "lineage": lineage, "tags": sorted(tags)})
        return
    m = brick.meta
    console.print(f"[bold]{v.name}@{v.version}[/bold]  kind={v.kind}  method={m.method}  tags={sorted(tags) or '-'}")
    console.print(f"  host      {m.host.name or m.host.arch} ({m.host.short()}), {m.host.n_layers} layers x "
                  f"{m.host.d_ff} FFN")
    console.print(f"  digest    {v.digest}")
    console.print(f"  created   {m.created:%Y-%m-%d %H:%M:%S %Z}")
    if m.description:
        console.print(f"  about     {m.description}")
    if m.labels:
        console.print(f"  labels    {', '.join(m.labels)}")
    console.print(f"  touches   {brick.size()} {brick.spec.unit} in "
                  f"{len(per_layer)} layers: " + ", ".join(f"L{k}:{n}" for k, n in list(per_layer.items())[:12])
                  + (" ..." if len(per_layer) > 12 else ""))
    for title, d in (("params", m.params), ("metrics", m.metrics)):
        if d:
            console.print(f"  {title:9} " + json.dumps(d, default=str)[:400])
    if lineage["parents"] or lineage["children"]:
        console.print(lineage_tree(reg, v.ref, lineage))
    if m.routing.texts:
        console.print(f"  routing   {len(m.routing.texts)} example texts, e.g. {m.routing.texts[0][:60]!r}")
    if m.profile:
        _print_profile(m.profile)


LINEAGE_DEPTH = 8  # ancestors drawn; deeper ones are summarised


def lineage_tree(reg, ref: str, lineage: dict) -> Tree:
    """This version's ancestry as a tree (each parent with the operation that made the child from it, and
    the parent's own parents below it), then the versions made from it."""
    tree = Tree(f"  lineage   [bold]{ref}[/bold]")
    _add_parents(reg, tree, lineage["parents"], LINEAGE_DEPTH)
    for edge in lineage["children"]:
        tree.add(f"[dim]made from it:[/dim] {edge['ref']} by {edge['operation'] or '?'}")
    return tree


def _add_parents(reg, node: Tree, parents: list[dict], depth: int) -> None:
    for edge in parents:
        branch = node.add(f"{edge['operation'] or '?'} of {edge['ref']}{_edge_summary(edge.get('params') or {})}")
        grand = reg.lineage(edge["ref"])["parents"]
        if grand and depth <= 1:
            branch.add(f"[dim]... {len(grand)} more parent(s)[/dim]")
        elif grand:
            _add_parents(reg, branch, grand, depth - 1)


def _edge_summary(params: dict) -> str:
    """The parameters that tell operations apart: method, weights, data digest, seed."""
    shown = []
    for key in ("method", "weights", "data_digest", "corpus_digest", "seed", "steps", "jaccard"):
        if key in params and params[key] is not None:
            value = params[key]
            if isinstance(value, str) and value.startswith("sha256:"):
                value = value[7:19]
            shown.append(f"{key}={value}")
    return f"  [dim]({', '.join(shown)})[/dim]" if shown else ""


def _print_profile(profile: dict) -> None:
    """Activation-zone profile: per neuron, the top tokens of each activation zone."""
    console.print("  profile   " + str(profile.get("summary", "")))
    for n in profile.get("neurons", [])[:8]:
        zones = " | ".join(f"{z.get('zone')}: {' '.join(z.get('top_tokens', [])[:5])}" for z in n.get("zones", []))
        console.print(f"    L{n.get('layer')}/{n.get('neuron')}  {zones}")


@click.command(cls=BrickCommand)
@click.argument("ref")
@click.argument("tag")
@click.pass_context
def tag(ctx: click.Context, ref: str, tag: str) -> None:
    """Point TAG of a brick at REF's version (moves it if it exists; history is kept)."""
    v = open_registry(ctx).tag(ref, tag)
    click.echo(f"{v.name}@{tag} -> {v.version}")


@click.command(cls=BrickCommand)
@click.argument("ref")
@click.option("--force", is_flag=True, help="Also remove the tags and lineage edges that reference it.")
@click.pass_context
def rm(ctx: click.Context, ref: str, force: bool) -> None:
    """Remove one brick version (refuses if tags or other versions reference it, unless --force)."""
    reg = open_registry(ctx)
    v = reg.resolve(ref)
    reg.rm(v.ref, force=force)
    click.echo(f"removed {v.ref} (its blob goes at the next gc)")


@click.command(cls=BrickCommand)
@click.option("--grace", default=3600.0, show_default=True, help="Keep unreferenced blobs younger than this (s).")
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc(ctx: click.Context, grace: float, dry_run: bool, as_json: bool) -> None:
    """Remove blobs no version references (older than the grace period)."""
    res = open_registry(ctx).gc(grace_seconds=grace, dry_run=dry_run)
    emit_json(res) if as_json else click.echo(", ".join(f"{k}={v}" for k, v in res.items()))


@click.command(cls=BrickCommand)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Re-hash every blob the catalog references; exit 1 if any is corrupt or missing."""
    problems = open_registry(ctx).verify()
    if as_json:
        emit_json(problems)
    else:
        for p in problems:
            err_console.print(f"[red]{p}[/red]")
        click.echo("registry verified: ok" if not problems else f"{len(problems)} problem(s)")
    if problems:
        sys.exit(1)


@click.command("export", cls=BrickCommand)
@click.argument("archive", type=click.Path(dir_okay=False))
@click.argument("refs", nargs=-1)
@click.pass_context
def export_cmd(ctx: click.Context, archive: str, refs: tuple[str, ...]) -> None:
    """Write REFS (default: every version) with their digests, tags and lineage into one archive."""
    reg = open_registry(ctx)
    reg.export(list(refs) or None, Path(archive))
    n = len(refs) if refs else len(reg.list())
    click.echo(f"exported {n} version(s) to {archive}")


@click.command("import", cls=BrickCommand)
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def import_cmd(ctx: click.Context, archive: str) -> None:
    """Import an archive made by `brick export` (every digest is checked first)."""
    got = open_registry(ctx).import_archive(Path(archive))
    click.echo(f"imported {len(got)} version(s): " + ", ".join(v.ref for v in got))


@click.command(cls=BrickCommand)
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--version", "version", default=None, help="Explicit semver (default: next minor).")
@click.option("--tag", "tags", multiple=True)
@click.pass_context
def publish(ctx: click.Context, file: str, version: str | None, tags: tuple[str, ...]) -> None:
    """Publish a brick file (.safetensors written by brickwork) to the registry."""
    from bricks.format import load_brick

    v = open_registry(ctx).publish(load_brick(file), version=version, tags=list(tags))
    click.echo(f"published {v.ref} ({v.digest[:19]})")
