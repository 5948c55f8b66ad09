"""Emergent extraction: FuncScore and LAPE on synthetic statistics with a known answer; the extractor
end to end on the tiny host (bricks, metadata, held-out verdicts)."""

import pytest
import torch
from sklearn.metrics import average_precision_score

from bricks.corpus import Corpus, Doc
from bricks.errors import InvalidInputError
from bricks.extract import get_extractor
from bricks.extract.emergent import (
    EmergentOptions,
    average_precision,
    extract_emergent,
    funcscore,
    held_out_check,
    lape_entropy,
    routing_requests,
    select_neurons,
)
from bricks.profile import Profile

LABELS = ["code", "en", "fr"]


TORCH_THREADS = 1  # the tiny model's matmuls are microseconds: OpenMP hand-offs cost more than they save
L, D = 3, 16


def _synthetic(seed: int = 0) -> Profile:
    """30 documents; neuron (1, 5) is large exactly on fr documents and active only on fr tokens;
    neuron (2, 7) is large on fr documents but also active everywhere (not LAPE-specific)."""
    g = torch.Generator().manual_seed(seed)
    prof = Profile.empty("sha256:x", LABELS, L, D, 256)
    labels = torch.arange(30) % 3
    doc = torch.rand(30, L, D, generator=g)
    fr = labels == LABELS.index("fr")
    doc[fr, 1, 5] += 5.0
    doc[fr, 2, 7] += 4.0
    prof.doc_mean_abs, prof.doc_label = doc.half(), labels
    prof.doc_key, prof.doc_tokens = torch.arange(30), torch.full((30,), 10)
    prof.tokens = torch.full((3,), 100)
    prof.active = torch.full((3, L, D), 50.0, dtype=torch.float64)
    prof.active[:, 1, 5] = torch.tensor([1.0, 1.0, 99.0])
    prof.active[:, 2, 7] = 99.0
    prof.abs_sum = prof.active.clone()
    prof.sq_sum = prof.active.clone()
    return prof


def test_average_precision_matches_sklearn():
    g = torch.Generator().manual_seed(1)
    scores = torch.rand(40, 6, generator=g)
    pos = torch.rand(40, generator=g) > 0.6
    got = average_precision(scores, pos)
    want = [average_precision_score(pos.numpy(), scores[:, j].numpy()) for j in range(6)]
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-9)


def test_funcscore_finds_the_planted_neurons():
    ap = funcscore(_synthetic(), "fr")
    assert ap[1, 5] == 1.0 and ap[2, 7] == 1.0
    assert ap.flatten().topk(2).indices.tolist() == sorted([1 * D + 5, 2 * D + 7])


def test_lape_entropy_is_low_only_for_the_specific_neuron():
    ent = lape_entropy(_synthetic())
    assert ent[1, 5] < 0.2
    assert ent[2, 7] == pytest.approx(torch.log(torch.tensor(3.0)).item(), abs=1e-6)


@pytest.mark.parametrize(("method", "want"), [("funcscore", {1: [5], 2: [7]}), ("lape", {1: [5]}),
                                              ("combined", {1: [5]})])
def test_select_neurons(method, want):
    top_pct = 100 * len(sum(want.values(), [])) / (L * D)
    layers, stats = select_neurons(_synthetic(), "fr", method, top_pct=top_pct)
    assert {k: v.tolist() for k, v in layers.items()} == want
    assert stats["k"] == len(sum(want.values(), []))


def test_held_out_check_flags_general_and_ineffective_bricks():
    ok, why = held_out_check("fr", {"fr": 150.0, "en": 2.0, "de": 4.0}, 3.0, 5.0)
    assert why == "" and ok["own_over_other"] == pytest.approx(50.0)
    _, why = held_out_check("en", {"en": 40.0, "fr": 30.0, "de": 35.0}, 3.0, 5.0)
    assert why.startswith("general")
    _, why = held_out_check("en", {"en": 1.0, "fr": 0.0, "de": 0.0}, 3.0, 5.0)
    assert "barely" in why


def _tiny_corpus() -> Corpus:
    words = {"en": "the dog runs over the hill and the cat sleeps", "fr": "le chien court sur la colline et le chat",
             "code": "def f(x):\n    return x + 1\nfor i in range(3): print(i)"}
    return Corpus(Doc(f"{words[lab]} {i} {words[lab][: 5 + i]}", lab) for lab in words for i in range(20))


def test_extract_emergent_on_tiny_host(tiny_host):
    corpus = _tiny_corpus()
    assert get_extractor("emergent").fn is extract_emergent
    ex = extract_emergent(tiny_host, corpus, EmergentOptions(top_pct=2.0, force=True, progress=False), name="Lang")
    assert sorted(b.name for b in ex.bricks) == ["lang-code", "lang-en", "lang-fr"]
    for b in ex.bricks:
        assert b.meta.method == "emergent" and b.meta.labels == ["code", "en", "fr"]
        assert b.size() == round(0.02 * tiny_host.n_layers * tiny_host.d_ff)
        assert all((s.gain == 0).all() and s.label_means.shape == (3, s.indices.numel()) for s in b.neurons.values())
        assert b.meta.routing.label in corpus.labels() and b.meta.routing.texts
        lab = b.meta.routing.label  # its paragraphs, then the shipped requests written for its label
        mine = routing_requests()[lab]
        assert b.meta.routing.texts[-len(mine):] == mine and mine
        assert b.meta.params["corpus_digest"] == corpus.digest() and "held_out" in b.meta.metrics
        assert set(b.meta.metrics["held_out"]["delta_ppl_pct"]) == {"code", "en", "fr"}
    strict = get_extractor("emergent").run(tiny_host, corpus, name="lang", top_pct=2.0, min_selectivity=1e6,
                                           progress=False)
    assert not strict.bricks and len(strict.skipped) == 3  # a random model has no selective bricks


def test_routing_requests_come_from_a_labelled_file_or_none(tiny_host, tmp_path):
    shipped = routing_requests()
    assert len(shipped["code"]) >= 32 and "klingon" not in shipped and not routing_requests("none")
    mine = tmp_path / "requests.jsonl"
    mine.write_text('{"text": "Ecris une boucle", "label": "code"}\n{"text": "Bonjour", "label": "fr"}\n')
    ex = extract_emergent(tiny_host, _tiny_corpus(), EmergentOptions(top_pct=2.0, force=True, progress=False,
                                                                     routing_requests=str(mine)), name="lang")
    code = next(b for b in ex.bricks if b.meta.routing.label == "code")
    assert code.meta.routing.texts[-1] == "Ecris une boucle" and "Bonjour" not in code.meta.routing.texts
    with pytest.raises(InvalidInputError, match="does not exist"):  # refused before any work
        get_extractor("emergent").run(tiny_host, _tiny_corpus(), name="x", routing_requests=str(tmp_path / "no"),
                                      progress=False)


def test_extract_rejects_bad_options(tiny_host):
    with pytest.raises(InvalidInputError):
        get_extractor("emergent").run(tiny_host, _tiny_corpus(), name="x", method="magic", progress=False)
    with pytest.raises(InvalidInputError):
        get_extractor("emergent").run(tiny_host, _tiny_corpus(), name="x", labels=["klingon"], progress=False)


@pytest.mark.parametrize("progress", [True, False])
def test_the_held_out_check_shows_progress(tiny_host, capsys, progress):
    extract_emergent(tiny_host, _tiny_corpus(), EmergentOptions(top_pct=2.0, progress=progress), name="lang")
    err = capsys.readouterr().err
    assert ("held-out check: 100%" in err) == progress
    assert ("held-out check" in err) == progress
