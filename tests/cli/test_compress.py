"""`brick compress` on the tiny host through click's runner: the derived host, and clean errors that leave
nothing behind."""

from __future__ import annotations

import json

from bricks.host import LINEAGE_FILE
from tests.conftest import tiny_corpus

SMALL = ["--opt", "calib_chunks=4", "--opt", "calib_tokens=32"]


def write_calib(path):
    path.write_text("".join(json.dumps({"text": d.text, "label": d.label}) + "\n" for d in tiny_corpus(8)))
    return str(path)


def test_compress_writes_a_derived_host(run, tiny_host_dir, tmp_path):
    calib, out = write_calib(tmp_path / "calib.jsonl"), tmp_path / "small"
    got = json.loads(run("compress", "--method", "ngc", "--keep", "0.7", "--calib", calib, "--out", str(out),
                         "--host", str(tiny_host_dir), *SMALL, "--opt", "max_error=none", "--json"))
    assert got["method"] == "ngc" and got["params"]["groups_swapped"] == 8
    assert 0.65 < got["params"]["kept_fraction"] <= 0.7 and got["fingerprint"].startswith("sha256:")
    lineage = json.loads((out / LINEAGE_FILE).read_text())
    assert lineage["calibration"]["source"] == calib and lineage["calibration"]["tokens_digest"].startswith("sha256:")
    text = run("compress", "--method", "svd", "--calib", calib, "--out", str(tmp_path / "svd"),
               "--host", str(out), *SMALL)  # a derived host can be compressed again
    assert "swapped" in text and "neurons bricks run on this host" in text
    again = json.loads((tmp_path / "svd" / LINEAGE_FILE).read_text())
    assert [a["fingerprint"] for a in again["derived_from"]] == [got["fingerprint"],
                                                                  lineage["parent"]["fingerprint"]]


def test_bad_input_is_one_clean_error_and_writes_nothing(run, tiny_host_dir, tmp_path):
    calib = write_calib(tmp_path / "calib.jsonl")
    base = ["--calib", calib, "--host", str(tiny_host_dir), *SMALL]
    out = str(tmp_path / "out")
    assert "unknown compression method 'tucker'" in run("compress", "--method", "tucker", "--out", out, *base, code=1)
    assert "keep" in run("compress", "--keep", "1.2", "--out", out, *base, code=1)
    assert "keep" in run("compress", "--keep", "0", "--out", out, *base, code=1)
    assert "did you mean 'max_error'" in run("compress", "--opt", "max_eror=1", "--out", out, *base, code=1)
    missing = str(tmp_path / "missing.jsonl")
    assert "does not exist" in run("compress", "--calib", missing, "--out", out, "--host", str(tiny_host_dir), code=1)
    assert "fewer than calib_chunks" in run("compress", "--calib", calib, "--out", out, "--host", str(tiny_host_dir),
                                            code=1)  # 16 x 256 tokens by default: the tiny corpus is smaller
    (tmp_path / "taken").mkdir()
    assert "already exists" in run("compress", "--out", str(tmp_path / "taken"), *base, code=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.jsonl", "taken"]
