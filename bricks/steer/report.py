"""A sweep's results as a rich table."""

from __future__ import annotations

import math

from bricks.steer.sweep import SteerResult


def render_steer_table(results: list[SteerResult], title: str = "steering"):
    from rich.table import Table

    t = Table(title=title)
    for col in ("prompt", "generated", "layers", "target %", "dominant %", "known %", "repeat3", "gen PPL",
                "dom PPL x (gen)", "dom PPL x (prompt)", "sample"):
        t.add_column(col, overflow="fold")
    for r in results:
        t.add_row(r.prompt, r.generated, r.layers, f"{100 * r.target_share:.0f}", f"{100 * r.dominant_share:.0f}",
                  _g(100 * r.known_words, ".0f"), f"{r.repetition:.2f}", _g(r.gen_ppl),
                  f"{r.dominant_ppl_ratio:.2f}", f"{r.prompt_variant_ppl_ratio:.2f}", r.sample[:60].replace("\n", " "))
    return t


def _g(v: float, spec: str = ".1f") -> str:
    return "-" if math.isnan(v) else format(v, spec)
