"""`brick extract`, `brick eval` and `brick audit`: find bricks in a host and prove what they do.

Thin click layers over `bricks.extract`, `bricks.evaluate`, `bricks.steer` and `bricks.audit`. The registry
is this command's `--registry`, else the root group's `--registry`, else $BRICK_REGISTRY / the user data dir.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import click
from rich.table import Table

from bricks.errors import InvalidInputError
from cli.common import BrickCommand, console, host_option, open_registry, signed


def _load_data(data: tuple[str, ...]):
    from bricks.corpus import load_corpus

    return load_corpus(list(data) or ["builtin"])


# --- extract ------------------------------------------------------------------------------------------
@click.command("extract", cls=BrickCommand)
@click.argument("method")
@host_option(help="Built-in host name or a local HF model folder.")
@click.option("--data", multiple=True, help="Corpus: JSONL/text files or folders, or 'builtin' (default).")
@click.option("--name", required=True, help="Brick name (label bricks are named NAME-LABEL).")
@click.option("--version", default=None, help="Explicit version to publish (default: next minor).")
@click.option("--held-out", type=float, default=None,
              help="Fraction of documents held out to check each candidate (method default: 0.2).")
@click.option("--force", is_flag=True, help="Publish candidates the held-out check calls general.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable).")
@click.option("--dry-run", is_flag=True, help="Extract and report, publish nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--registry", "registry_path", type=click.Path(file_okay=False), default=None,
              help="Registry folder (default: the brick group's --registry, $BRICK_REGISTRY, user data dir).")
@click.pass_context
def extract_cmd(ctx: click.Context, method: str, host_spec: str, data: tuple[str, ...], name: str,
                version: str | None, held_out: float | None, force: bool, opts: tuple[str, ...], dry_run: bool,
                as_json: bool, registry_path: str | None) -> None:
    """Extract bricks with METHOD (emergent, clusters, rare-token...) and publish them."""
    from bricks.extract import get_extractor
    from bricks.extract.options import option_pairs
    from bricks.host import load_host

    spec = get_extractor(method)
    options = option_pairs(opts)
    if held_out is not None:
        if not 0.0 <= held_out < 1.0:
            raise InvalidInputError(f"--held-out {held_out} is not a fraction in [0, 1)", "use e.g. --held-out 0.2")
        options["held_out"] = held_out
    if force:
        options["force"] = True
    spec.parse(options)  # a bad option fails before the registry, the corpus and the host are opened
    reg = None if dry_run else open_registry(ctx, registry_path)  # resolve early: a bad path fails before work
    corpus = _load_data(data)
    host = load_host(host_spec)
    result = spec.run(host, corpus, name=name, **options)
    published = [] if reg is None else [reg.publish(b, version=version) for b in result.bricks]
    _print_extraction(result, published, as_json)


def _print_extraction(result, published, as_json: bool) -> None:
    refs = [v.ref for v in published]
    if as_json:
        click.echo(json.dumps({"published": refs, "skipped": result.skipped, "report": result.report,
                               "artifacts": {k: str(v) for k, v in result.artifacts.items()}}, indent=2, default=str))
        return
    t = Table("brick", "neurons", "layers", "own ΔPPL%", "mean other ΔPPL%", "status")
    for i, b in enumerate(result.bricks):
        m = b.meta.metrics.get("held_out", {})
        t.add_row(refs[i] if i < len(refs) else b.name, str(b.size()), str(len(b.neurons)),
                  signed(m.get("own")), signed(m.get("mean_other")), "published" if i < len(refs) else "dry run")
    for cand, why in result.skipped.items():
        t.add_row(cand, "", "", "", "", f"[yellow]not published[/yellow]: {why}")
    console.print(t)
    for k, v in result.artifacts.items():
        console.print(f"  {k}: {v}")


# --- eval ------------------------------------------------------------------------------------------------
@click.command("eval", cls=BrickCommand)
@click.argument("refs", nargs=-1, required=True)
@click.option("--data", multiple=True, help="Evaluation corpus (default 'builtin').")
@click.option("--split", type=click.Choice(["held-out", "all"]), default="held-out", show_default=True,
              help="held-out: only the documents each brick's extraction held out (by its recorded split).")
@click.option("--random-sets", type=int, default=5, show_default=True, help="Random same-shape neuron sets.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--heatmap", type=click.Path(dir_okay=False), default=None, help="Write a ΔPPL heatmap PNG.")
@click.option("--steer", is_flag=True, help="Measure steering variants instead of ablation selectivity.")
@click.option("--target", default=None, help="Steering target label (e.g. fr).")
@click.option("--dominant", default="en", show_default=True, help="Dominant language (prompts, PPL cost).")
@click.option("--k", "ks", default="0.5,1,2,3", show_default=True, help="Steering strengths, comma-separated.")
@click.option("--forms", default="diff,mean", show_default=True, help="Steering forms: diff, mean.")
@click.option("--positions", default="all,generated,prompt", show_default=True,
              help="Where the variant acts: all, generated (decode steps only), prompt (prefill only).")
@click.option("--staged", "split_steer", default="mean:2/diff:0.3", show_default=True,
              help="Extra settings: a variant while the prompt is read / another at generated tokens.")
@click.option("--layers", "layer_mode", type=click.Choice(["all", "halves"]), default="all", show_default=True,
              help="Steer with all of a brick's layers, or also with its lower and upper half separately "
                   "(grid and staged settings alike).")
@click.option("--max-new-tokens", type=int, default=48, show_default=True)
@click.option("--host", "host_spec", default=None, help="Host model (default: the one the bricks name).")
@click.option("--registry", "registry_path", type=click.Path(file_okay=False), default=None)
@click.pass_context
def eval_cmd(ctx: click.Context, refs: tuple[str, ...], data: tuple[str, ...], split: str, random_sets: int,
             as_json: bool, heatmap: str | None, steer: bool, target: str | None, dominant: str, ks: str, forms: str,
             positions: str, split_steer: str, layer_mode: str, max_new_tokens: int, host_spec: str | None,
             registry_path: str | None) -> None:
    """Evaluate bricks REF...: ΔPPL per label vs random neuron sets, or (--steer) steering variants."""
    from bricks.host import load_host

    if random_sets < 0:
        raise InvalidInputError(f"--random-sets {random_sets} is negative", "use 0 or more (5 for a report)")
    reg = open_registry(ctx, registry_path)
    bricks = [reg.get(r) for r in refs]
    host = load_host(host_spec or _host_spec(bricks))
    full = _load_data(data)
    corpus = _eval_corpus(bricks, full, split, host.tokenizer)
    if steer:
        from bricks.steer import word_vocab

        vocab = word_vocab(full.by_label(target or "")) | word_vocab(full.by_label(dominant))
        opts = {"forms": forms, "ks": ks, "positions": positions, "layer_mode": layer_mode, "split": split_steer,
                "max_new_tokens": max_new_tokens}
        _run_steer(host, bricks, corpus, target, dominant, opts, vocab, as_json)
        return
    from bricks.evaluate import heatmap_png, render_table, selectivity_report

    report = selectivity_report(host, corpus, bricks, random_sets=random_sets, progress=not as_json)
    if heatmap:
        heatmap_png(report, heatmap)
    if as_json:
        click.echo(report.to_json())
        return
    console.print(render_table(report))
    if heatmap:
        console.print(f"heatmap: {heatmap}")


def _host_spec(bricks) -> str:
    from bricks.host import BUILTIN_HOSTS, DEFAULT_HOST

    names = {b.meta.host.fingerprint: b.meta.host.name for b in bricks}
    if len(names) > 1:
        raise InvalidInputError("the bricks were built for different hosts", "evaluate bricks of one host at a time")
    name = next(iter(names.values())) or DEFAULT_HOST
    if name not in BUILTIN_HOSTS and not Path(name).is_dir():
        raise InvalidInputError(f"the bricks' host {name!r} is not a built-in host or a folder here",
                                "run from the folder holding the host model, or re-extract on a built-in host")
    return name


def _eval_corpus(bricks, corpus, split: str, tokenizer):
    """The held-out part of `corpus` by the split the first brick recorded (then chunked like profiling)."""
    from bricks.profile import chunk_corpus

    if split == "held-out":
        params = bricks[0].meta.params
        frac, seed = params.get("held_out"), params.get("split_seed", 0)
        if not frac:
            raise InvalidInputError(f"brick {bricks[0].name!r} records no held-out split",
                                    "pass --split all with evaluation data the extractor did not see")
        corpus = corpus.split(float(frac), seed=int(seed))[1]
        if not corpus:
            raise InvalidInputError("the held-out split of the data is empty", "pass more data or --split all")
    return chunk_corpus(corpus, tokenizer, int(bricks[0].meta.params.get("max_len", 256)))


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"{what} {text!r} is not a comma-separated list of numbers",
                                f"write e.g. --{what} 0.5,1,2") from None


def _choices(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    got = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in got if x not in allowed]
    if bad or not got:
        raise InvalidInputError(f"--{what} {text!r}: unknown {bad or 'empty'}", f"use some of: {', '.join(allowed)}")
    return got


def _split_settings(text: str) -> list:
    """`--staged mean:2/diff:0.3,...`: a prompt-time variant / a generation-time variant per setting."""
    from bricks.steer import FORMS, Setting

    out = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        try:
            parts = [p.split(":") for p in item.split("/")]
            (pf, pk), (gf, gk) = parts
            if pf not in FORMS or gf not in FORMS:
                raise ValueError
            out.append(Setting((pf, float(pk)), (gf, float(gk))))
        except ValueError:
            raise InvalidInputError(f"--staged {item!r} is not FORM:K/FORM:K",
                                    "write e.g. --staged mean:2/diff:0.3 (prompt / generation variant)") from None
    return out


def _run_steer(host, bricks, corpus, target, dominant, opts: dict, vocab, as_json) -> None:
    from bricks.steer import FORMS, POSITIONS, grid, layer_sets, render_steer_table, steer_sweep

    if not target:
        raise InvalidInputError("--steer needs --target", "name the label to steer toward, e.g. --target fr")
    if dominant not in corpus.labels():
        raise InvalidInputError(f"the evaluation data has no {dominant!r} text for the perplexity cost",
                                "pass --data with that label or set --dominant")
    forms = _choices(opts["forms"], FORMS, "forms")
    positions = _choices(opts["positions"], POSITIONS, "positions")
    results = {}
    for brick in bricks:
        layers = layer_sets(brick) if opts["layer_mode"] == "halves" else {"all": None}
        staged = [replace(s, layers=lname) for s in _split_settings(opts["split"]) for lname in layers]
        settings = grid(forms, _floats(opts["ks"], "k"), positions, tuple(layers)) + staged
        results[brick.name] = steer_sweep(host, brick, target, corpus.by_label(dominant), settings, layers=layers,
                                          dominant=dominant, max_new_tokens=opts["max_new_tokens"], vocab=vocab,
                                          progress=not as_json)
    if as_json:
        click.echo(json.dumps({n: [r.to_dict() for r in rs] for n, rs in results.items()}, indent=2))
        return
    for name, rs in results.items():
        console.print(render_steer_table(rs, title=f"steering {name} toward {target}"))


# --- audit ---------------------------------------------------------------------------------------------
@click.command("audit", cls=BrickCommand)
@host_option(help="Built-in host name or a local HF model folder.")
@click.option("--data", multiple=True, help="Labelled corpus: JSONL/text files or folders, or 'builtin' (default).")
@click.option("--top-pct", type=float, default=0.5, show_default=True, help="Brick size, % of all FFN neurons.")
@click.option("--test-frac", type=float, default=0.2, show_default=True, help="Test split the extractor never sees.")
@click.option("--eval-tokens", type=int, default=1000, show_default=True,
              help="Test tokens per label (0: the whole test split).")
@click.option("--random-sets", type=int, default=5, show_default=True, help="Random same-shape sets per brick.")
@click.option("--dominant", default="en", show_default=True, help="Dominant language (general-check controls).")
@click.option("--json", "as_json", is_flag=True, help="Print the audit as JSON.")
@click.option("--heatmap", type=click.Path(dir_okay=False), default=None, help="Write a ΔPPL heatmap PNG.")
def audit_cmd(host_spec: str, data: tuple[str, ...], top_pct: float, test_frac: float, eval_tokens: int,
              random_sets: int, dominant: str, as_json: bool, heatmap: str | None) -> None:
    """Audit emergent extraction on a corpus: selectivity on unseen text, stability, general check.

    Publishes nothing: it re-runs `brick extract emergent` under a test split and reports whether its
    bricks are specific (vs other labels and random neuron sets) and stable (two disjoint halves)."""
    from bricks.audit import audit_emergent
    from bricks.evaluate import heatmap_png, render_table
    from bricks.host import load_host

    if random_sets < 0 or eval_tokens < 0:
        raise InvalidInputError("--random-sets and --eval-tokens must be >= 0", "use e.g. --random-sets 5")
    if not 0 < test_frac < 1:
        raise InvalidInputError(f"--test-frac {test_frac} is not a fraction in (0, 1)", "use e.g. --test-frac 0.2")
    corpus = _load_data(data)
    host = load_host(host_spec)
    audit = audit_emergent(host, corpus, top_pct=top_pct, test_frac=test_frac, eval_tokens=eval_tokens,
                           random_sets=random_sets, dominant=dominant, progress=not as_json)
    if heatmap:
        heatmap_png(audit.report, heatmap)
    if as_json:
        click.echo(json.dumps(audit.to_dict(), indent=2, default=str))
        return
    console.print(render_table(audit.report))
    t = Table("label", "Jaccard (two halves)", "tokens per half", "extractor's verdict")
    verdicts = audit.verdicts()
    for lab, jac in audit.stability.items():
        t.add_row(lab, f"{jac:.3f}", " / ".join(map(str, audit.half_tokens[lab])), verdicts.get(lab, "-"))
    console.print(t)
    for name, c in audit.controls.items():
        console.print(f"control {name} ({c['size']} neurons): {c['verdict']}")
    if heatmap:
        console.print(f"heatmap: {heatmap}")
