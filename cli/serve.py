"""Serving: `brick serve` (the HTTP API), `brick generate` (one request), `brick route` (explain routing)."""

from __future__ import annotations

import click
from rich.table import Table

from bricks.errors import BrickError
from cli.common import (
    ENGINES,
    BrickCommand,
    console,
    emit_json,
    engine_logs,
    err_console,
    open_registry,
    quiet_vllm,
    verbose_option,
)


def _open(ctx: click.Context, manifest_path: str, engine: str | None, self_test: bool = True):
    from serving.service import open_service

    return open_service(manifest_path, open_registry(ctx), engine_kind=engine, self_test=self_test)


@click.command(cls=BrickCommand)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.option("--engine", type=ENGINES, default=None, help="Override engine.kind.")
@click.option("--host", "bind", default=None, help="Override server.host.")
@click.option("--port", type=int, default=None, help="Override server.port.")
@verbose_option
@click.pass_context
def serve(ctx: click.Context, manifest_path: str, engine: str | None, bind: str | None, port: int | None,
          verbose: bool) -> None:
    """Serve MANIFEST over an OpenAI-compatible HTTP API (per-request bricks)."""

    import uvicorn

    from serving.app import create_app

    log = quiet_vllm(verbose)
    svc = _open(ctx, manifest_path, engine)
    cfg = svc.manifest.server

    async def main_async():
        await svc.start()
        server = _server_class()(uvicorn.Config(create_app(svc), host=bind or cfg.host, port=port or cfg.port,
                                                log_level="info"))
        try:
            await server.serve()
        finally:
            await svc.stop()

    with engine_logs(log, svc.engine_kind):
        try:
            _event_loop_run()(main_async())
        except KeyboardInterrupt:  # a second Ctrl-C while shutting down
            pass
        err_console.print("brick serve: stopped")


def _server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that a Ctrl-C (or SIGTERM) it shut down for is not raised again after
        shutdown (uvicorn re-raises captured signals on the way out of `serve`): raised again, it cancels
        the event loop's main task in the middle of stopping the engine, and where it lands depends on
        timing. Here `serve` returns and the engine stops in full; a second Ctrl-C still forces exit."""

        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return Server


def _event_loop_run():
    """uvloop's run where it is installed (vLLM's own `vllm serve` runs its HTTP server under uvloop, which
    handles many concurrent streams with less CPU than asyncio's default loop), else asyncio.run."""
    import asyncio

    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


@click.command(cls=BrickCommand)
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(exists=True, dir_okay=False))
@click.argument("prompt")
@click.option("--bricks", "brick_refs", multiple=True, help="Brick ref (repeatable); REF:GAIN sets a gain.")
@click.option("--engine", type=ENGINES, default=None, help="Override engine.kind.")
@click.option("--max-tokens", default=64, show_default=True)
@click.option("--temperature", default=0.0, show_default=True)
@click.option("--chat/--no-chat", default=True, show_default=True, help="Wrap the prompt in the chat template.")
@click.option("--json", "as_json", is_flag=True)
@verbose_option
@click.pass_context
def generate(ctx: click.Context, manifest_path: str, prompt: str, brick_refs: tuple[str, ...], engine: str | None,
             max_tokens: int, temperature: float, chat: bool, as_json: bool, verbose: bool) -> None:
    """One-off generation with MANIFEST's routing (plus --bricks)."""
    import asyncio

    from serving.engine import GenRequest

    log = quiet_vllm(verbose)
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

    with engine_logs(log, svc.engine_kind):
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
@click.argument("prompt", required=False)
@click.option("--eval", "eval_path", type=click.Path(exists=True, dir_okay=False), default=None,
              help='Route every line of a JSONL file of {"text", "label"} (label "none": no brick should run) '
              "and report top-1 accuracy per label, the confusion table and the no-brick rate.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def route(ctx: click.Context, manifest_path: str, prompt: str | None, eval_path: str | None, as_json: bool) -> None:
    """Explain the routing decision for PROMPT (chosen bricks, scores, thresholds), or score it with --eval."""
    if (prompt is None) == (eval_path is None):
        raise BrickError("brick route needs a PROMPT or --eval FILE (one of them)",
                         "e.g. brick route MANIFEST 'Bonjour !' or brick route --eval labelled.jsonl MANIFEST")
    svc = _open(ctx, manifest_path, "transformers", self_test=False)
    router = svc.make_router_only()
    if eval_path is not None:
        _route_eval(router, eval_path, _brick_labels(svc.manifest), as_json)
        return
    d = router.route(prompt)
    if as_json:
        emit_json(d.explain())
        return
    rule = f", rule {d.rule}" if d.rule else ""
    console.print(f"policy {d.policy}{rule}, manifest threshold {d.threshold}, "
                  f"{d.considered} routable brick(s) considered")
    t = Table("brick", "score", "cosine", "needs", "chosen")
    chosen = {c.ref for c in d.choices}
    for key, score in d.scores.items():
        entry = router.entries[key]
        sim, need = d.similarity.get(key), d.thresholds.get(key)
        t.add_row(key, f"{score:.3f}", "" if sim is None else f"{sim:.3f}", "" if need is None else f"{need:.3f}",
                  "yes" if entry.choice.ref in chosen else "")
    for c in d.choices:
        if not any(router.entries[k].choice.ref == c.ref for k in d.scores):
            t.add_row(c.ref, "-", "", "", "always")
    console.print(t)


def _brick_labels(manifest) -> dict[str, str]:
    """Manifest brick key -> the label it serves: its routing label, else its first label, else the key."""
    out = {}
    for b in manifest.bricks:
        key = b.alias or b.ref
        v = manifest.resolved.get(b.ref)
        meta = v.meta if v is not None else None
        out[key] = (meta and (meta.routing.label or (meta.labels[0] if meta.labels else None))) or key
    return out


def _route_eval(router, eval_path: str, labels: dict[str, str], as_json: bool) -> None:
    from router.evaluate import NONE, evaluate, load_labelled

    if router.policy != "retrieval":
        raise BrickError(f"--eval scores retrieval routing; this manifest's policy is {router.policy!r}",
                         "set routing.policy: retrieval")
    summary = evaluate(router, load_labelled(eval_path), labels).summary()
    if as_json:
        emit_json(summary)
        return
    conf = summary["confusion"]
    predicted = sorted({p for row in conf.values() for p in row} - {NONE}) + [NONE]
    t = Table("label", "examples", "top-1", *[f"-> {p}" for p in predicted])
    for lab, row in conf.items():
        t.add_row(lab, str(sum(row.values())), f"{summary['accuracy'][lab]:.1%}",
                  *[str(row.get(p, 0) or "") for p in predicted])
    console.print(t)
    line = (f"{summary['examples']} examples; lowest top-1 {summary['min_accuracy']:.1%}; "
            f"no-brick rate {summary['no_brick_rate']:.1%}; more than one brick {summary['extra_brick_rate']:.1%}")
    if "none_rejected" in summary:
        line += f"; '{NONE}' examples given no brick {summary['none_rejected']:.1%}"
    console.print(line)
