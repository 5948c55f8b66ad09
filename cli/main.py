"""`brick`: the command line. A thin layer over typed functions in bricks/, registry/, router/, serving/.

User mistakes (BrickError) print one message with its fix and exit 1, never a traceback.
Every listing command takes --json for scripting.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from bricks.errors import BrickError

console = Console()
err_console = Console(stderr=True)


class BrickGroup(click.Group):
    """Turns BrickError into a clean message and exit code 1 (a ClickException does exactly that)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrickError as e:
            raise click.ClickException(str(e)) from None


def _registry(ctx: click.Context):
    from registry import Registry, default_registry_path

    root = ctx.find_root()
    if "registry" not in root.meta:
        root.meta["registry"] = Registry(default_registry_path(root.params.get("registry")))
    return root.meta["registry"]


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.group(cls=BrickGroup)
@click.option("--registry", envvar="BRICK_REGISTRY", type=click.Path(file_okay=False),
              help="Registry folder (default: $BRICK_REGISTRY, else the user data dir).")
@click.version_option(package_name="brickwork")
def cli(registry: str | None) -> None:
    """brickwork: find the functional modules (bricks) inside an LLM, version them, serve them per request."""


# --- registry browsing -----------------------------------------------------------------------------
@cli.command("list")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def list_cmd(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """List brick versions (all, or one brick's)."""
    reg = _registry(ctx)
    rows = reg.list(name)
    if as_json:
        _emit_json([_version_dict(v) for v in rows])
        return
    if not rows:
        console.print("no bricks" + (f" named {name}" if name else "") + f" in {reg.root}")
        return
    t = Table("brick", "version", "kind", "method", "size", "layers", "host", "created")
    for v in rows:
        b = v.meta
        t.add_row(v.name, v.version, v.kind, b.method, str(b.params.get("size", "")), _layer_summary(v),
                  b.host.short(), v.created.strftime("%Y-%m-%d %H:%M") if hasattr(v.created, "strftime")
                  else str(v.created))
    console.print(t)


def _layer_summary(v) -> str:
    layers = v.meta.params.get("layers") or v.meta.metrics.get("layers")
    return ",".join(map(str, layers)) if isinstance(layers, list) and len(layers) <= 6 else (
        f"{len(layers)} layers" if isinstance(layers, list) else "")


def _version_dict(v) -> dict:
    return {"name": v.name, "version": v.version, "ref": f"{v.name}@{v.version}", "kind": v.kind,
            "digest": v.digest, "host_fingerprint": v.host_fingerprint, "created": str(v.created),
            "size_bytes": v.size_bytes, "method": v.meta.method, "description": v.meta.description}


@cli.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show one brick version: metadata, layers touched, lineage, tags, profile."""
    reg = _registry(ctx)
    v = reg.resolve(ref)
    brick = reg.get(v.ref)
    lineage = reg.lineage(v.ref)
    tags = {t: ver for t, ver in reg.tags(v.name).items() if ver == v.version}
    per_layer = _per_layer(brick)
    if as_json:
        _emit_json({**_version_dict(v), "meta": json.loads(brick.meta.model_dump_json()), "layers": per_layer,
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
    console.print(f"  touches   {brick.size()} {'neurons' if v.kind != 'lora' else 'rank'} in "
                  f"{len(per_layer)} layers: " + ", ".join(f"L{k}:{n}" for k, n in list(per_layer.items())[:12])
                  + (" ..." if len(per_layer) > 12 else ""))
    for title, d in (("params", m.params), ("metrics", m.metrics)):
        if d:
            console.print(f"  {title:9} " + json.dumps(d, default=str)[:400])
    for edge in lineage["parents"]:
        console.print(f"  parent    {edge['ref']} via {edge['operation']}")
    for edge in lineage["children"]:
        console.print(f"  child     {edge['ref']} via {edge['operation']}")
    if m.routing.texts:
        console.print(f"  routing   {len(m.routing.texts)} example texts, e.g. {m.routing.texts[0][:60]!r}")
    if m.profile:
        _print_profile(m.profile)


def _per_layer(brick) -> dict[int, int]:
    if brick.kind == "neurons":
        return {k: int(s.indices.numel()) for k, s in sorted(brick.neurons.items())}
    if brick.kind == "growth":
        return {k: int(g.gate.shape[0]) for k, g in sorted(brick.growth.items())}
    out: dict[int, int] = {}
    for mod, lm in brick.lora.items():
        layer = int(mod.split(".")[2])
        out[layer] = out.get(layer, 0) + lm.rank
    return dict(sorted(out.items()))


def _print_profile(profile: dict) -> None:
    """Activation-zone profile: per neuron, the top tokens of each activation zone."""
    console.print("  profile   " + str(profile.get("summary", "")))
    for n in profile.get("neurons", [])[:8]:
        zones = " | ".join(f"{z.get('zone')}: {' '.join(z.get('top_tokens', [])[:5])}" for z in n.get("zones", []))
        console.print(f"    L{n.get('layer')}/{n.get('neuron')}  {zones}")


@cli.command()
@click.argument("ref")
@click.argument("tag")
@click.pass_context
def tag(ctx: click.Context, ref: str, tag: str) -> None:
    """Point TAG of a brick at REF's version (moves it if it exists; history is kept)."""
    v = _registry(ctx).tag(ref, tag)
    click.echo(f"{v.name}@{tag} -> {v.version}")


@cli.command()
@click.argument("ref")
@click.option("--force", is_flag=True, help="Also remove the tags and lineage edges that reference it.")
@click.pass_context
def rm(ctx: click.Context, ref: str, force: bool) -> None:
    """Remove one brick version (refuses if tags or other versions reference it, unless --force)."""
    reg = _registry(ctx)
    v = reg.resolve(ref)
    reg.rm(v.ref, force=force)
    click.echo(f"removed {v.ref} (its blob goes at the next gc)")


@cli.command()
@click.option("--grace", default=3600.0, show_default=True, help="Keep unreferenced blobs younger than this (s).")
@click.option("--dry-run", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def gc(ctx: click.Context, grace: float, dry_run: bool, as_json: bool) -> None:
    """Remove blobs no version references (older than the grace period)."""
    res = _registry(ctx).gc(grace_seconds=grace, dry_run=dry_run)
    _emit_json(res) if as_json else click.echo(", ".join(f"{k}={v}" for k, v in res.items()))


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, as_json: bool) -> None:
    """Re-hash every blob the catalog references; exit 1 if any is corrupt or missing."""
    problems = _registry(ctx).verify()
    if as_json:
        _emit_json(problems)
    else:
        for p in problems:
            err_console.print(f"[red]{p}[/red]")
        click.echo("registry verified: ok" if not problems else f"{len(problems)} problem(s)")
    if problems:
        sys.exit(1)


@cli.command("export")
@click.argument("archive", type=click.Path(dir_okay=False))
@click.argument("refs", nargs=-1)
@click.pass_context
def export_cmd(ctx: click.Context, archive: str, refs: tuple[str, ...]) -> None:
    """Write REFS (default: every version) with their digests, tags and lineage into one archive."""
    reg = _registry(ctx)
    reg.export(list(refs) or None, Path(archive))
    n = len(refs) if refs else len(reg.list())
    click.echo(f"exported {n} version(s) to {archive}")


@cli.command("import")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False))
@click.pass_context
def import_cmd(ctx: click.Context, archive: str) -> None:
    """Import an archive made by `brick export` (every digest is checked first)."""
    got = _registry(ctx).import_archive(Path(archive))
    click.echo(f"imported {len(got)} version(s): " + ", ".join(v.ref for v in got))


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--version", "version", default=None, help="Explicit semver (default: next minor).")
@click.option("--tag", "tags", multiple=True)
@click.pass_context
def publish(ctx: click.Context, file: str, version: str | None, tags: tuple[str, ...]) -> None:
    """Publish a brick file (.safetensors written by brickwork) to the registry."""
    from bricks.format import load_brick

    v = _registry(ctx).publish(load_brick(file), version=version, tags=list(tags))
    click.echo(f"published {v.ref} ({v.digest[:19]})")


@cli.command("export-peft")
@click.argument("out", type=click.Path(file_okay=False))
@click.argument("refs", nargs=-1, required=True)
@click.option("--host", "host_spec", default="smollm2-135m-instruct", show_default=True,
              help="The host the bricks were built for (its down_proj weights compile neuron gains).")
@click.option("--max-rank", default=512, show_default=True, help="SVD-truncate above this rank.")
@click.pass_context
def export_peft(ctx: click.Context, out: str, refs: tuple[str, ...], host_spec: str, max_rank: int) -> None:
    """Compile REFS (neuron gains, LoRA, no growth) into one PEFT LoRA adapter folder OUT."""
    from bricks.compose import BrickUse, assemble
    from bricks.host import load_host
    from bricks.lora import assembly_adapter, write_peft

    reg = _registry(ctx)
    host = load_host(host_spec)
    uses = [BrickUse(reg.get(r)) for r in refs]
    if any(u.brick.kind == "growth" for u in uses):
        raise BrickError("growth bricks add neurons: a PEFT LoRA adapter cannot hold them on an unwidened host",
                         "export only neuron and LoRA bricks")
    w_down = {i: host.adapter.down_proj(host.model, i).weight.detach() for i in range(host.n_layers)}
    adapter = assembly_adapter(assemble(host.ref, uses), max_rank, w_down=w_down)
    write_peft(adapter, Path(out))
    click.echo(f"wrote PEFT adapter (rank {adapter.rank}, max truncation error {adapter.max_error():.2e}) to {out}")


@cli.command("import-peft")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--name", required=True, help="Brick name to publish under.")
@click.option("--host", "host_spec", default="smollm2-135m-instruct", show_default=True)
@click.option("--version", "version", default=None)
@click.pass_context
def import_peft(ctx: click.Context, folder: str, name: str, host_spec: str, version: str | None) -> None:
    """Publish a PEFT LoRA adapter folder as a `lora` brick."""
    from bricks.host import host_ref
    from bricks.peft_io import brick_from_peft

    v = _registry(ctx).publish(brick_from_peft(Path(folder), name, host_ref(host_spec)), version=version)
    click.echo(f"published {v.ref}")


# --- host ----------------------------------------------------------------------------------------------
@cli.group(cls=BrickGroup)
def host() -> None:
    """Host models."""


@host.command("info")
@click.argument("spec", default="smollm2-135m-instruct")
@click.option("--json", "as_json", is_flag=True)
def host_info(spec: str, as_json: bool) -> None:
    """Fingerprint and shape of a host (built-in name or HF folder); converts the built-in once."""
    from bricks.host import host_ref, resolve_host_path

    ref = host_ref(spec)
    data = {**ref.model_dump(), "path": str(resolve_host_path(spec)),
            "neurons": ref.n_layers * ref.d_ff}
    if as_json:
        _emit_json(data)
        return
    t = Table("field", "value", show_header=False)
    for k, v in data.items():
        t.add_row(k, str(v))
    console.print(t)


# --- manifests -----------------------------------------------------------------------------------------
@cli.group(cls=BrickGroup)
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
        m = load_manifest(file, registry=None if offline else _registry(ctx))
    except ManifestError as e:
        if as_json:
            _emit_json({"ok": False, "problems": [p.__dict__ if hasattr(p, "__dict__") else dict(p)
                                                  for p in e.problems]})
        else:
            click.echo(str(e), err=True)
        sys.exit(1)
    msg = f"{file}: ok ({m.name}: {len(m.bricks)} brick(s), policy {m.routing.policy}, engine {m.engine.kind})"
    _emit_json({"ok": True, "name": m.name}) if as_json else click.echo(msg)


@manifest.command("schema")
def manifest_schema() -> None:
    """Print the manifest JSON Schema."""
    from serving.manifest import manifest_json_schema

    _emit_json(manifest_json_schema())


# --- serving -------------------------------------------------------------------------------------------
def _open(ctx: click.Context, manifest_path: str, engine: str | None, self_test: bool = True):
    from serving.service import open_service

    return open_service(manifest_path, _registry(ctx), engine_kind=engine, self_test=self_test)


@cli.command()
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.option("--engine", type=click.Choice(["vllm", "transformers"]), default=None, help="Override engine.kind.")
@click.option("--host", "bind", default=None, help="Override server.host.")
@click.option("--port", type=int, default=None, help="Override server.port.")
@click.pass_context
def serve(ctx: click.Context, manifest_path: str, engine: str | None, bind: str | None, port: int | None) -> None:
    """Serve MANIFEST over an OpenAI-compatible HTTP API (per-request bricks)."""
    import asyncio

    import uvicorn

    from serving.app import create_app

    svc = _open(ctx, manifest_path, engine)
    cfg = svc.manifest.server

    async def main_async():
        await svc.start()
        server = uvicorn.Server(uvicorn.Config(create_app(svc), host=bind or cfg.host, port=port or cfg.port,
                                               log_level="info"))
        try:
            await server.serve()
        finally:
            await svc.stop()

    asyncio.run(main_async())


@cli.command()
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.argument("prompt")
@click.option("--bricks", "brick_refs", multiple=True, help="Brick ref (repeatable); REF:GAIN sets a gain.")
@click.option("--engine", type=click.Choice(["vllm", "transformers"]), default=None, help="Override engine.kind.")
@click.option("--max-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--chat/--no-chat", default=True, show_default=True, help="Wrap the prompt in the chat template.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def generate(ctx: click.Context, manifest_path: str, prompt: str, brick_refs: tuple[str, ...], engine: str | None,
             max_tokens: int, temperature: float, chat: bool, as_json: bool) -> None:
    """One-off generation with MANIFEST's routing (plus --bricks)."""
    import asyncio

    from serving.engine import GenRequest

    svc = _open(ctx, manifest_path, engine, self_test=False)
    requested = [_brick_arg(b) for b in brick_refs] or None

    async def run():
        await svc.start()
        try:
            ids = svc.tokenize_chat([{"role": "user", "content": prompt}]) if chat else svc.tokenize(prompt)
            svc.check_limits(len(ids), max_tokens)
            decision, built = svc.plan(prompt, requested)
            out = await svc.engine.generate(GenRequest(ids, max_tokens, temperature), built)
            return decision, built, out
        finally:
            await svc.stop()

    decision, built, out = asyncio.run(run())
    if as_json:
        _emit_json({"text": out.text, "bricks": built.refs, "assembly": built.id, "routing": decision.explain()})
        return
    err_console.print(f"[dim]bricks: {', '.join(built.refs) or '(none)'}  assembly: {built.id}[/dim]")
    click.echo(out.text)


def _brick_arg(text: str) -> dict:
    ref, _, gain = text.partition(":")
    if not gain:
        return {"ref": ref}
    try:
        return {"ref": ref, "gain": float(gain)}
    except ValueError:
        raise BrickError(f"--bricks {text!r}: gain {gain!r} is not a number", "write REF or REF:GAIN") from None


@cli.command()
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.argument("prompt")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route(ctx: click.Context, manifest_path: str, prompt: str, as_json: bool) -> None:
    """Explain the routing decision for PROMPT: chosen bricks, scores, threshold."""

    svc = _open(ctx, manifest_path, "transformers", self_test=False)
    router = svc.make_router_only()
    d = router.route(prompt)
    if as_json:
        _emit_json(d.explain())
        return
    console.print(f"policy {d.policy}, threshold {d.threshold}, {d.considered} routable brick(s) considered")
    t = Table("brick", "score", "chosen")
    chosen = {c.ref for c in d.choices}
    for key, score in d.scores.items():
        entry = router.entries[key]
        t.add_row(key, f"{score:.3f}", "yes" if entry.choice.ref in chosen else "")
    for c in d.choices:
        if not any(router.entries[k].choice.ref == c.ref for k in d.scores):
            t.add_row(c.ref, "-", "always")
    console.print(t)


def _add_commands() -> None:
    from serving.commands.demo import demo_cmd
    from serving.commands.extract import audit_cmd, eval_cmd, extract_cmd

    for cmd in (extract_cmd, eval_cmd, audit_cmd, demo_cmd):
        cli.add_command(cmd)


_add_commands()


def main() -> None:
    cli(prog_name="brick")


if __name__ == "__main__":
    main()
