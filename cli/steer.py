"""`brick steer REF --target fr`: publish a servable steering brick from a label brick.

A thin layer over `bricks.steer.publish`: measure candidate settings on replies to dominant-language
prompts (or take the measured default with --no-measure), build the brick (staged: one map while the prompt
is read, another at generated tokens; the gain table serves both per request), publish it with the label
brick as its parent and the measured table in its metrics.
"""

from __future__ import annotations

import json

import click

from cli.common import BrickCommand, console, open_registry, signed


@click.command("steer", cls=BrickCommand)
@click.argument("ref")
@click.option("--target", required=True, help="Label to steer toward (the brick must store its mean), e.g. fr.")
@click.option("--dominant", default="en", show_default=True, help="Language steered away from: prompts, PPL cost.")
@click.option("--name", default=None, help="Name of the published brick (default: REF's name + '-steer-TARGET').")
@click.option("--settings", default=None,
              help="Candidates to measure, 'FORM:K/FORM:K,...' (prompt / generation variant; FORM is mean or diff). "
                   "Default: the measured best (mean:2/diff:0.3) and its neighbours.")
@click.option("--measure/--no-measure", default=True, show_default=True,
              help="Measure the candidates and keep the best; --no-measure publishes the first candidate as is.")
@click.option("--data", multiple=True, help="Corpus with the dominant language, for the PPL cost (default builtin).")
@click.option("--split", type=click.Choice(["held-out", "all"]), default="held-out", show_default=True,
              help="held-out: only the documents the brick's extraction held out (by its recorded split).")
@click.option("--max-new-tokens", type=int, default=48, show_default=True)
@click.option("--host", "host_spec", default=None, help="Host model (default: the one the brick names).")
@click.option("--tag", "tags", multiple=True, help="Tag the published version (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--registry", "registry_path", type=click.Path(file_okay=False), default=None)
@click.pass_context
def steer_cmd(ctx: click.Context, ref: str, target: str, dominant: str, name: str | None, settings: str | None,
              measure: bool, data: tuple[str, ...], split: str, max_new_tokens: int, host_spec: str | None,
              tags: tuple[str, ...], as_json: bool, registry_path: str | None) -> None:
    """Publish a steering brick toward TARGET from the label brick REF (staged, measured, servable)."""
    from bricks.steer.publish import DEFAULT_CANDIDATES, choose_setting, steering_brick
    from bricks.steer.sweep import parse_staged

    reg = open_registry(ctx, registry_path)
    parent = reg.resolve(ref)
    brick = reg.get(parent.ref)
    candidates = settings or DEFAULT_CANDIDATES
    first = parse_staged(candidates)
    steering_brick(brick, target, first[0], dominant)  # a label the brick lacks fails here, before any work
    metrics: dict = {}
    if measure:
        from bricks.corpus import load_corpus
        from bricks.evaluate import evaluation_corpus, host_spec_for
        from bricks.host import load_host
        from bricks.steer import word_vocab

        host = load_host(host_spec or host_spec_for([brick]))
        full = load_corpus(list(data) or ["builtin"])
        corpus = evaluation_corpus([brick], full, host.tokenizer, held_out_only=split == "held-out")
        if dominant not in corpus.labels():
            from bricks.errors import InvalidInputError

            raise InvalidInputError(f"the data has no held-out {dominant!r} text for the perplexity cost",
                                    "pass --data with that label, or --dominant another label")
        vocab = word_vocab(full.by_label(target)) | word_vocab(full.by_label(dominant))
        choice = choose_setting(host, brick, target, corpus.by_label(dominant), candidates, dominant,
                                max_new_tokens=max_new_tokens, vocab=vocab, progress=not as_json)
        setting = choice.setting
        metrics = {"steering": {"chosen": choice.label, "why": choice.reason,
                                "measured": [{k: v for k, v in row.items() if k != "sample"} for row in choice.table]}}
    else:
        setting = first[0]
    out = steering_brick(brick, target, setting, dominant, name)
    out.meta.metrics.update(metrics)
    info = reg.publish(out, parents=[parent.ref], operation="steer", op_params=out.meta.params["steering"],
                       tags=list(tags))
    if as_json:
        click.echo(json.dumps({"published": info.ref, "steering": out.meta.params["steering"], **metrics}, indent=2))
        return
    if measure:
        _print_table(metrics["steering"], target, dominant)
    console.print(f"published [bold]{info.ref}[/bold] (parent {parent.ref}): {out.meta.description}")


def _print_table(steering: dict, target: str, dominant: str) -> None:
    from rich.table import Table

    t = Table(title=f"steering toward {target}: chosen {steering['chosen']}")
    for col in ("setting", f"{target} words %", "repeat3", f"{dominant} PPL x", "gen PPL"):
        t.add_column(col)
    for row in steering["measured"]:
        t.add_row(row["setting"], f"{100 * row['target_share']:.0f}", f"{row['repetition']:.2f}",
                  signed(100 * (row["dominant_ppl_ratio"] - 1)) + "%", f"{row['gen_ppl']:.1f}")
    console.print(t)
    console.print(steering["why"])
