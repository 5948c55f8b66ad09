"""The retrieval rules (centroid, knn, linear), the calibrated thresholds and the evaluation, on the
weightless character n-gram embedder (no model loads)."""

import json

import numpy as np
import pytest

from bricks.corpus import Corpus, Doc
from bricks.extract.emergent import example_texts, paragraphs
from router.assembly import BrickChoice
from router.embed import CharNgramEmbedder, ConcatEmbedder
from router.evaluate import NONE, evaluate, held_out_paragraphs, load_labelled
from router.policy import MIN_CALIBRATED_KEYS, RULES, BrickIndex, RouteEntry, Router

FR = ["Le chat dort sur le canapé du salon", "Nous avons mangé une tarte aux pommes délicieuse",
      "La rivière coule doucement entre les rochers", "Il fait très froid ce matin dans la vallée",
      "Les enfants jouent dans le jardin de leur grand-mère", "Je voudrais un café et un croissant, s'il vous plaît"]
DE = ["Die Katze schläft auf dem Sofa im Wohnzimmer", "Wir haben einen leckeren Apfelkuchen gegessen",
      "Der Fluss fließt langsam zwischen den Felsen", "Heute Morgen ist es sehr kalt im Tal",
      "Die Kinder spielen im Garten ihrer Großmutter", "Ich hätte gern einen Kaffee und ein Brötchen, bitte"]
CODE = ["def area(r):\n    return 3.14 * r ** 2", "for i in range(10):\n    print(i)",
        "import numpy as np\nx = np.zeros(3)", "class Stack:\n    def push(self, x): self.items.append(x)",
        "if __name__ == '__main__':\n    main()", "with open(path) as f:\n    data = json.load(f)"]


def keys(texts, n=24):
    """n keys from a few sentences: pairs of them, numbered."""
    return [f"{texts[i % len(texts)]}. {texts[(i // len(texts) + i + 1) % len(texts)]} {i}" for i in range(n)]


def label_entries(n=24):
    return [RouteEntry("fr", BrickChoice("lang-fr@1"), True, keys(FR, n)),
            RouteEntry("de", BrickChoice("lang-de@1"), True, keys(DE, n)),
            RouteEntry("code", BrickChoice("code@1"), True, keys(CODE, n)),
            RouteEntry("safety", BrickChoice("safety@1"), False, [])]


@pytest.mark.parametrize("rule", RULES)
def test_every_rule_routes_languages_and_code(rule):
    r = Router("retrieval", label_entries(), top_k=1, embedder=CharNgramEmbedder(), rule=rule)
    cases = {"Le chat joue dans le jardin de la grand-mère": "fr", "Die Katze spielt im Garten der Großmutter": "de",
             "def area(x):\n    return 2 * x ** 2": "code"}
    for text, want in cases.items():
        d = r.route(text)
        assert d.routed == [want], (rule, text, d.explain())
        assert [c.ref for c in d.choices][0] == "safety@1"  # the unroutable brick always runs
        assert d.explain()["rule"] == rule and set(d.explain()["thresholds"]) == {want}


def test_thresholds_are_calibrated_from_enough_keys_else_the_manifest_value():
    entries = label_entries()
    entries.append(RouteEntry("old", BrickChoice("old@1"), True, ["four", "example", "texts", "only"]))
    r = Router("retrieval", entries, threshold=0.3, embedder=CharNgramEmbedder())
    th = r.index.thresholds
    assert th["old"] == 0.3  # an old brick with 4 texts keeps the manifest threshold
    assert all(0.0 < th[k] < 1.0 and th[k] != 0.3 for k in ("fr", "de", "code"))
    # the calibration keeps ~98% of the brick's own held-out keys
    vecs = r.index.keys["fr"]
    assert np.mean(vecs @ r.index.centroid_of["fr"] >= th["fr"]) >= 0.9


def test_none_of_these_rejects_far_requests():
    r = Router("retrieval", label_entries(), top_k=2, embedder=CharNgramEmbedder())
    d = r.route("ЖЖЖ 東京 ЖЖЖ 東京")  # shares no character n-gram with any brick
    assert d.routed == [] and [c.ref for c in d.choices] == ["safety@1"]


def test_old_bricks_with_few_texts_still_route():
    entries = [RouteEntry("fr", BrickChoice("fr@1"), True, FR[:4]), RouteEntry("code", BrickChoice("c@1"), True,
                                                                               CODE[:4])]
    assert len(FR[:4]) < MIN_CALIBRATED_KEYS
    r = Router("retrieval", entries, top_k=1, threshold=0.1, embedder=CharNgramEmbedder())
    assert r.route("Les enfants mangent une pomme dans le jardin").routed == ["fr"]


def test_bulk_loaded_centroids_route_and_use_the_manifest_threshold():
    emb = CharNgramEmbedder(dim=64)
    index = BrickIndex(emb, rule="centroid", threshold=0.5)
    vecs = np.eye(64, dtype=np.float32)[:3]
    index.add_many(["a", "b", "c"], vecs)
    assert index.rank(vecs[1], 1)[0] == ("b", 1.0) and index.thresholds == {"a": 0.5, "b": 0.5, "c": 0.5}


def test_concat_embedder_rows_are_unit_length():
    emb = ConcatEmbedder([CharNgramEmbedder(dim=32), CharNgramEmbedder(dim=16, orders=(2,))])
    v = emb.embed(["bonjour", "hello world"])
    assert v.shape == (2, 48) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_unknown_rule_is_a_user_error():
    from bricks.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="routing rule"):
        Router("retrieval", label_entries(), embedder=CharNgramEmbedder(), rule="magic")


def test_evaluate_counts_per_label_confusion_and_no_brick():
    r = Router("retrieval", label_entries(), top_k=1, embedder=CharNgramEmbedder())
    examples = [("Le chat joue dans le jardin de la grand-mère", "fr"),
                ("Die Katze spielt im Garten der Großmutter", "de"),
                ("import numpy as np\nprint(np.zeros(2))", "code"), ("ЖЖЖ 東京", NONE)]
    s = evaluate(r, examples, {"fr": "fr", "de": "de", "code": "code"}).summary()
    assert s["examples"] == 4 and s["accuracy"] == {"code": 1.0, "de": 1.0, "fr": 1.0, NONE: 1.0}
    assert s["no_brick_rate"] == 0.0 and s["none_rejected"] == 1.0 and s["min_accuracy"] == 1.0
    assert s["confusion"]["fr"] == {"fr": 1}


def test_load_labelled_checks_lines(tmp_path):
    from bricks.errors import InvalidInputError

    p = tmp_path / "x.jsonl"
    p.write_text(json.dumps({"text": "a", "label": "fr"}) + "\n\n" + json.dumps({"text": "b", "label": None}) + "\n")
    assert load_labelled(p) == [("a", "fr"), ("b", NONE)]
    p.write_text("not json\n")
    with pytest.raises(InvalidInputError, match="x.jsonl:1"):
        load_labelled(p)


def test_routing_keys_are_many_paragraphs_from_every_document():
    corpus = Corpus(Doc(" ".join(f"mot{i}-{j}" for j in range(400)), "fr") for i in range(10))
    got = example_texts(corpus, "fr", n=64, chars=300)
    assert len(got) == 64 and len(set(got)) == 64 and all(len(t) <= 300 for t in got)
    assert len({t.split("-")[0] for t in got}) == 10  # spread over all documents, not the first few
    assert all(len(p) <= 300 for p in paragraphs("x " * 1000)) and paragraphs("short") == ["short"]
    held = held_out_paragraphs(corpus, 300, per_label=5)
    assert len(held) == 5 and {lab for _, lab in held} == {"fr"}


def test_knn_searches_centroids_past_the_key_limit(monkeypatch):
    r = Router("retrieval", label_entries(), top_k=1, embedder=CharNgramEmbedder(), rule="knn")
    q = r.index.embedder.embed(["Die Katze spielt im Garten der Großmutter"])[0]
    knn = r.index.rank(q, 1)
    monkeypatch.setattr("router.policy.KNN_MAX_KEYS", 10)
    central = r.index.rank(q, 1)
    assert knn[0][0] == central[0][0] == "de"
    assert central[0][1] == pytest.approx(r.index.similarity("de", q), abs=1e-5)  # the centroid cosine


def test_the_fp16_scan_with_exact_rescoring_equals_a_flat_float32_search():
    """The key and centroid indexes scan float16 copies and rescore a shortlist in float32: the scores and
    the order are a flat index's, including for near-ties between many bricks."""
    import faiss

    from router.policy import _vector_index

    rng = np.random.default_rng(3)
    vecs = rng.standard_normal((3000, 96)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    queries = vecs[:50] + 0.05 * rng.standard_normal((50, 96)).astype(np.float32)  # near a brick, as requests are
    queries = np.vstack([queries, rng.standard_normal((50, 96)).astype(np.float32)])  # and far from all
    flat, fast = faiss.IndexFlatIP(96), _vector_index(96)
    flat.add(vecs)
    fast.add(vecs)
    want_s, want_r = flat.search(queries, 8)
    got_s, got_r = fast.search(queries, 8)
    assert (got_r == want_r).mean() > 0.99  # a float16 rounding may swap two rows a few 1e-4 apart
    assert np.abs(got_s - want_s).max() < 1e-5  # scores are exact float32 ones
    assert (got_r[:, 0] == want_r[:, 0]).all()


def test_minilm_runs_in_bfloat16_only_where_the_cpu_multiplies_it_and_agrees_with_float32():
    import copy

    import torch

    from router.embed import MiniLMEmbedder, bf16_matmul

    emb = MiniLMEmbedder()
    assert emb.model.dtype == (torch.bfloat16 if bf16_matmul() else torch.float32)
    full = copy.copy(emb)
    full.model, full._memo = copy.deepcopy(emb.model).to(torch.float32), type(emb._memo)()
    texts = [*FR[:3], *DE[:3], *CODE[:3]]
    assert (np.sum(emb.embed(texts) * full.embed(texts), axis=1) > 0.999).all()
