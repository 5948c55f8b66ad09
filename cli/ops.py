"""`brick train`, `brick update`, `brick merge`, `brick grow`: operations that publish new brick versions.

Thin click layers over `bricks.ops`: each reads and checks its input before any work, runs the operation,
and publishes one new version whose lineage names the exact parent versions, the operation and its
parameters (data digest, options, seed). Nothing is published when an operation fails or is interrupted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cli.common import BrickCommand, MethodsCommand, console, emit_json, host_option, open_registry

# Named flags that are the same as --opt KEY=VALUE (None: not given, the option's default or the parent's).
_TRAIN_FLAGS = (
    click.option("--rank", type=int, default=None, help="LoRA rank (default 8)."),
    click.option("--targets", default=None, help="Target module types, comma-separated "
                 "(default q_proj,v_proj,down_proj)."),
    click.option("--layers", default=None, help="Layers to adapt, comma-separated (default: all)."),
    click.option("--steps", type=int, default=None, help="Optimizer steps (default 150)."),
    click.option("--lr", type=float, default=None, help="Peak learning rate (default 1e-3)."),
    click.option("--seed", type=int, default=None, help="Seed: LoRA init and batch order (default 0)."),
    click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE",
                 help="Any training option (batch_size, grad_accum, max_len, alpha, dropout, heldout, "
                 "locality_weight, locality_corpus, locality_chunks, locality_tokens, ...)."),
)
_PUBLISH_FLAGS = (
    click.option("--version", default=None, help="Explicit version to publish (default: the next one)."),
    click.option("--tag", "tags", multiple=True, help="Tag the new version (repeatable)."),
    click.option("--dry-run", is_flag=True, help="Run and report, publish nothing."),
    click.option("--json", "as_json", is_flag=True, help="Print the result as JSON."),
    click.option("--registry", "registry_path", type=click.Path(file_okay=False), default=None,
                 help="Registry folder (default: the brick group's --registry, $BRICK_REGISTRY, user data dir)."),
)


def _with(flags):
    def decorate(fn):
        for flag in reversed(flags):
            fn = flag(fn)
        return fn

    return decorate


def _train_options(base: dict[str, Any], opts: tuple[str, ...], **flags: Any) -> dict[str, Any]:
    from bricks.extract.options import option_pairs

    out = dict(base)
    out.update(option_pairs(opts))
    out.update({k: v for k, v in flags.items() if v is not None})
    return out


def _publish(reg, brick, *, parents: list[str], operation: str, op_params: dict, version: str | None,
             tags: tuple[str, ...], bump: str = "minor"):
    if reg is None:
        return None
    return reg.publish(brick, version=version, bump=bump, parents=parents, operation=operation,
                       op_params=op_params, tags=tags)


def _report(brick, info, as_json: bool, extra: dict | None = None) -> None:
    ref = info.ref if info is not None else f"{brick.name} (dry run, not published)"
    if as_json:
        emit_json({"published": info.ref if info else None, "name": brick.name, "kind": brick.kind,
                   "method": brick.meta.method, "size": brick.size(), "metrics": brick.meta.metrics, **(extra or {})})
        return
    console.print(f"[bold]{ref}[/bold]  kind={brick.kind}  method={brick.meta.method}  "
                  f"{brick.size()} {brick.spec.unit} in {len(brick.layers())} layers")


def _print_training(brick) -> None:
    m = brick.meta.metrics
    console.print(f"  held-out loss  {m['heldout_loss_before']:.4f} -> {m['heldout_loss_after']:.4f}  "
                  f"({m['n_heldout']} held-out examples, {m['n_train']} trained on)")
    resumed = f", resumed from step {m['resumed_from_step']}" if m.get("resumed_from_step") else ""
    console.print(f"  training       {m['steps']} steps, {m['train_tokens']} tokens, {m['tokens_per_s']:.0f} tokens/s"
                  f"{resumed}")


# --- train -----------------------------------------------------------------------------------------------
@click.command(cls=BrickCommand)
@click.option("--data", "data_path", required=True, type=click.Path(dir_okay=False),
              help='JSONL: {"text": ...} or {"messages": [...]} per line (loss on assistant turns).')
@click.option("--name", required=True, help="Brick name.")
@click.option("--description", default="", help="What the brick does (shown by brick show).")
@host_option()
@_with(_TRAIN_FLAGS)
@_with(_PUBLISH_FLAGS)
@click.pass_context
def train(ctx: click.Context, data_path: str, name: str, description: str, host_spec: str, opts: tuple[str, ...],
          version: str | None, tags: tuple[str, ...], dry_run: bool, as_json: bool, registry_path: str | None,
          **flags: Any) -> None:
    """Train a LoRA brick on the frozen host (PEFT) and publish it; an interrupted run resumes when rerun."""
    from bricks.host import load_host
    from bricks.ops.data import file_digest, read_examples
    from bricks.ops.train import discard_checkpoint, train_lora, train_options

    _check_name(name)  # before loading anything: a bad name fails in a second, not after training
    options = train_options(_train_options({}, opts, **flags))
    reg = None if dry_run else open_registry(ctx, registry_path)
    examples = read_examples(data_path)
    host = load_host(host_spec)
    result = train_lora(host, examples, options, name, data_digest=file_digest(data_path), description=description,
                        progress=not as_json)
    info = _publish(reg, result.brick, parents=[], operation="train", version=version, tags=tags,
                    op_params={"data": str(data_path), **result.brick.meta.params})
    if info is not None:
        discard_checkpoint(result.checkpoint)
    _report(result.brick, info, as_json)
    if not as_json:
        _print_training(result.brick)


def _check_name(name: str) -> None:
    from bricks.refs import check_name

    check_name(name)


# --- update ----------------------------------------------------------------------------------------------
@click.command(cls=BrickCommand)
@click.argument("ref")
@click.option("--data", "data_paths", required=True, multiple=True,
              help="New data: training JSONL for a LoRA brick; a corpus (files, folders or 'builtin') for a "
                   "neuron brick.")
@_with(_TRAIN_FLAGS)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="brick-plots", show_default=True,
              help="Folder for plots a re-extraction writes.")
@host_option(help="Host model (default: the one REF was built for).", default=None)
@_with(_PUBLISH_FLAGS)
@click.pass_context
def update(ctx: click.Context, ref: str, data_paths: tuple[str, ...], opts: tuple[str, ...], out_dir: str,
           host_spec: str | None,
           version: str | None, tags: tuple[str, ...], dry_run: bool, as_json: bool, registry_path: str | None,
           **flags: Any) -> None:
    """Make the next version of REF from new data: LoRA bricks continue training from REF's weights;
    neuron bricks are re-extracted with REF's method and parameters, reporting the overlap with REF."""
    from bricks.evaluate import host_spec_for
    from bricks.host import load_host

    reg = open_registry(ctx, registry_path)
    parent_info = reg.resolve(ref)
    parent = reg.get(parent_info.ref)
    if parent.kind == "lora":
        _update_lora(reg, parent_info, parent, data_paths, opts, host_spec, version, tags, dry_run, as_json, flags)
        return
    from bricks.corpus import load_corpus
    from bricks.extract.options import option_pairs
    from bricks.ops.update import update_neurons

    if any(v is not None for v in flags.values()):
        raise click.UsageError("--rank/--targets/--layers/--steps/--lr/--seed train LoRA bricks; "
                               f"{parent_info.ref} is a {parent.kind} brick, re-extracted with its own parameters "
                               "(--opt KEY=VALUE changes one of them)")
    corpus = load_corpus(list(data_paths))
    host = load_host(host_spec or host_spec_for([parent]))
    result = update_neurons(host, parent, corpus, overrides=option_pairs(opts), out_dir=Path(out_dir),
                            progress=not as_json)
    info = None if dry_run else _publish(
        reg, result.brick, parents=[parent_info.ref], operation="update", version=version, tags=tags,
        op_params={"data": list(data_paths), "corpus_digest": corpus.digest(), **result.comparison})
    _report(result.brick, info, as_json, {"comparison": result.comparison})
    if not as_json:
        c = result.comparison
        console.print(f"  overlap with {parent_info.ref}: Jaccard {c['jaccard']:.3f} "
                      f"({c['shared']} shared of {c['parent_size']} -> {c['size']} neurons)")
        if c.get("selectivity_before") is not None:
            console.print(f"  selectivity    {c['selectivity_before']:.2f} -> {c['selectivity_after']:.2f} "
                          "(own ΔPPL / mean other ΔPPL, held out)")


def _update_lora(reg, parent_info, parent, data_paths, opts, host_spec, version, tags, dry_run, as_json,
                 flags) -> None:
    from bricks.evaluate import host_spec_for
    from bricks.host import load_host
    from bricks.ops.data import file_digest, read_examples
    from bricks.ops.train import TrainOptions, discard_checkpoint, train_lora, train_options

    if len(data_paths) != 1:
        raise click.UsageError("a LoRA brick is updated from one training JSONL file (--data FILE)")
    if flags.get("rank") is not None or flags.get("targets") is not None or flags.get("layers") is not None:
        raise click.UsageError("an update keeps the parent's rank, targets and layers; "
                               "train a new brick to change them")
    data_path = data_paths[0]
    inherited = {k: v for k, v in parent.meta.params.items() if k in TrainOptions.model_fields}
    options = train_options(_train_options(inherited, opts, **flags))
    examples = read_examples(data_path)
    host = load_host(host_spec or host_spec_for([parent]))
    digest = file_digest(data_path)
    result = train_lora(host, examples, options, parent.name, data_digest=digest, parent=parent,
                        progress=not as_json)
    info = None if dry_run else _publish(
        reg, result.brick, parents=[parent_info.ref], operation="update", version=version, tags=tags,
        op_params={"data": str(data_path), **result.brick.meta.params})
    if info is not None:
        discard_checkpoint(result.checkpoint)
    _report(result.brick, info, as_json, {"parent": parent_info.ref})
    if not as_json:
        console.print(f"  parent         {parent_info.ref} (held-out loss 'before' is the parent's on the new data)")
        _print_training(result.brick)


# --- merge -----------------------------------------------------------------------------------------------
def _merge_methods():
    from bricks.ops.merge import MERGE_METHODS

    return MERGE_METHODS, None


@click.command(cls=MethodsCommand, methods=_merge_methods)
@click.argument("refs", nargs=-1, required=True)
@click.option("--method", required=True, help="Merge method (listed below).")
@click.option("-o", "--output", "name", required=True, help="Name of the merged brick.")
@click.option("--weights", default=None, help="One weight per REF, comma-separated (same as --opt weights=...).")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Method option (repeatable).")
@click.option("--description", default="", help="What the merged brick does.")
@_with(_PUBLISH_FLAGS)
@click.pass_context
def merge(ctx: click.Context, refs: tuple[str, ...], method: str, name: str, weights: str | None,
          opts: tuple[str, ...], description: str, version: str | None, tags: tuple[str, ...], dry_run: bool,
          as_json: bool, registry_path: str | None) -> None:
    """Merge bricks REF REF ... of one kind and host into a new brick, whose lineage lists the exact parents."""
    from bricks.extract.options import option_pairs
    from bricks.ops.merge import get_merge_method, merge_bricks

    spec = get_merge_method(method)
    raw = option_pairs(opts)
    if weights is not None:
        raw["weights"] = weights
    params = spec.parse(raw)  # checked before any brick is read
    _check_name(name)
    reg = open_registry(ctx, registry_path)
    infos = [reg.resolve(r) for r in refs]
    bricks = [reg.get(v.ref) for v in infos]
    brick = merge_bricks(bricks, spec.name, params, name, description=description)
    info = None if dry_run else _publish(
        reg, brick, parents=[v.ref for v in infos], operation="merge", version=version, tags=tags,
        op_params={"method": spec.name, **params.params()})
    _report(brick, info, as_json, {"parents": [v.ref for v in infos]})
    if not as_json:
        console.print(f"  parents        {', '.join(v.ref for v in infos)}")
        errors = {k: v for k, v in brick.meta.metrics.items() if "error" in k and not isinstance(v, dict)}
        if errors:
            console.print("  reconstruction " + ", ".join(f"{k}={v:.4g}" for k, v in errors.items()))


# --- grow ------------------------------------------------------------------------------------------------
def _growth_methods():
    from bricks.ops.grow import GROWTH_METHODS, GrowOptions

    return GROWTH_METHODS, GrowOptions


@click.command(cls=MethodsCommand, methods=_growth_methods)
@click.option("--facts", "facts_path", required=True, type=click.Path(dir_okay=False),
              help='JSONL: {"prompt": ..., "target": ..., "paraphrases": [...]} per line.')
@click.option("--heldout", "heldout_path", default=None, type=click.Path(dir_okay=False),
              help="Facts file of other wordings of the same facts, never trained on: the report's generality.")
@click.option("--name", required=True, help="Brick name.")
@click.option("--description", default="", help="What the brick knows (shown by brick show).")
@click.option("--method", default=None, help="Growth method: tpatcher (default) or lm.")
@click.option("--layers", default=None, help="Layers that get new neurons, comma-separated "
              "(default: at 60/70/80% of the depth).")
@click.option("--neurons-per-fact", type=int, default=None, help="New neurons per fact and layer (default 4).")
@click.option("--steps", type=int, default=None, help="Optimizer steps (default 150).")
@click.option("--lr", type=float, default=None, help="Adam learning rate (default 0.01).")
@click.option("--seed", type=int, default=None, help="Seed of the initial noise and the unrelated sample.")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Any method option (listed below).")
@host_option()
@_with(_PUBLISH_FLAGS)
@click.pass_context
def grow(ctx: click.Context, facts_path: str, heldout_path: str | None, name: str, description: str,
         method: str | None, host_spec: str, opts: tuple[str, ...], version: str | None, tags: tuple[str, ...],
         dry_run: bool, as_json: bool, registry_path: str | None, **flags: Any) -> None:
    """Grow new FFN neurons that hold the facts (host frozen) and publish them as a growth brick, with the
    EasyEdit-style report: reliability, generality, locality, activation margin."""
    from bricks.host import load_host
    from bricks.ops.data import file_digest, read_facts
    from bricks.ops.grow import check_facts, grow_facts, grow_options

    _check_name(name)
    raw = _train_options({}, opts, **flags)
    if method is not None:
        raw["method"] = method
    options = grow_options(raw)  # every option checked before anything is read or loaded
    facts = read_facts(facts_path)
    check_facts(facts)
    heldout = read_facts(heldout_path) if heldout_path else None
    reg = None if dry_run else open_registry(ctx, registry_path)
    host = load_host(host_spec)
    result = grow_facts(host, facts, options, name, data_digest=file_digest(facts_path), heldout=heldout,
                        description=description, progress=not as_json)
    info = _publish(reg, result.brick, parents=[], operation="grow", version=version, tags=tags,
                    op_params={"facts": str(facts_path), **result.brick.meta.params})
    _report(result.brick, info, as_json)
    if not as_json:
        _print_growth(result.report)


def _print_growth(m: dict[str, Any]) -> None:
    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    gen = m.get("generality_paraphrases", m.get("generality_paraphrases_trained"))
    trained = " (trained on)" if "generality_paraphrases_trained" in m else ""
    console.print(f"  reliability    {pct(m['reliability'])} of {m['n_facts']} facts recalled "
                  f"(plain host {pct(m['reliability_plain_host'])})")
    line = f"  generality     paraphrases {pct(gen)}{trained}"
    if "generality_heldout" in m:
        line += f", held-out wordings {pct(m['generality_heldout'])} of {m['n_heldout_wordings']}"
    console.print(line)
    console.print(f"  locality       {pct(m['locality_token_agreement'])} token agreement with the plain host; "
                  f"held-out PPL {m['heldout_ppl_delta_pct']:+.2f}% (worst label "
                  f"{m['heldout_ppl_delta_pct_max_abs']:.2f}%)")
    console.print(f"  activation     {m['activation_edit_mean']:.2f} on the facts vs "
                  f"{m['activation_unrelated_max_mean']:.2f} max on unrelated text; margin median "
                  f"{m['activation_margin_median']:.2f}, positive for {pct(m['activation_margin_positive'])} of the "
                  "neurons")
    console.print(f"  training       {m['steps']} steps in {m['train_seconds']:.0f} s")
