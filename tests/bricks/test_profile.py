"""Activation profiles: statistics equal a direct per-document computation; files, merge and resume."""

import pytest
import torch

from bricks.corpus import Corpus, Doc
from bricks.errors import InvalidInputError
from bricks.profile import Profile, ffn_capture, iter_activations, profile_corpus, signed_key
from tests.conftest import TINY_TEXT

LABELS = ["en", "fr", "code", "math", "de"]


TORCH_THREADS = 1  # the tiny model's matmuls are microseconds: OpenMP hand-offs cost more than they save


@pytest.fixture(scope="module")
def corpus():
    docs = [Doc(t, lab) for t, lab in zip(TINY_TEXT, LABELS, strict=True)]
    docs += [Doc(t + " " + t[:20], lab) for t, lab in zip(TINY_TEXT, LABELS, strict=True)]
    return Corpus(docs)


def _direct(host, corpus):
    """Each document alone (no padding at all), every statistic from the raw activations."""
    L, d, labels = host.n_layers, host.d_ff, corpus.labels()
    want = {k: torch.zeros(len(labels), L, d, dtype=torch.float64) for k in ("active", "abs_sum", "h_sum", "sq_sum")}
    tokens, doc_means = torch.zeros(len(labels), dtype=torch.int64), {}
    for doc in corpus:
        ids = host.tokenizer(doc.text, return_tensors="pt", add_special_tokens=False).input_ids
        li = labels.index(doc.label)
        with torch.no_grad(), ffn_capture(host, gate=True) as acts:
            host.model(ids)
        tokens[li] += ids.shape[1]
        h = torch.stack([acts[i][0] for i in range(L)], 1).double()  # [T, L, d]
        g = torch.stack([acts[("gate", i)][0] for i in range(L)], 1)
        for k, v in (("active", (g > 0).double()), ("abs_sum", h.abs()), ("h_sum", h), ("sq_sum", h * h)):
            want[k][li] += v.sum(0)
        doc_means[signed_key(doc.key())] = h.abs().mean(0)
    return want, tokens, doc_means


def test_stats_equal_direct_computation_with_padding(tiny_host, corpus):
    # One batch of ten documents of different lengths: most rows are padded.
    prof = profile_corpus(tiny_host, corpus, batch_tokens=10_000, progress=False)
    want, tokens, doc_means = _direct(tiny_host, corpus)
    assert prof.labels == sorted(LABELS)
    assert torch.equal(prof.tokens, tokens)
    for k, v in want.items():
        assert torch.allclose(getattr(prof, k), v, rtol=1e-4, atol=1e-4), k
    for row, key in enumerate(prof.doc_key.tolist()):
        assert torch.allclose(prof.doc_mean_abs[row].double(), doc_means[key], rtol=2e-3, atol=1e-3)
    assert torch.allclose(prof.act_prob().sum(), (want["active"] / tokens[:, None, None]).sum())


def test_save_load_roundtrip(tiny_host, corpus, tmp_path):
    prof = profile_corpus(tiny_host, corpus, progress=False)
    back = Profile.load(prof.save(tmp_path / "p.safetensors"))
    assert back.labels == prof.labels and back.max_len == prof.max_len
    for k, v in prof.tensors().items():
        assert torch.equal(getattr(back, k), v), k
    assert b"pickle" not in (tmp_path / "p.safetensors").read_bytes()[:200]


def test_load_rejects_non_profiles(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a profile")
    with pytest.raises(InvalidInputError):
        Profile.load(bad)
    with pytest.raises(InvalidInputError):
        Profile.load(tmp_path / "missing.safetensors")


def test_merge_of_halves_equals_whole(tiny_host, corpus):
    whole = profile_corpus(tiny_host, corpus, progress=False)
    a = profile_corpus(tiny_host, Corpus(corpus[:4]), progress=False)  # labels en, fr, code, math only
    b = profile_corpus(tiny_host, Corpus(corpus[4:]), progress=False)
    merged = a.merge(b)
    assert merged.labels == whole.labels
    assert torch.equal(merged.tokens, whole.tokens)
    for k in ("active", "abs_sum", "h_sum", "sq_sum"):
        assert torch.allclose(getattr(merged, k), getattr(whole, k), rtol=1e-5, atol=1e-5)
    assert sorted(merged.doc_key.tolist()) == sorted(whole.doc_key.tolist())
    with pytest.raises(InvalidInputError):
        merged.merge(a)  # the same documents twice


def test_resume_skips_counted_documents(tiny_host, corpus, tmp_path):
    ck = tmp_path / "ck.safetensors"
    profile_corpus(tiny_host, Corpus(corpus[:6]), checkpoint=ck, save_every=1, progress=False)
    resumed = profile_corpus(tiny_host, corpus, checkpoint=ck, progress=False)
    whole = profile_corpus(tiny_host, corpus, progress=False)
    assert resumed.n_docs == whole.n_docs == len(corpus)
    assert torch.equal(resumed.tokens, whole.tokens)
    assert torch.allclose(resumed.abs_sum, whole.abs_sum, rtol=1e-5, atol=1e-5)
    assert Profile.load(ck).n_docs == len(corpus)


def test_repeated_text_counts_once(tiny_host, corpus):
    prof = profile_corpus(tiny_host, Corpus(list(corpus) + [corpus[0]]), progress=False)
    assert prof.n_docs == len(corpus)


def test_iter_activations_masks_are_batches(tiny_host, corpus):
    seen = 0
    for batch, acts in iter_activations(tiny_host, corpus, layers=[3], batch_tokens=64):
        assert acts[3].shape[:2] == batch.input_ids.shape and acts[3].shape[2] == tiny_host.d_ff
        seen += len(batch.labels)
    assert seen == len(corpus)
