"""`brick compress`: a smaller host derived from this one by low-rank compression (NGC, SVD, ASVD).

A thin layer over `bricks.ops.compress`: every input is checked before the host is loaded (method,
options, the output folder, the calibration data), the derived host is written into a temporary folder
beside OUT and renamed into place, so OUT is complete or absent.
"""

from __future__ import annotations

from typing import Any

import click

from cli.common import MethodsCommand, console, emit_json, host_option


def _compression_methods():
    from bricks.ops.compress import COMPRESSION_METHODS, CompressOptions

    return COMPRESSION_METHODS, CompressOptions


@click.command("compress", cls=MethodsCommand, methods=_compression_methods)
@click.option("--method", default="ngc", show_default=True, help="Compression method (listed below).")
@click.option("--keep", type=float, default=None, help="Fraction of the compressed matrices' parameters kept "
              "(default 0.8: 20% fewer).")
@click.option("--calib", default="builtin", show_default=True,
              help="Calibration text: builtin (the shipped corpora's training split), or JSONL / text files.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="New folder for the compressed host (must not exist).")
@click.option("--opt", "opts", multiple=True, metavar="KEY=VALUE", help="Any method option (listed below).")
@host_option()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def compress_cmd(method: str, keep: float | None, calib: str, out_dir: str, opts: tuple[str, ...], host_spec: str,
                 as_json: bool) -> None:
    """Compress the host's gate/up and q/k/v matrices to low rank and write the result as a new host
    (an HF folder with a lineage file): FFN neuron identities are kept, so the parent's neurons bricks
    still run on it. The folder holds the dense products (what stock engines load) and the factors."""
    from bricks.extract.options import option_pairs
    from bricks.host import load_host, resolve_host_path
    from bricks.ops import compress as ops

    raw: dict[str, Any] = {**option_pairs(opts), "method": method}
    if keep is not None:
        raw["keep"] = keep
    options = ops.compress_options(raw)
    out = ops.check_out_dir(out_dir, resolve_host_path(host_spec))
    ops.calibration_corpus(calib)  # a missing file fails here, before the host loads
    host = load_host(host_spec)
    ids, calib_info = ops.calibration(host, calib, options)

    grams = ops.input_grams(host, ids, options.groups, options.layers, progress=not as_json)
    result = ops.compress_host(host, grams, options, out, calibration=calib_info, progress=not as_json)
    if as_json:
        emit_json({"path": str(result.path), **result.report})
        return
    p = result.report["params"]
    console.print(f"[bold]{result.path}[/bold]  {result.report['method']}  fingerprint {result.fingerprint[7:19]}")
    console.print(f"  parent         {host.ref.name} ({host.ref.short()}); its neurons bricks run on this host")
    console.print(f"  swapped        {p['groups_swapped']} of {p['groups_targeted']} groups "
                  f"(relative calibration error <= max_error {options.max_error})")
    if p["dense"]:
        console.print(f"  parameters     {p['compressed']:,} in factors for {p['dense']:,} dense "
                      f"({p['kept_fraction']:.1%} kept); median calibration output error "
                      f"{result.report['calib_error_median']:.3f}")
