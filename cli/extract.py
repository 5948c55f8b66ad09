"""`brick extract`, `brick eval` and `brick audit`: find bricks in a host and prove what they do.

Thin click layers over `bricks.extract`, `bricks.evaluate`, `bricks.steer` and `bricks.audit`. The registry
is this command's `--registry`, else the root group's `--registry`, else $BRICK_REGISTRY / the user data dir.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from bricks.constants import DEFAULT_HOST
from bricks.errors import BrickError
from cli.common import BrickCommand, BrickGroup, console, emit_json, host_option, open_registry, signed


def _load_data(data: tuple[str, ...]):
    from bricks.corpus import load_corpus

    return load_corpus(list(data) or ["builtin"])


# --- extract ------------------------------------------------------------------------------------------
class ExtractGroup(BrickGroup):
    """One subcommand per registered extractor, built from the registry when asked for; a method may be
    spelt with '-' or by an alias (`rare-token` is `rare_tokens`)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from bricks.extract import extractors

        return sorted(extractors())

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from bricks.extract import get_extractor, resolve_name

        return _method_command(get_extractor(name)) if resolve_name(name) else None

    def resolve_command(self, ctx: click.Context, args: list[str]):
        from bricks.extract import get_extractor

        spec = get_extractor(args[0])  # an unknown method is a clean error listing the real names
        return spec.name, _method_command(spec), args[1:]


@click.group("extract", cls=ExtractGroup)
def extract_cmd() -> None:
    """Extract bricks with a method and publish them: `brick extract METHOD --help` lists its options."""


def _method_command(spec) -> click.Command:
    fields = spec.options.model_fields
    params = [
        click.Option(["--host", "host_spec"], default=DEFAULT_HOST, show_default=True,
                     help="Built-in host name or a local HF model folder."),
        click.Option(["--data"], multiple=True, help="Corpus: JSONL/text files or folders, or 'builtin' (default)."),
        click.Option(["--name"], required=True, help="Brick name (label bricks are named NAME-LABEL)."),
        click.Option(["--version"], default=None, help="Explicit version to publish (default: next minor)."),
        click.Option(["--opt", "opts"], multiple=True, metavar="KEY=VALUE",
                     help="Method option (repeatable; listed below)."),
        click.Option(["--out", "out_dir"], type=click.Path(file_okay=False), default="brick-plots", show_default=True,
                     help="Folder for the plots the method writes (their paths are printed)."),
        click.Option(["--dry-run"], is_flag=True, help="Extract and report, publish nothing."),
        click.Option(["--json", "as_json"], is_flag=True, help="Print the report as JSON."),
        click.Option(["--registry", "registry_path"], type=click.Path(file_okay=False), default=None,
                     help="Registry folder (default: the brick group's --registry, $BRICK_REGISTRY, user data dir)."),
    ]
    if "held_out" in fields:
        params.append(click.Option(["--held-out"], type=float, default=None,
                                   help=f"Same as --opt held_out=F (default {fields['held_out'].default})."))
    if "force" in fields:
        params.append(click.Option(["--force"], is_flag=True, help="Same as --opt force=true."))
    if "budget" in fields:
        params.append(click.Option(["--budget"], type=float, default=None,
                                   help=f"Same as --opt budget=F (default {fields['budget'].default})."))

    @click.pass_context
    def run(ctx: click.Context, opts: tuple[str, ...], held_out: float | None = None, force: bool = False,
            budget: float | None = None, **kw: Any) -> None:
        from bricks.extract.options import option_pairs

        options = option_pairs(opts)
        if held_out is not None:
            options["held_out"] = held_out
        if budget is not None:
            options["budget"] = budget
        if force:
            options["force"] = True
        _extract(ctx, spec, spec.parse(options), **kw)

    help_text = f"{spec.summary}\n\nPaper: {spec.reference_url}"
    return BrickCommand(spec.name, callback=run, params=params, help=help_text, epilog=_options_help(spec.options),
                        short_help=spec.summary)


def _options_help(model) -> str:
    """The method's options for --help: name, type and default, description (\\b keeps click from rewrapping)."""
    from bricks.extract.options import describe_option, option_names

    lines = ["Method options (--opt KEY=VALUE):", "", "\b"]
    for key in option_names(model):
        lines.append(f"  {key}")
        lines.extend(textwrap.wrap(describe_option(model, key), width=96, initial_indent="      ",
                                   subsequent_indent="      "))
    return "\n".join(lines)


def _extract(ctx: click.Context, spec, options, host_spec: str, data: tuple[str, ...], name: str,
             version: str | None, out_dir: str, dry_run: bool, as_json: bool, registry_path: str | None) -> None:
    from bricks.host import load_host

    reg = None if dry_run else open_registry(ctx, registry_path)  # resolve early: a bad path fails before work
    corpus = _load_data(data)
    host = load_host(host_spec)
    result = spec.fn(host, corpus, options, name=name, out_dir=Path(out_dir))
    published = [] if reg is None else [reg.publish(b, version=version) for b in result.bricks]
    _print_extraction(result, published, as_json)


def _print_extraction(result, published, as_json: bool) -> None:
    refs = [v.ref for v in published]
    if as_json:
        click.echo(json.dumps({"published": refs, "skipped": result.skipped, "report": result.report,
                               "evidence": result.evidence,
                               "artifacts": {k: str(v) for k, v in result.artifacts.items()}}, indent=2, default=str))
        return
    columns = list(dict.fromkeys(k for row in result.evidence.values() for k in row))
    t = Table("brick", "neurons", "layers", *columns, "status")
    for i, b in enumerate(result.bricks):
        evidence = result.evidence.get(b.name, {})
        t.add_row(refs[i] if i < len(refs) else b.name, str(b.size()), str(len(b.neurons)),
                  *(_figure(c, evidence.get(c)) for c in columns), "published" if i < len(refs) else "dry run")
    for cand, why in result.skipped.items():
        evidence = result.evidence.get(cand, {})
        t.add_row(cand, "", "", *(_figure(c, evidence.get(c)) for c in columns),
                  f"[yellow]not published[/yellow]: {why}")
    console.print(t)
    for path in result.artifacts.values():
        console.print(f"plot written: {path}")


def _figure(column: str, value: float | None) -> str:
    """A percentage as +12.3, any other figure to 3 significant digits."""
    if value is None:
        return "-"
    return signed(value) if column.endswith("%") else f"{value:.3g}"


# --- eval ------------------------------------------------------------------------------------------------
class EvalCommand(BrickCommand):
    """`brick eval`: its --help ends with every metric, its paper and its options (read when --help asks:
    importing the metrics loads torch)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from bricks.analysis.metrics import metrics
        from bricks.extract.options import describe_option, option_names

        lines = ["Metrics (--metric NAME; options with --opt KEY=VALUE):", "", "\b"]
        for spec in metrics().values():
            lines.append(f"  {spec.name}: {spec.summary}  ({spec.reference_url})")
            lines += [f"      {key}: {describe_option(spec.options, key)}"[:160]
                      for key in option_names(spec.options) if key != "progress"]
        self.epilog = "\n".join(lines)
        super().format_epilog(ctx, formatter)


@click.command("eval", cls=EvalCommand)
@click.argument("refs", nargs=-1)
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
@click.option("--host", "host_spec", default=None, help="Host model (default: the one the bricks name; with "
              "--metric and no REF, the built-in host). Any host spec: a built-in name or an HF folder.")
@click.option("--metric", "metric_name", default=None,
              help="Measure a metric of the host with the assembly REF[:GAIN]... applied (listed below).")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Metric option (repeatable; listed below).")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="Metric plot PNG (default: brick-plots/METRIC.png).")
@click.option("--registry", "registry_path", type=click.Path(file_okay=False), default=None)
@click.pass_context
def eval_cmd(ctx: click.Context, refs: tuple[str, ...], data: tuple[str, ...], split: str, random_sets: int,
             as_json: bool, heatmap: str | None, steer: bool, target: str | None, dominant: str, ks: str, forms: str,
             positions: str, split_steer: str, layer_mode: str, max_new_tokens: int, host_spec: str | None,
             metric_name: str | None, opts: tuple[str, ...], plot_path: str | None, registry_path: str | None) -> None:
    """Evaluate bricks REF...: ΔPPL per label vs random neuron sets, or (--steer) steering variants, or
    (--metric NAME) a metric of the host with the assembly REF[:GAIN]... applied (no REF: the host alone)."""
    from bricks.evaluate import evaluation_corpus, host_spec_for
    from bricks.host import load_host

    if metric_name is not None:
        _eval_metric(ctx, metric_name, refs, opts, host_spec, plot_path, as_json, registry_path)
        return
    if opts or plot_path:
        raise click.UsageError("--opt and --plot go with --metric NAME")
    if not refs:
        raise click.UsageError("Missing argument 'REFS...'.")
    reg = open_registry(ctx, registry_path)
    bricks = [reg.get(r) for r in refs]
    host = load_host(host_spec or host_spec_for(bricks))
    full = _load_data(data)
    corpus = evaluation_corpus(bricks, full, host.tokenizer, held_out_only=split == "held-out")
    if steer:
        from bricks.steer import SteerPlan, render_steer_table, steer_bricks, word_vocab

        plan = SteerPlan.from_text(forms, ks, positions, split_steer, layer_mode, max_new_tokens)
        vocab = word_vocab(full.by_label(target or "")) | word_vocab(full.by_label(dominant))
        results = steer_bricks(host, bricks, corpus, target, dominant, plan, vocab, progress=not as_json)
        if as_json:
            click.echo(json.dumps({n: [r.to_dict() for r in rs] for n, rs in results.items()}, indent=2))
            return
        for name, rs in results.items():
            console.print(render_steer_table(rs, title=f"steering {name} toward {target}"))
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


def _eval_metric(ctx: click.Context, name: str, refs: tuple[str, ...], opts: tuple[str, ...],
                 host_spec: str | None, plot_path: str | None, as_json: bool, registry_path: str | None) -> None:
    """`brick eval --metric NAME [REF[:GAIN]...]`: options are checked before any brick or host is read."""
    from bricks.analysis.metrics import get_metric
    from bricks.compose import BrickUse
    from bricks.evaluate import host_spec_for
    from bricks.extract.options import option_pairs
    from bricks.host import load_host

    spec = get_metric(name)
    raw = option_pairs(opts)
    raw.setdefault("progress", not as_json)
    options = spec.parse(raw)
    pairs = [_use_arg(text) for text in refs]
    reg = open_registry(ctx, registry_path) if pairs else None
    uses = [BrickUse(reg.get(ref), gain=gain) for ref, gain in pairs]
    host = load_host(host_spec or (host_spec_for([u.brick for u in uses]) if uses else DEFAULT_HOST))
    plot = Path(plot_path or f"brick-plots/{spec.name}.png")
    result = spec.fn(host, uses, options, plot=plot)
    if as_json:
        emit_json({**result.report, "figures": {k: str(v) for k, v in result.figures.items()}})
        return
    _print_metric(result.report)
    for path in result.figures.values():
        console.print(f"plot written: {path}")


def _use_arg(text: str) -> tuple[str, float | None]:
    """REF or REF:GAIN (the gain the assembly gives that brick, e.g. lang-fr:4 amplifies it x4)."""
    ref, _, gain = text.partition(":")
    if not gain:
        return ref, None
    try:
        return ref, float(gain)
    except ValueError:
        raise BrickError(f"brick {text!r}: gain {gain!r} is not a number", "write REF or REF:GAIN, e.g. lang-fr:4") \
            from None


def _print_metric(report: dict[str, Any]) -> None:
    if report["metric"] == "stability":
        runs = [r for r in ("host", "assembly") if r in report]
        t = Table("layer", *(f"lambda {r}" for r in runs), title=f"stability of {report['host_name']} "
                  f"(eps {report['eps']:g}, {report['texts']} texts, {report['tokens']} tokens; < 0 contracts)")
        for i, layer in enumerate(report["layers"]):
            t.add_row(str(layer), *(f"{report[r]['lambda'][i]:+.4f}" for r in runs))
        t.add_row("sum", *(f"{report[r]['sum']:+.4f}" for r in runs))
        console.print(t)
    else:
        title = f"NeuroMFA of {report['host_name']} ({report['samplings']} samplings x {report['nodes']} nodes)"
        t = Table("network", "alpha_0 [95% CI]", "width [95% CI]", "D_0", "seconds", title=title)
        for run in ("host", "random_init"):
            if run in report:
                r = report[run]
                t.add_row(run, _ci(r["alpha_0"]), _ci(r["width"]), f"{r['d_0']:.3f}", f"{r['seconds']:.1f}")
        console.print(t)
        if "emergence" in report:
            console.print(f"degree of emergence vs random init: {_ci(report['emergence'])}")
    console.print(f"[dim]{report.get('note', '')}[/dim]")


def _ci(value: dict[str, Any]) -> str:
    lo, hi = value["ci95"]
    return f"{value['mean']:.3f} [{lo:.3f}, {hi:.3f}]"


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
