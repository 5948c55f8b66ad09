"""The emergent audit protocol on the tiny host: which text each step may see, and the report's shape."""

import pytest

from bricks.audit import audit_emergent
from bricks.corpus import Corpus
from bricks.profile import signed_key
from tests.conftest import TINY_LABELS, tiny_corpus

LABELS = TINY_LABELS
TORCH_THREADS = 1  # the tiny model's matmuls are microseconds: OpenMP hand-offs cost more than they save


@pytest.fixture(scope="module")
def corpus():
    return tiny_corpus()


@pytest.fixture(scope="module")
def audit(tiny_host, corpus):
    return audit_emergent(tiny_host, corpus, top_pct=5.0, random_sets=2, eval_tokens=0)


def test_selection_never_sees_the_test_split(audit, corpus):
    test_keys = {signed_key(d.key()) for d in audit.test}
    assert test_keys and len(audit.test) < len(corpus)
    assert not test_keys & set(audit.profiles["train"].doc_key.tolist())
    # ... while the two halves together cover the whole corpus, once.
    a, b = (set(audit.profiles[h].doc_key.tolist()) for h in ("half_a", "half_b"))
    assert not a & b and a | b == {signed_key(d.key()) for d in corpus}
    assert {lab: sum(t) for lab, t in audit.half_tokens.items()} == dict(
        zip(audit.profiles["half_a"].labels, (audit.profiles["half_a"].tokens + audit.profiles["half_b"].tokens)
            .tolist(), strict=True))


def test_report_covers_every_label_with_random_baselines(audit):
    assert sorted(b.own for b in audit.report.bricks) == sorted(LABELS)
    assert all(len(b.random) == 2 and set(b.delta) == set(LABELS) for b in audit.report.bricks)
    assert set(audit.stability) == set(LABELS) and all(0.0 <= v <= 1.0 for v in audit.stability.values())
    assert set(audit.controls) == {"top_mean_abs", "lape_en"}
    for control in audit.controls.values():
        assert control["verdict"] == "published" or control["verdict"].startswith(("general", "ablating"))
    d = audit.to_dict()
    assert set(d["extractor_verdicts"]) == set(LABELS) and d["params"]["top_pct"] == 5.0


def test_no_controls_without_dominant_language_text(tiny_host, corpus):
    got = audit_emergent(tiny_host, Corpus(d for d in corpus if d.label != "en"), top_pct=5.0, random_sets=0,
                         eval_tokens=0)
    assert got.controls == {} and sorted(got.stability) == ["code", "de", "fr", "math"]
