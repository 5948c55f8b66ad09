"""`brick demo`: the main job end to end on the built-in host, in a few minutes on 2 CPU cores.

1. convert/fingerprint SmolLM2 from the packaged GGUF;
2. extract emergent label bricks (fr, de, code, math; English is checked and reported as general)
   from the shipped corpora and publish them (skipped when the registry already has them);
3. serve them in vLLM with the gain-table plugin (start-up self-test included) and answer prompts,
   each with the bricks retrieval routing picks, and the same prompts with a brick ablated.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import click
from rich.table import Table

from bricks.constants import DEFAULT_HOST
from cli.common import ENGINES, BrickCommand, console, open_registry, signed

PREFIX = "emergent"
PROMPTS = [
    ("Écris deux phrases sur la ville de Paris.", "fr"),
    ("Schreibe zwei Sätze über die Stadt Berlin.", "de"),
    ("Write a Python function that reverses a string.", "code"),
    ("What is the derivative of x^3 + 2x?", "math"),
]


@click.command("demo", cls=BrickCommand)
@click.option("--engine", type=ENGINES, default="vllm", show_default=True)
@click.option("--max-tokens", default=40, show_default=True)
@click.pass_context
def demo_cmd(ctx: click.Context, engine: str, max_tokens: int) -> None:
    """Run the whole pipeline on SmolLM2: extract bricks, publish, serve per-request assemblies."""
    from bricks.host import host_ref, load_host

    reg = open_registry(ctx)
    ref = host_ref()
    console.rule("1. host")
    console.print(f"{ref.name}: {ref.n_layers} layers x {ref.d_ff} FFN neurons, fingerprint {ref.short()}")
    host = load_host()
    console.rule("2. extract emergent bricks from the shipped corpora")
    bricks = _ensure_bricks(reg, host)
    console.rule(f"3. serve on {engine}: per-request assemblies")
    asyncio.run(_serve(reg, host, bricks, engine, max_tokens))


def _ensure_bricks(reg, host) -> list[str]:
    from bricks.corpus import load_corpus
    from bricks.extract import get_extractor

    have = [n for n in reg.names() if n.startswith(f"{PREFIX}-")]
    mine = [n for n in have if reg.resolve(n).host_fingerprint == host.ref.fingerprint]
    if not mine:
        result = get_extractor("emergent").run(host, load_corpus("builtin"), name=PREFIX)
        for b in result.bricks:
            reg.publish(b)
        for cand, why in result.skipped.items():
            console.print(f"  [yellow]{cand} not published[/yellow]: {why}")
        mine = [b.name for b in result.bricks]
    t = Table("brick", "neurons", "held-out own ΔPPL%", "mean other ΔPPL%")
    for name in sorted(mine):
        v = reg.resolve(name)
        m = v.meta.metrics.get("held_out", {})
        t.add_row(v.ref, str(v.meta.params.get("size", "")),
                  signed(m.get("own")), signed(m.get("mean_other")))
    console.print(t)
    return sorted(mine)


async def _serve(reg, host, bricks: list[str], engine: str, max_tokens: int) -> None:
    from serving.engine import GenRequest
    from serving.service import open_service

    folder = Path(tempfile.mkdtemp(prefix="brick-demo-"))
    manifest = folder / "demo.yaml"
    manifest.write_text(
        f"name: demo\nhost:\n  spec: {DEFAULT_HOST}\nbricks:\n"
        + "".join(f"  - ref: {b}@^1\n    gain: 1.5\n" for b in bricks)
        + "routing:\n  policy: retrieval\n  top_k: 1\n  threshold: 0.2\n"
        + f"engine:\n  kind: {engine}\n  enforce_eager: true\n  max_model_len: 1024\n"
        + "server:\n  max_tokens: 128\n  max_prompt_tokens: 512\n")
    svc = open_service(manifest, reg)
    svc.host = host
    await svc.start()
    if svc.self_test_report:
        console.print(f"self-test vs reference: {svc.self_test_report['requests']} requests, "
                      f"max |Δlogprob| {svc.self_test_report['max_logprob_diff']:.1e}")
    try:
        jobs = []
        for prompt, label in PROMPTS:
            ids = svc.tokenize_chat([{"role": "user", "content": prompt}])
            decision, routed = svc.plan(prompt)
            own = next((b for b in bricks if b.endswith(f"-{label}")), None)
            _, ablated = svc.plan(prompt, [{"ref": own, "gain": 0.0}] if own else None)
            plain = svc.cache.get([])
            jobs.append((prompt, decision, ids, {"plain host": plain, "routed, gain 1.5": routed,
                                                 "own label brick ablated": ablated}))
        # every request of every assembly in one concurrent batch
        flat = [(GenRequest(ids, max_tokens), b) for _, _, ids, variants in jobs for b in variants.values()]
        outs = iter(await asyncio.gather(*(svc.engine.generate(r, b) for r, b in flat)))
        for prompt, decision, _, variants in jobs:
            console.print(f"\n[bold]{prompt}[/bold]  routing scores {decision.scores}")
            for label, built in variants.items():
                console.print(f"  [cyan]{label}[/cyan] {built.refs or ''}: {next(outs).text.strip()[:150]!r}")
    finally:
        await svc.stop()
