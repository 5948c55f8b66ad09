"""`brick extract`, `brick eval` and `brick audit` on the tiny host: publishing, reports, clean user errors."""

import json

import pytest
from click.testing import CliRunner

from bricks.corpus import Corpus
from cli.extract import audit_cmd, eval_cmd, extract_cmd
from registry import Registry
from tests.conftest import TINY_LABELS, TINY_TEXT, tiny_corpus

LABELS = TINY_LABELS
TORCH_THREADS = 1  # the tiny model's matmuls are microseconds: OpenMP hand-offs cost more than they save


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus()


def _write_corpus(path):
    with path.open("w") as f:
        for i in range(12):
            for t, lab in zip(TINY_TEXT, ["en", "fr", "code", "math", "de"], strict=True):
                f.write(json.dumps({"text": f"{t} {i} {t[: 3 + i]}", "label": lab}) + "\n")
    return path


def test_cli_extract_publishes_and_eval_reports(tiny_host_dir, tmp_path):

    data, reg = _write_corpus(tmp_path / "c.jsonl"), tmp_path / "reg"
    run = CliRunner().invoke
    r = run(extract_cmd, ["emergent", "--host", str(tiny_host_dir), "--data", str(data), "--name", "t",
                          "--registry", str(reg), "--force", "--opt", "top_pct=2", "--opt", "progress=false"])
    assert r.exit_code == 0, r.output
    names = Registry(reg).names()
    assert names == ["t-code", "t-de", "t-en", "t-fr", "t-math"]
    r = run(eval_cmd, ["t-fr", "t-de", "--host", str(tiny_host_dir), "--data", str(data), "--registry", str(reg),
                       "--random-sets", "2", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert [b["own"] for b in rep["bricks"]] == ["fr", "de"] and len(rep["bricks"][0]["random"]) == 2
    r = run(eval_cmd, ["t-fr", "--host", str(tiny_host_dir), "--data", str(data), "--registry", str(reg), "--steer",
                       "--target", "fr", "--k", "1", "--forms", "diff", "--positions", "all,generated",
                       "--staged", "mean:2/diff:0.5", "--max-new-tokens", "3", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["t-fr"]
    assert [(x["prompt"], x["generated"]) for x in rows] == [("-", "-"), ("diff k=1", "diff k=1"), ("-", "diff k=1"),
                                                             ("mean k=2", "diff k=0.5")]
    assert all(0 <= x["target_share"] <= 1 and x["dominant_ppl_ratio"] > 0 for x in rows)
    r = run(eval_cmd, ["t-fr", "--host", str(tiny_host_dir), "--data", str(data), "--registry", str(reg), "--steer",
                       "--target", "fr", "--k", "1", "--forms", "diff", "--positions", "all", "--layers", "halves",
                       "--staged", "mean:2/diff:0.5", "--max-new-tokens", "2", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["t-fr"][1:]
    layer_names = [x["layers"] for x in rows if x["prompt"] == "diff k=1"]
    assert len(layer_names) == 3 and "all" in layer_names  # all of the brick's layers, lower half, upper half
    assert [x["layers"] for x in rows if x["prompt"] == "mean k=2"] == layer_names


def test_cli_user_mistakes_are_clean_errors(tiny_host_dir, tmp_path):

    data = _write_corpus(tmp_path / "c.jsonl")
    base = ["emergent", "--host", str(tiny_host_dir), "--data", str(data), "--name", "t", "--registry",
            str(tmp_path / "reg")]
    for extra in (["--opt", "nonsense"], ["--opt", "colour=blue"], ["--held-out", "1.5"]):
        r = CliRunner().invoke(extract_cmd, base + extra)
        assert r.exit_code == 1 and "fix:" in r.output and "Traceback" not in r.output, r.output
    r = CliRunner().invoke(extract_cmd, ["nope"] + base[1:])
    assert r.exit_code == 1 and "unknown extraction method" in r.output


def _write_jsonl(path, corpus):
    path.write_text("".join(json.dumps({"text": d.text, "label": d.label}) + "\n" for d in corpus))
    return path


def test_cli_audit_reports_and_refuses_bad_input(tiny_host_dir, corpus, tmp_path):

    data = _write_jsonl(tmp_path / "c.jsonl", corpus)
    base = ["--host", str(tiny_host_dir), "--data", str(data), "--top-pct", "5", "--random-sets", "1"]
    r = CliRunner().invoke(audit_cmd, base + ["--json", "--heatmap", str(tmp_path / "h.png")])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert set(got["stability_jaccard"]) == set(LABELS) and (tmp_path / "h.png").stat().st_size > 0
    assert len(got["selectivity"]["bricks"]) == len(LABELS)
    few = _write_jsonl(tmp_path / "few.jsonl", Corpus(list(corpus)[:10]))  # 2 documents per label
    for args in (base + ["--test-frac", "1.5"], ["--host", str(tiny_host_dir), "--data", str(few)]):
        r = CliRunner().invoke(audit_cmd, args)
        assert r.exit_code == 1 and "fix:" in r.output and "Traceback" not in r.output, r.output


def test_cli_extract_has_one_subcommand_per_extractor_with_its_options_in_help():
    r = CliRunner().invoke(extract_cmd, ["--help"])
    assert r.exit_code == 0 and all(m in r.output for m in ("clusters", "emergent", "rare_tokens"))
    r = CliRunner().invoke(extract_cmd, ["emergent", "--help"])
    assert r.exit_code == 0, r.output
    assert "Method options (--opt KEY=VALUE)" in r.output and "arxiv.org/abs/2409.02877" in r.output
    assert "top_pct" in r.output and "float (default 0.5): Brick size, % of all FFN neurons." in r.output
    for spelling in ("rare-token", "rare-tokens", "rare_tokens"):
        r = CliRunner().invoke(extract_cmd, [spelling, "--help"])
        assert r.exit_code == 0 and "extract rare_tokens" in r.output and "confirm_top" in r.output, r.output
    r = CliRunner().invoke(extract_cmd, ["clusters", "--help"])
    assert "--held-out" not in r.output and "--force" in r.output  # flags only where the method has the option


def test_cli_bad_option_type_is_one_clean_error(tiny_host_dir, tmp_path):
    r = CliRunner().invoke(extract_cmd, ["emergent", "--host", str(tiny_host_dir), "--name", "t", "--dry-run",
                                         "--opt", "top_pct=lots"])
    assert r.exit_code == 1 and "Traceback" not in r.output, r.output
    assert "emergent option top_pct='lots'" in r.output and "fix: --opt top_pct=... takes float" in r.output


def test_cli_rare_tokens_writes_its_plot_under_out_and_shows_its_figures(tiny_host_dir, tmp_path, monkeypatch):
    data = _write_corpus(tmp_path / "c.jsonl")
    monkeypatch.chdir(tmp_path)
    args = ["rare-token", "--host", str(tiny_host_dir), "--data", str(data), "--name", "rt", "--dry-run",
            "--opt", "confirm_top=24", "--opt", "max_tokens=none", "--opt", "eval_tokens=none", "--opt",
            "max_common_ratio=none", "--opt", "progress=false"]
    r = CliRunner().invoke(extract_cmd, args + ["--out", str(tmp_path / "elsewhere"), "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)
    assert got["artifacts"]["influence_curve"] == str(tmp_path / "elsewhere" / "rt-influence.png")
    evidence = got["evidence"]["rt"]
    assert set(evidence) == {"rare Δloss", "common Δloss", "rare/common", "rare/random"}
    r = CliRunner().invoke(extract_cmd, args)
    assert r.exit_code == 0, r.output
    plot = tmp_path / "brick-plots" / "rt-influence.png"
    assert plot.stat().st_size > 1000 and f"plot written: {plot.relative_to(tmp_path)}" in r.output
    table = r.output[r.output.index("┏"):]
    assert all(f"{v:.3g}" in table for v in evidence.values()), table  # its own figures, not "-"
