"""`brick steer` on the tiny host: a staged steering brick published with lineage and the measured table."""

from __future__ import annotations

import json

from tests.conftest import TINY_LABELS, TINY_TEXT, labelled_brick


def _publish_label_brick(registry_dir, tiny_host):
    from registry import Registry

    Registry(registry_dir).publish(labelled_brick(tiny_host, name="lang-fr"))


def _corpus(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": lab}) + "\n" for t, lab in zip(TINY_TEXT, TINY_LABELS)))
    return str(path)


def test_steer_publishes_the_default_staged_brick(run, registry_dir, tiny_host):
    _publish_label_brick(registry_dir, tiny_host)
    out = json.loads(run("steer", "lang-fr", "--target", "fr", "--no-measure", "--json"))
    assert out["published"] == "lang-fr-steer-fr@1.0.0"
    assert out["steering"]["prompt"] == {"form": "mean", "k": 2.0} and out["steering"]["generated"]["k"] == 0.3
    shown = json.loads(run("show", "lang-fr-steer-fr", "--json"))
    assert shown["lineage"]["parents"][0]["ref"] == "lang-fr@1.0.0"
    assert shown["lineage"]["parents"][0]["operation"] == "steer"


def test_steer_measures_candidates_and_keeps_the_table(run, registry_dir, tiny_host, tiny_host_dir, tmp_path):
    _publish_label_brick(registry_dir, tiny_host)
    out = json.loads(run("steer", "lang-fr", "--target", "fr", "--name", "to-fr", "--data", _corpus(tmp_path),
                         "--split", "all", "--settings", "mean:2/diff:0.3,diff:1/diff:1", "--max-new-tokens", "4",
                         "--host", str(tiny_host_dir), "--json"))
    table = out["steering"]["measured"]
    assert [row["setting"] for row in table][0] == "plain host" and len(table) == 3
    assert out["steering"]["chosen"] in {row["setting"] for row in table[1:]}
    assert "dominant_ppl_ratio" in table[1] and out["published"] == "to-fr@1.0.0"


def test_steer_errors_are_clean(run, registry_dir, tiny_host):
    _publish_label_brick(registry_dir, tiny_host)
    assert "no mean activations for label 'xx'" in run("steer", "lang-fr", "--target", "xx", "--no-measure", code=1)
    assert "FORM:K/FORM:K" in run("steer", "lang-fr", "--target", "fr", "--settings", "loud", code=1)
    assert "nope" in run("steer", "nope", "--target", "fr", code=1)
