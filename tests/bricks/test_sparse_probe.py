"""sparse-probe extractor on the tiny host: the CETT feature, an end-to-end run within budget, labelled files."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bricks.corpus import Corpus, Doc, load_corpus
from bricks.errors import InvalidInputError
from bricks.extract import get_extractor
from bricks.extract.sparse_probe import cett, cett_features, span_token_mask

TORCH_THREADS = 2


def _fr_en(n: int = 40) -> Corpus:
    """Distinct French and English texts (the tiny host is random: the probe needs only some signal)."""
    fr = ["Le renard brun rapide saute par-dessus le chien paresseux", "Le chat dort sur le tapis rouge"]
    en = ["The quick brown fox jumps over the lazy dog", "The cat sleeps on the red mat"]
    return Corpus([Doc(f"{fr[i % 2]} {i}.", "fr") for i in range(n)] + [Doc(f"{en[i % 2]} {i}.", "en")
                                                                         for i in range(n)])


def test_cett_by_hand():
    # W_down = [[1, 0], [0, 2]] (d_model 2, d_ff 2), z = [3, 4]: W_down z = [3, 8], ||W_down z|| = sqrt(73);
    # neuron 0 alone writes [3, 0] (norm 3), neuron 1 writes [0, 8] (norm 8).
    w_down = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([3.0, -4.0])  # the sign of z does not matter: |z_j|
    got = cett(z, w_down @ z, w_down.norm(dim=0))
    assert torch.allclose(got, torch.tensor([3.0, 8.0]) / math.sqrt(73.0))


def test_cett_features_equal_the_definition_on_the_host(tiny_host):
    """Per text: mean over its span's tokens of ||W_down (z_j e_j)|| / ||W_down z||, computed literally."""
    text = "The quick brown fox jumps over the lazy dog."
    doc = Doc(text, "1", span=(4, 19))  # "quick brown fox"
    layer = 2
    seen = {}
    mod = tiny_host.adapter.down_proj(tiny_host.model, layer)
    handle = mod.register_forward_pre_hook(lambda m, args: seen.__setitem__("z", args[0][0].detach().clone()))
    try:
        feats = cett_features(tiny_host, Corpus([doc, Doc("Le chat dort.", "0")]), positive="1")
        tiny_host.model(**tiny_host.tokenizer(text, add_special_tokens=False, return_tensors="pt"))
    finally:
        handle.remove()
    w = mod.weight.detach()
    mask = span_token_mask(tiny_host.tokenizer, doc, "auto", 256)
    assert 0 < int(mask.sum()) < mask.numel()
    rows = []
    for t in torch.nonzero(mask).flatten().tolist():
        z = seen["z"][t]
        rows.append(torch.stack([(w * (z * torch.eye(len(z))[j])).sum(1).norm() for j in range(len(z))])
                    / (w @ z).norm())
    want = torch.stack(rows).mean(0)
    got = torch.from_numpy(feats.x[0]).reshape(tiny_host.n_layers, tiny_host.d_ff)[layer]
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
    assert feats.y.tolist() == [1, 0]


def test_extractor_end_to_end_within_budget(tiny_host, tmp_path):
    spec = get_extractor("sparse-probe")
    assert spec.name == "sparse_probe"
    budget = 0.02  # of 4 x 128 neurons: at most 10
    ex = spec.run(tiny_host, _fr_en(), name="fr-probe", out_dir=tmp_path, positive="fr", budget=budget,
                  n_random=2, eval_tokens=300, force=True, progress=False)
    m = ex.report["fr-probe"]
    assert 0 < m["brick_neurons"] <= m["probe_neurons"] <= math.floor(budget * 4 * 128) == m["budget_neurons"]
    (brick,) = ex.bricks
    assert brick.size() == m["brick_neurons"]
    assert brick.meta.method == "sparse_probe" and brick.meta.routing.label == "fr"
    assert set(brick.meta.labels) == {"en", "fr"}
    weights = {(r["layer"], r["neuron"]): r["weight"] for r in brick.meta.metrics["weights"]}
    for layer, s in brick.neurons.items():
        assert (s.gain == 0).all()
        assert all(weights[(layer, i)] > 0 for i in s.indices.tolist())
    for key in ("held_out_accuracy", "held_out_auroc", "chosen_c"):
        assert isinstance(brick.meta.metrics[key], float)
    assert {"own", "other", "random"} <= set(brick.meta.metrics["ablation"])
    assert ex.artifacts["accuracy_vs_neurons"].is_file()
    json.dumps(ex.report)  # the report is JSON as the CLI prints it


def test_budget_too_small_for_any_probe_is_one_error(tiny_host):
    with pytest.raises(InvalidInputError, match="raise budget"):
        get_extractor("sparse_probe").run(tiny_host, _fr_en(), name="p", positive="fr", c_grid="1e-6", n_random=0,
                                          ablation=False, progress=False)


def test_positive_label_must_be_known(tiny_host):
    with pytest.raises(InvalidInputError, match="positive=LABEL"):
        get_extractor("sparse_probe").run(tiny_host, _fr_en(), name="p", progress=False)


def test_labelled_file_reads_binary_labels_and_spans(tmp_path):
    f = tmp_path / "labelled.jsonl"
    f.write_text('{"text": "yes it is", "label": true, "span": [4, 6]}\n{"text": "no", "label": 0}\n'
                 '{"text": "one", "label": 1}\n')
    docs = load_corpus(f)
    assert [(d.label, d.span) for d in docs] == [("1", (4, 6)), ("0", None), ("1", None)]
    assert docs.digest() != Corpus(Doc(d.text, d.label) for d in docs).digest()


@pytest.mark.parametrize("line, words", [
    ('{"text": "abc", "label": 1, "span": [2, 9]}', "'span' must be [start, end]"),
    ('{"text": "abc", "label": 1, "span": "1-2"}', "'span' must be [start, end]"),
    ('{"text": "abc", "label": [1]}', "'label' a string, true/false or an integer"),
    ('{"label": 1}', "with a 'text' field"),
])
def test_bad_labelled_file_is_one_error_naming_the_line(tmp_path, line, words):
    f = tmp_path / "labelled.jsonl"
    f.write_text('{"text": "fine", "label": 0}\n' + line + "\n")
    with pytest.raises(InvalidInputError) as err:
        load_corpus(f)
    assert f"{f}:2:" in str(err.value) and words in str(err.value) and err.value.fix
