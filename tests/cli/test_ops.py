"""`brick train` / `brick update` on the tiny host through click's runner: publish, lineage, clean errors."""

from __future__ import annotations

import json

import pytest

FAST = ["--steps", "12", "--rank", "4", "--lr", "0.01", "--opt", "batch_size=4"]


def write_chat(path, n, word):
    lines = [json.dumps({"messages": [{"role": "user", "content": f"{word} {i}?"},
                                      {"role": "assistant", "content": f"the {word} {i} jumps"}]}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_train_then_update_records_lineage(run, tiny_host_dir, tmp_path):
    first = write_chat(tmp_path / "fox.jsonl", 40, "fox")
    out = json.loads(run("train", "--data", first, "--name", "fox", "--host", str(tiny_host_dir), *FAST, "--json"))
    assert out["published"] == "fox@1.0.0" and out["kind"] == "lora"
    assert out["metrics"]["heldout_loss_after"] < out["metrics"]["heldout_loss_before"]
    more = write_chat(tmp_path / "cat.jsonl", 40, "cat")
    text = run("update", "fox", "--data", more, "--host", str(tiny_host_dir), "--steps", "8")
    assert "fox@1.1.0" in text and "held-out loss" in text and "parent         fox@1.0.0" in text
    shown = json.loads(run("show", "fox@1.1.0", "--json"))
    edge = shown["lineage"]["parents"][0]
    assert edge["ref"] == "fox@1.0.0" and edge["operation"] == "update"
    assert edge["params"]["data_digest"].startswith("sha256:") and edge["params"]["seed"] == 0
    assert edge["params"]["steps"] == 8 and edge["params"]["rank"] == 4  # rank inherited from the parent
    tree = run("show", "fox@1.1.0")
    assert "lineage" in tree and "update of fox@1.0.0" in tree


def test_bad_data_file_is_one_clean_error_and_publishes_nothing(run, tiny_host_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"messages": [{"role": "bot", "content": "x"}]}\nnope\n')
    out = run("train", "--data", str(bad), "--name", "x", "--host", str(tiny_host_dir), code=1)
    assert "bad.jsonl:2: messages[0].role" in out and "bad.jsonl:3: not valid JSON" in out
    assert run("list", "--json").strip() == "[]"


def test_bad_options_and_names_fail_before_work(run, tiny_host_dir, tmp_path):
    data = write_chat(tmp_path / "d.jsonl", 30, "fox")
    assert "rank" in run("train", "--data", data, "--name", "x", "--rank", "0", code=1)
    assert "not a valid brick name" in run("train", "--data", data, "--name", "../x", code=1)
    assert "unknown target" in run("train", "--data", data, "--name", "x", "--targets", "qproj", code=1)


def test_dry_run_publishes_nothing(run, tiny_host_dir, tmp_path):
    data = write_chat(tmp_path / "d.jsonl", 30, "fox")
    out = run("train", "--data", data, "--name", "fox", "--host", str(tiny_host_dir), *FAST, "--dry-run")
    assert "dry run" in out and run("list", "--json").strip() == "[]"


def test_update_of_a_neuron_brick_reextracts_and_reports_overlap(run, tiny_host_dir, tmp_path):
    from tests.conftest import TINY_LABELS, TINY_TEXT

    def corpus(path, n, salt):
        rows = [json.dumps({"text": f"{t} {salt}{i} {t[: 5 + i % 9]}", "label": lab})
                for i in range(n) for t, lab in zip(TINY_TEXT, TINY_LABELS, strict=True)]
        path.write_text("\n".join(rows) + "\n")
        return str(path)

    old, new = corpus(tmp_path / "old.jsonl", 20, "a"), corpus(tmp_path / "new.jsonl", 24, "b")
    run("extract", "emergent", "--data", old, "--name", "lang", "--host", str(tiny_host_dir),
        "--opt", "top_pct=2", "--opt", "labels=fr", "--force")
    out = json.loads(run("update", "lang-fr", "--data", new, "--host", str(tiny_host_dir), "--opt", "force=true",
                         "--json"))
    assert out["published"] == "lang-fr@1.1.0"
    c = out["comparison"]
    assert 0 <= c["jaccard"] <= 1 and c["parent_size"] == c["size"]
    again = run("update", "lang-fr@1.0.0", "--data", old, "--host", str(tiny_host_dir), code=1)
    assert "would repeat the parent" in again


def test_merge_two_trained_bricks_publishes_with_lineage(run, tiny_host_dir, tmp_path):
    for word in ("fox", "cat"):
        run("train", "--data", write_chat(tmp_path / f"{word}.jsonl", 30, word), "--name", word,
            "--host", str(tiny_host_dir), *FAST)
    out = json.loads(run("merge", "fox", "cat@1.0.0", "--method", "linear", "--weights", "1,0.5",
                         "--opt", "target_rank=4", "-o", "pets", "--json"))
    assert out["published"] == "pets@1.0.0" and out["parents"] == ["fox@1.0.0", "cat@1.0.0"]
    assert out["method"] == "merge-linear" and 0 < out["metrics"]["max_error"] < 1
    edges = json.loads(run("show", "pets", "--json"))["lineage"]["parents"]
    assert {e["ref"] for e in edges} == {"fox@1.0.0", "cat@1.0.0"}
    assert edges[0]["operation"] == "merge" and edges[0]["params"]["weights"] == [1.0, 0.5]
    assert "merge of cat@1.0.0" in run("show", "pets") and "method=linear" in run("show", "pets")
    assert "ties" in run("merge", "--help")


def test_bad_merges_are_one_clean_error(run, tiny_host_dir, tmp_path, brick_file_neurons):
    run("train", "--data", write_chat(tmp_path / "fox.jsonl", 30, "fox"), "--name", "fox",
        "--host", str(tiny_host_dir), *FAST)
    run("publish", brick_file_neurons)
    assert "density" in run("merge", "fox", "fox", "--method", "ties", "--opt", "density=1.5", "-o", "x", code=1)
    mixed = run("merge", "fox", "lang-fr", "--method", "cat", "-o", "x", code=1)
    assert "fox" in mixed and "lang-fr" in mixed
    assert "did you mean" in run("merge", "fox", "fox", "--method", "tie", "-o", "x", code=1)
    assert "nope" in run("merge", "fox", "nope", "--method", "cat", "-o", "x", code=1)
    assert run("list", "--json").count('"ref"') == 2  # nothing was published by the failed merges


@pytest.fixture
def brick_file_neurons(tmp_path, tiny_host):
    from bricks.format import save_brick
    from bricks.kinds.neurons import neuron_brick

    b = neuron_brick("lang-fr", tiny_host.ref, {0: [1, 2, 3]}, gain=0.0, method="emergent")
    return str(save_brick(b, tmp_path / "lang-fr.safetensors"))
