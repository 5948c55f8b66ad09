"""`brick extract sparse-probe --data labelled.jsonl` on the tiny host: 1/0 labels and spans through --data."""

import json

from registry import Registry

TORCH_THREADS = 1


def _labelled(path, n: int = 30):
    """1 = the text has a French clause (its span), 0 = English only."""
    with path.open("w") as f:
        for i in range(n):
            fr = f"le chat dort sur le tapis {i}"
            text = f"The cat said: {fr}. Then it left {i}."
            start = text.index(fr)
            f.write(json.dumps({"text": text, "label": 1, "span": [start, start + len(fr)]}) + "\n")
            f.write(json.dumps({"text": f"The cat sleeps on the mat {i}. Then it left.", "label": 0}) + "\n")
    return path


def test_labelled_file_through_data_publishes_a_brick(run, tiny_host_dir, tmp_path, registry_dir):
    data = _labelled(tmp_path / "labelled.jsonl")
    out = run("extract", "sparse-probe", "--host", str(tiny_host_dir), "--data", str(data), "--name", "fr-clause",
              "--budget", "0.02", "--opt", "n_random=1", "--opt", "progress=false", "--force",
              "--out", str(tmp_path / "plots"), "--json")
    rep = json.loads(out)
    assert len(rep["published"]) == 1 and rep["published"][0].startswith("fr-clause@")
    m = rep["report"]["fr-clause"]
    assert m["positive"] == "1" and 0 < m["brick_neurons"] <= m["budget_neurons"] == 10
    assert (tmp_path / "plots" / "fr-clause-accuracy.png").is_file()
    brick = Registry(registry_dir).get("fr-clause")
    assert brick.meta.params["span"] == "auto" and brick.meta.metrics["chosen_c"] == m["chosen_c"]


def test_bad_labelled_file_is_one_clean_error(run, tiny_host_dir, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "fine", "label": 1}\n{"text": "short", "label": 0, "span": [3, 40]}\n')
    out = run("extract", "sparse-probe", "--host", str(tiny_host_dir), "--data", str(data), "--name", "x",
              "--dry-run", code=1)
    assert f"{data}:2: 'span' must be [start, end]" in out and "fix:" in out
