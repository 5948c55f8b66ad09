import numpy as np
import pytest

from bricks.errors import InvalidInputError
from router.assembly import BrickChoice
from router.embed import Embedder
from router.policy import BrickIndex, RouteEntry, Router


class BagOfWords(Embedder):
    """A deterministic embedder for unit tests: hashed bag of words, normalised."""

    name, dim = "bow", 64

    def __init__(self):
        self._memo = {}

    def _encode(self, texts):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def entries():
    return [
        RouteEntry("fr", BrickChoice("lang-fr@^1", 0.0), True, ["bonjour le monde", "le chat est noir"]),
        RouteEntry("code", BrickChoice("code@1"), True, ["def main return value", "import numpy as np"]),
        RouteEntry("safety", BrickChoice("safety@1", 1.5), False, []),
    ]


def test_retrieval_picks_nearest_and_keeps_fixed():
    r = Router("retrieval", entries(), top_k=1, threshold=0.2, embedder=BagOfWords())
    d = r.route("le chat est noir et blanc")
    assert [c.ref for c in d.choices] == ["safety@1", "lang-fr@^1"]
    assert d.scores["fr"] > d.scores.get("code", 0)
    assert d.explain()["threshold"] == 0.2


def test_retrieval_threshold_rejects_weak_matches():
    r = Router("retrieval", entries(), top_k=2, threshold=0.99, embedder=BagOfWords())
    assert [c.ref for c in r.route("completely unrelated words here").choices] == ["safety@1"]


def test_static_and_explicit():
    assert len(Router("static", entries()).route("x").choices) == 3
    r = Router("explicit", entries())
    assert r.route("x").choices == []
    d = r.route("x", request_bricks=["fr", {"ref": "other@2", "gain": 2}])
    assert d.choices == [BrickChoice("lang-fr@^1", 0.0), BrickChoice("other@2", 2.0)]


def test_request_gain_overrides_manifest_gain():
    d = Router("static", entries()).route("x", request_bricks=[{"ref": "safety", "gain": 3}])
    assert BrickChoice("safety@1", 3.0) in d.choices and len(d.choices) == 3
    # the same brick under another ref form is the same brick, never applied twice
    d = Router("static", entries()).route("x", request_bricks=[{"ref": "lang-fr@1.0.0", "gain": 2}])
    assert [c.ref for c in d.choices].count("lang-fr@1.0.0") == 1 and len(d.choices) == 3


@pytest.mark.parametrize("bad", [{"gain": 1}, {"ref": "x", "gian": 1}, {"ref": "x", "gain": "high"}, 7,
                                 {"ref": "x", "gain": float("inf")}])
def test_malformed_request_bricks(bad):
    with pytest.raises(InvalidInputError):
        Router("explicit", entries()).route("x", request_bricks=[bad])


def test_request_bricks_can_be_forbidden():
    with pytest.raises(InvalidInputError, match="does not accept"):
        Router("static", entries(), allow_request_bricks=False).route("x", request_bricks=["fr"])


def test_named_assembly():
    r = Router("explicit", entries(), assemblies={"fr-only": ["fr"]})
    assert r.route("x", model="fr-only").choices == [BrickChoice("lang-fr@^1", 0.0)]


def test_index_best_score_per_brick():
    idx = BrickIndex(BagOfWords())
    vecs = np.eye(64, dtype=np.float32)
    idx.add("a", ["", ""], vecs[:2])
    idx.add("b", [""], vecs[2:3])
    hits = idx.search(vecs[1], 5)
    assert hits[0] == ("a", 1.0) and len(hits) == 2


def test_minilm_embedder_is_offline_and_semantic():
    from router.embed import get_embedder

    e = get_embedder("minilm")
    v = e.embed(["How do I bake bread?", "Recipe for baking a loaf", "The stock market fell today"])
    assert v.shape == (3, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2


def test_request_bricks_take_a_phase_and_a_generated_strength():
    r = Router("explicit", entries())
    d = r.route("x", request_bricks=[{"ref": "other@2", "phase": "generated", "offset_scale": 2,
                                      "generated_offset_scale": 0.5}])
    assert d.choices == [BrickChoice("other@2", None, 2.0, "generated", 0.5)]
    for bad, match in (({"ref": "x", "phase": "decode"}, "phase 'decode'"),
                       ({"ref": "x", "generated_offset_scale": "strong"}, "must be numbers"),
                       ({"ref": "x", "gain": True}, "must be numbers")):
        with pytest.raises(InvalidInputError, match=match):
            r.route("x", request_bricks=[bad])


def test_embedding_memo_is_a_bounded_lru(monkeypatch):
    """A server routes the same prompts again (the memo), but every prompt it ever saw must not stay in
    memory: the last MEMO_SIZE texts are kept, least recently used dropped first, long texts never."""
    import router.embed as embed

    monkeypatch.setattr(embed, "MEMO_SIZE", 3)
    monkeypatch.setattr(embed, "MEMO_CHARS", 20)
    emb = embed.get_embedder("chars")
    emb.forget()
    first = emb.embed(["a", "b", "c"])
    emb.embed(["a"])  # a is now the most recent
    emb.embed(["d", "x" * 21])  # b (least recent) goes; the long text is not kept
    assert list(emb._memo) == ["c", "a", "d"]
    assert np.array_equal(emb.embed(["a", "b", "c"]), first)  # b re-embedded: the same vector
    both = embed.ConcatEmbedder([emb, embed.CharNgramEmbedder()])
    both.embed(["e"])
    both.forget()
    assert not both._memo and not emb._memo
