"""Serving: `brick serve` (the HTTP API), `brick generate` (one request), `brick route` (explain routing)."""

from __future__ import annotations

import click
from rich.table import Table

from bricks.errors import BrickError
from cli.common import ENGINES, BrickCommand, console, emit_json, err_console, open_registry


def _open(ctx: click.Context, manifest_path: str, engine: str | None, self_test: bool = True):
    from serving.service import open_service

    return open_service(manifest_path, open_registry(ctx), engine_kind=engine, self_test=self_test)


@click.command(cls=BrickCommand)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.option("--engine", type=ENGINES, default=None, help="Override engine.kind.")
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


@click.command(cls=BrickCommand)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.argument("prompt")
@click.option("--bricks", "brick_refs", multiple=True, help="Brick ref (repeatable); REF:GAIN sets a gain.")
@click.option("--engine", type=ENGINES, default=None, help="Override engine.kind.")
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
        emit_json({"text": out.text, "bricks": built.refs, "assembly": built.id, "routing": decision.explain()})
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


@click.command(cls=BrickCommand)
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
        emit_json(d.explain())
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
