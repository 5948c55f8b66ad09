"""`brick grow` on the tiny host through click's runner: publish with lineage, the report, clean errors."""

from __future__ import annotations

import json

FAST = ["--steps", "3", "--layers", "3", "--opt", "memory_docs=1", "--opt", "eval_docs=1",
        "--opt", "memory_tokens=64"]


def write_facts(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


FACTS = [{"prompt": "The fox lives in", "target": " Lyon", "paraphrases": ["The home of the fox is"]},
         {"prompt": "The dog was born in", "target": " Berlin"}]


def test_grow_publishes_a_growth_brick_with_its_report_and_lineage(run, tiny_host_dir, tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl", FACTS)
    held = write_facts(tmp_path / "held.jsonl", [{"prompt": "Where the fox lives:", "target": " Lyon"}])
    text = run("grow", "--facts", facts, "--heldout", held, "--name", "pets", "--host", str(tiny_host_dir), *FAST)
    assert "pets@1.0.0" in text and "kind=growth" in text
    for part in ("reliability", "generality", "held-out wordings", "locality", "activation"):
        assert part in text, part
    shown = json.loads(run("show", "pets", "--json"))
    meta = shown["meta"]
    assert shown["kind"] == "growth" and meta["method"] == "grow-tpatcher" and shown["lineage"]["parents"] == []
    assert meta["params"]["data_digest"].startswith("sha256:") and meta["params"]["neurons_per_fact"] == 4
    assert meta["metrics"]["n_facts"] == 2 and "reliability" in meta["metrics"]
    assert "The home of the fox is" in meta["routing"]["texts"]  # a grown brick's routing keys are its facts

def test_grow_json_and_dry_run_publish_nothing(run, tiny_host_dir, tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl", FACTS)
    out = json.loads(run("grow", "--facts", facts, "--name", "pets", "--host", str(tiny_host_dir), *FAST,
                         "--method", "lm", "--dry-run", "--json"))
    assert out["published"] is None and out["method"] == "grow-lm" and out["size"] == 2 * 4
    assert run("list", "--json").strip() == "[]"


def test_bad_facts_files_are_one_clean_error_before_loading_the_host(run, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "target": " b"}\n{"prompt": "no target"}\n{"prompt": "x", "target": "  "}\nnope\n')
    out = run("grow", "--facts", str(bad), "--name", "x", "--host", "/nonexistent", code=1)
    assert "bad.jsonl:2" in out and "target" in out and "bad.jsonl:3" in out and "bad.jsonl:4" in out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no records" in run("grow", "--facts", str(empty), "--name", "x", "--host", "/nonexistent", code=1)
    assert "does not exist" in run("grow", "--facts", str(tmp_path / "missing.jsonl"), "--name", "x", code=1)
    assert run("list", "--json").strip() == "[]"


def test_bad_options_and_names_fail_before_work(run, tmp_path):
    facts = write_facts(tmp_path / "facts.jsonl", FACTS)
    assert "unknown growth method 'rome'" in run("grow", "--facts", facts, "--name", "x", "--method", "rome",
                                                  "--host", "/nonexistent", code=1)
    assert "neurons_per_fact" in run("grow", "--facts", facts, "--name", "x", "--neurons-per-fact", "0",
                                     "--host", "/nonexistent", code=1)
    assert "did you mean 'margin'" in run("grow", "--facts", facts, "--name", "x", "--opt", "margni=3",
                                          "--host", "/nonexistent", code=1)
    out = run("grow", "--facts", facts, "--name", "../x", "--host", "/nonexistent", code=1)
    assert "name" in out


def test_help_lists_the_methods_with_their_papers(run):
    out = run("grow", "--help")
    assert "tpatcher" in out and "2301.09785" in out and "lm:" in out and "neurons_per_fact" in out
