"""`brick demo`: the main job end to end on the built-in host, in a few minutes on 2 CPU cores.

1. convert/fingerprint SmolLM2 from the packaged GGUF;
2. extract emergent label bricks from the shipped corpora and publish them as `lang-fr`, `lang-de`,
   `lang-en`, `code` and `math` (a label the held-out check calls general is reported, not published),
   plus `steer-fr`, the French brick turned into a steering brick; every version is tagged `stable`.
   Skipped when the registry already has them. These are the names the README and `manifests/` use;
3. make two customized bricks (skipped when the registry has them): `json-extract`, a LoRA skill trained
   with PEFT on the shipped JSON-extraction task (a short run: DEMO_TRAIN), and `atlas`, FFN neurons grown
   to hold a few of the shipped fictional facts (DEMO_FACTS facts, DEMO_GROW);
4. serve them all in vLLM with the gain-table plugin and multi-LoRA (start-up self-test included) and show,
   from one running server and in one concurrent batch, what per-request assembly is for: where retrieval
   routes each prompt (and whether that is its brick), the plain host's answer, the answer with the
   prompt's own language or domain ablated, an English question answered in French by the staged steering
   brick, and the skill and the grown fact, each reached by retrieval from a request it was not trained on.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.table import Table

from bricks.constants import DEFAULT_HOST
from cli.common import ENGINES, BrickCommand, console, engine_logs, open_registry, quiet_vllm, signed, verbose_option

if TYPE_CHECKING:
    from bricks.corpus import Corpus
    from bricks.host import Host
    from registry.catalog import VersionInfo
    from registry.registry import Registry

# The demo's brick per corpus label: what the README's next steps and every manifest in manifests/ name.
DEMO_NAMES = {"fr": "lang-fr", "de": "lang-de", "en": "lang-en", "code": "code", "math": "math"}
STEER_NAME = "steer-fr"  # lang-fr's neurons, staged: clamped to 2x their French mean on prompt tokens, then
# +0.3 x (French mean - English mean) at generated tokens (bricks.steer.publish.DEFAULT_SETTING)
STEER_TARGET = "fr"
DEMO_TAG = "stable"  # on every version the demo publishes, so `name@stable` resolves on a fresh registry
PROMPTS = [
    ("Écris deux phrases sur la ville de Paris.", "fr"),
    ("Schreibe zwei Sätze über die Stadt Berlin.", "de"),
    ("Write a Python function that reverses a string.", "code"),
    ("What is the derivative of x^3 + 2x?", "math"),
]
ENGLISH_PROMPT = "Tell me about your favourite season and why you like it."  # answered in French by steering
SKILL_NAME = "json-extract"  # a LoRA brick trained on bricks/data/tasks/json-extract.jsonl
DEMO_TRAIN = {"steps": 30, "locality_weight": 0.0}  # ~2 min on 2 cores; `brick train` defaults to 150 steps
# with the locality penalty (7 min for 60 steps): a routed skill runs only on its own requests, so the demo
# spends its minutes elsewhere
SKILL_PROMPT = "Please give me this as JSON: Ines Moreau, 27, is a pharmacist. She moved to Lyon last year."
FACT_NAME = "atlas"  # FFN neurons grown to hold facts of bricks/data/facts/facts.jsonl
DEMO_FACTS = 8  # the file's first facts
DEMO_GROW = {"steps": 100, "eval_docs": 2}  # ~3 min; the 36 facts at the defaults take 8
FACT_PROMPT = "The seat of government of Velmora, an island nation, is the city of"  # heldout.jsonl's wording


@click.command("demo", cls=BrickCommand)
@click.option("--engine", type=ENGINES, default="vllm", show_default=True)
@click.option("--max-tokens", default=40, show_default=True)
@verbose_option
@click.pass_context
def demo_cmd(ctx: click.Context, engine: str, max_tokens: int, verbose: bool) -> None:
    """Run the whole pipeline on SmolLM2: extract bricks, publish, serve per-request assemblies."""
    from bricks.host import host_ref, load_host

    log = quiet_vllm(verbose)
    reg = open_registry(ctx)
    ref = host_ref()
    console.rule("1. host")
    console.print(f"{ref.name}: {ref.n_layers} layers x {ref.d_ff} FFN neurons, fingerprint {ref.short()}")
    host = load_host()
    console.rule("2. extract emergent bricks from the shipped corpora")
    bricks = _ensure_bricks(reg, host)
    console.rule("3. make bricks: train a skill (LoRA), grow facts (new neurons)")
    made = _ensure_made(reg, host)
    console.rule(f"4. serve on {engine}: per-request assemblies")
    with engine_logs(log, engine):
        asyncio.run(_serve(reg, host, bricks, made, engine, max_tokens))


def publish_demo_bricks(reg: Registry, host: Host, corpus: Corpus | None = None,
                        **options: Any) -> list[VersionInfo]:
    """The demo's publishing step: emergent label bricks under their `DEMO_NAMES`, then `STEER_NAME`.

    Extracts from `corpus` (default: the shipped corpora) with the emergent extractor's `options`;
    candidates its held-out check rejects are printed and not published. Every version is tagged DEMO_TAG.
    """
    from bricks.corpus import load_corpus
    from bricks.extract import get_extractor

    result = get_extractor("emergent").run(host, corpus or load_corpus("builtin"), name="emergent", **options)
    for cand, why in result.skipped.items():
        console.print(f"  [yellow]{cand} not published[/yellow]: {why}")
    published = []
    for brick in result.bricks:
        brick.meta.name = DEMO_NAMES.get(brick.meta.routing.label, brick.meta.name)
        info = reg.publish(brick, tags=[DEMO_TAG])
        published.append(info)
        if brick.meta.routing.label == STEER_TARGET:
            published += _publish_steering(reg, brick, info, result.report["params"]["dominant"])
    return published


def _publish_steering(reg: Registry, brick, parent: VersionInfo, dominant: str) -> list[VersionInfo]:
    """STEER_NAME from the French brick with the staged setting `brick eval --steer` measured best (not
    measured again here: `brick steer` does that), with the French brick as its parent."""
    from bricks.steer.publish import steering_brick

    if dominant not in brick.meta.labels:
        console.print(f"  [yellow]{STEER_NAME} not published[/yellow]: the corpus has no {dominant} text to "
                      "steer away from")
        return []
    steer = steering_brick(brick, STEER_TARGET, dominant=dominant, name=STEER_NAME)
    info = reg.publish(steer, parents=[parent.ref], operation="steer", op_params=steer.meta.params["steering"],
                       tags=[DEMO_TAG])
    return [info]


def _ensure_bricks(reg, host) -> list[str]:
    """The demo's label bricks for this host, published first if any brick the manifests need is missing.

    English is the dominant language: the held-out check may call its brick general, and then it is never
    published, so its absence alone does not re-run the extraction."""
    missing = [n for n in [*DEMO_NAMES.values(), STEER_NAME] if n != DEMO_NAMES["en"] and not _on_host(reg, host, n)]
    if missing:
        console.print(f"publishing the demo's bricks ({', '.join(missing)} not in the registry yet)")
        publish_demo_bricks(reg, host)
    mine = [n for n in DEMO_NAMES.values() if _on_host(reg, host, n)]
    t = Table("brick", "tags", "neurons", "held-out own ΔPPL%", "mean other ΔPPL%")
    shown = mine + ([STEER_NAME] if _on_host(reg, host, STEER_NAME) else [])
    for name in shown:
        v = reg.resolve(name)
        m = v.meta.metrics.get("held_out", {})
        t.add_row(v.ref, ", ".join(reg.tags(name)), str(v.meta.params.get("size", "")),
                  signed(m.get("own")), signed(m.get("mean_other")))
    console.print(t)
    return mine


def publish_made_bricks(reg: Registry, host: Host, *, train: dict | None = None, grow: dict | None = None,
                        n_facts: int = DEMO_FACTS, progress: bool = True) -> list[VersionInfo]:
    """The demo's customized bricks, as `brick train` and `brick grow` publish them (same lineage):
    SKILL_NAME trained on the shipped json-extract task, FACT_NAME grown from the first `n_facts` shipped
    facts (report measured on the held-out wordings of those facts). Each is skipped if already there."""
    from bricks.ops.data import file_digest, read_examples, read_facts
    from bricks.ops.grow import SHIPPED_FACTS, SHIPPED_HELDOUT, grow_facts
    from bricks.ops.tasks import TASKS_DIR
    from bricks.ops.train import discard_checkpoint, train_lora

    published = []
    if not _on_host(reg, host, SKILL_NAME):
        data = TASKS_DIR / f"{SKILL_NAME}.jsonl"
        result = train_lora(host, read_examples(data), {**DEMO_TRAIN, **(train or {}), "progress": progress},
                            SKILL_NAME, data_digest=file_digest(data), progress=progress,
                            description="replies with one line of JSON: name, age, city, job")
        published.append(reg.publish(result.brick, parents=[], operation="train", tags=[DEMO_TAG],
                                     op_params={"data": str(data), **result.brick.meta.params}))
        discard_checkpoint(result.checkpoint)
    if not _on_host(reg, host, FACT_NAME):
        path = SHIPPED_FACTS
        facts = read_facts(path)[:n_facts]
        targets = {f.target for f in facts}
        heldout = [f for f in read_facts(SHIPPED_HELDOUT) if f.target in targets]  # other wordings, never trained
        result = grow_facts(host, facts, {**DEMO_GROW, **(grow or {}), "progress": progress}, FACT_NAME,
                            data_digest=file_digest(path), heldout=heldout, progress=progress,
                            description=f"{len(facts)} fictional facts (Velmora's capital, ...)")
        published.append(reg.publish(result.brick, parents=[], operation="grow", tags=[DEMO_TAG],
                                     op_params={"facts": str(path), "n_facts": len(facts),
                                                **result.brick.meta.params}))
    return published


def _ensure_made(reg, host) -> list[str]:
    """The demo's customized bricks, made first if missing; a table of what each learned, on held-out data."""
    missing = [n for n in (SKILL_NAME, FACT_NAME) if not _on_host(reg, host, n)]
    if missing:
        console.print(f"making {', '.join(missing)} (not in the registry yet)")
        publish_made_bricks(reg, host)
    t = Table("brick", "made by", "size", "held-out result")
    skill = reg.resolve(SKILL_NAME)
    m = skill.meta.metrics
    t.add_row(skill.ref, f"train ({skill.meta.params.get('steps')} steps, LoRA r{skill.meta.params.get('rank')})",
              f"{skill.meta.kind}", f"loss {m.get('heldout_loss_before', 0):.3f} -> "
              f"{m.get('heldout_loss_after', 0):.3f} on {m.get('n_heldout')} unseen examples")
    fact = reg.resolve(FACT_NAME)
    m = fact.meta.metrics
    t.add_row(fact.ref, f"grow ({m.get('n_facts')} facts, {m.get('steps')} steps)", f"{m.get('neurons')} neurons",
              f"recall {_pct(m.get('reliability'))} (host {_pct(m.get('reliability_plain_host'))}), unseen "
              f"wordings {_pct(m.get('generality_heldout'))}, "
              f"unrelated text PPL {signed(m.get('heldout_ppl_delta_pct'))}%")
    console.print(t)
    return [SKILL_NAME, FACT_NAME]


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def _on_host(reg, host, name: str) -> bool:
    """Whether the registry has `name` and its newest version was made on this host."""
    return name in reg.names() and reg.resolve(name).host_fingerprint == host.ref.fingerprint


ROUTED = None  # a variant that takes whatever retrieval routes the prompt to


async def _serve(reg, host, bricks: list[str], made: list[str], engine: str, max_tokens: int) -> None:
    from serving.engine import GenRequest
    from serving.service import open_service

    folder = Path(tempfile.mkdtemp(prefix="brick-demo-"))
    manifest = folder / "demo.yaml"
    slots = reg.get(reg.resolve(FACT_NAME).ref).growth_slots() if FACT_NAME in made else 0
    manifest.write_text(  # routed label bricks at gain 1: routing is shown, the answer is left as it is
        f"name: demo\nhost:\n  spec: {DEFAULT_HOST}\n  growth_slots: {slots}\nbricks:\n"
        + "".join(f"  - ref: {b}@^1\n    gain: 1.0\n" for b in bricks)
        + "".join(f"  - ref: {b}@^1\n" for b in made)
        + "routing:\n  policy: retrieval\n  top_k: 1\n  embedder: minilm+chars\n"
        + f"engine:\n  kind: {engine}\n  enforce_eager: true\n  max_model_len: 1024\n"
        + "server:\n  max_tokens: 128\n  max_prompt_tokens: 512\n")
    svc = open_service(manifest, reg)
    svc.host = host
    await svc.start()
    if svc.self_test_report:
        console.print(f"self-test vs reference: {svc.self_test_report['requests']} requests, "
                      f"max |Δlogprob| {svc.self_test_report['max_logprob_diff']:.1e}")
    try:
        routes = Table("prompt", "should reach", "routed to", "similarity", "right?")
        jobs = []  # (prompt, chat?, {variant name: [] plain | [bricks] named | ROUTED})
        cases = [(p, DEMO_NAMES[label]) for p, label in PROMPTS]
        cases += [(SKILL_PROMPT, SKILL_NAME), (FACT_PROMPT, FACT_NAME)] if made else []
        for prompt, want in cases:
            decision, _ = svc.plan(prompt)
            own = want if want in bricks + made else None
            routed = ", ".join(c.ref.split("@")[0] for c in decision.choices) or "(none)"
            best = max(decision.similarity.values(), default=float("nan"))
            routes.add_row(prompt, want, routed, f"{best:.2f}", "yes" if own and routed == own else "no")
            if own in bricks:
                jobs.append((prompt, True, {"plain host": [], f"{own} ablated (gain 0)": [{"ref": own, "gain": 0.0}]}))
            elif own:
                jobs.append((prompt, own != FACT_NAME, {"plain host": [], f"routed ({routed})": ROUTED}))
        if _on_host(reg, host, STEER_NAME):
            jobs.append((ENGLISH_PROMPT, True, {"plain host": [], f"{STEER_NAME} (staged steering)": [STEER_NAME]}))
        console.print(routes)
        console.print("(the fact is a plain completion, as it was grown; the others are chat requests)")
        ids = {p: svc.tokenize_chat([{"role": "user", "content": p}]) if chat else svc.tokenize(p)
               for p, chat, _ in jobs}
        flat = [(p, name, svc.plan(p)[1] if how is ROUTED else svc.plan(p, how)[1] if how else svc.cache.get([]))
                for p, _, variants in jobs for name, how in variants.items()]
        # every request of every assembly in one concurrent batch
        outs = await asyncio.gather(*(svc.engine.generate(GenRequest(ids[p], max_tokens), b) for p, _, b in flat))
        shown = None
        for (prompt, name, built), out in zip(flat, outs):
            if prompt != shown:
                console.print(f"\n[bold]{prompt}[/bold]")
                shown = prompt
            console.print(f"  [cyan]{name}[/cyan] {built.refs or ''}: {out.text.strip()[:150]!r}")
    finally:
        await svc.stop()
