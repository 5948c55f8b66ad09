"""`brick route --eval FILE MANIFEST`: per-label top-1, the confusion table and the no-brick rate (tiny host;
the weightless character n-gram embedder stands in for MiniLM so no model loads)."""

import json

import pytest

from bricks.format import RoutingKeys, save_brick
from bricks.kinds.neurons import neuron_brick
from router.embed import CharNgramEmbedder
from router.policy import DEFAULT_RULE
from tests.router.test_rules import CODE, DE, FR, keys


@pytest.fixture
def manifest(run, tmp_path, tiny_host, tiny_host_dir, monkeypatch):
    monkeypatch.setattr("serving.service.get_embedder", lambda *a, **k: CharNgramEmbedder())
    for i, (name, label, texts) in enumerate([("lang-fr", "fr", FR), ("lang-de", "de", DE), ("code", "code", CODE)]):
        b = neuron_brick(name, tiny_host.ref, {0: [i]}, routing=RoutingKeys(texts=keys(texts), label=label))
        run("publish", str(save_brick(b, tmp_path / f"{name}.safetensors")))
    m = tmp_path / "tiny.yaml"
    m.write_text(f"name: tiny\nhost:\n  spec: {tiny_host_dir}\nbricks:\n  - ref: lang-fr@^1\n    alias: fr\n"
                 "  - ref: lang-de@^1\n  - ref: code@^1\n"
                 "routing:\n  policy: retrieval\n  top_k: 2\n  embedder: host\nengine:\n  kind: transformers\n")
    return m


def write_examples(path, rows):
    path.write_text("".join(json.dumps({"text": t, "label": lab}, ensure_ascii=False) + "\n" for t, lab in rows))
    return str(path)


def test_route_eval_reports_accuracy_confusion_and_no_brick(run, manifest, tmp_path):
    rows = [("Le chat joue dans le jardin de la grand-mère", "fr"), ("Die Katze spielt im Garten der Großmutter", "de"),
            ("import numpy as np\nprint(np.zeros(2))", "code"), ("Le chat dort sur le canapé du salon", "de"),
            ("ЖЖЖ 東京 ЖЖЖ", "none")]
    path = write_examples(tmp_path / "labelled.jsonl", rows)
    s = json.loads(run("route", "--eval", path, str(manifest), "--json"))
    assert s["examples"] == 5 and s["accuracy"]["fr"] == 1.0 and s["accuracy"]["code"] == 1.0
    assert s["accuracy"]["de"] == 0.5 and s["confusion"]["de"] == {"de": 1, "fr": 1}  # labels, not aliases
    assert s["no_brick_rate"] == 0.0 and s["none_rejected"] == 1.0 and s["min_accuracy"] == 0.5
    text = run("route", "--eval", path, str(manifest))
    assert "-> fr" in text and "50.0%" in text and "no-brick rate 0.0%" in text and "given no brick 100.0%" in text


def test_route_explains_one_prompt_with_thresholds(run, manifest):
    d = json.loads(run("route", str(manifest), "Die Katze spielt im Garten der Großmutter", "--json"))
    assert d["bricks"] == ["lang-de@^1"] and d["rule"] == DEFAULT_RULE and "lang-de@^1" in d["thresholds"]
    assert "needs" in run("route", str(manifest), "Die Katze spielt im Garten")


def test_route_needs_a_prompt_or_eval(run, manifest, tmp_path):
    assert "PROMPT or --eval" in run("route", str(manifest), code=1)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    assert "bad.jsonl:1" in run("route", "--eval", str(bad), str(manifest), code=1)
