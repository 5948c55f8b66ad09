"""The rare-token brick on SmolLM2-135M: the issue's bars, on held-out text, by true ablation."""

import pytest
import torch

from bricks.compose import BrickUse
from bricks.corpus import Corpus, load_corpus
from bricks.extract import get_extractor
from bricks.extract.rare_tokens import HeadReplay, TokenSplit, cache_layer
from bricks.kinds.neurons import compose_neurons
from tests.bricks.test_rare_tokens import _full_forward_ce

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def extraction(real_host, tmp_path_factory):
    corpus = load_corpus("builtin")
    out = tmp_path_factory.mktemp("rare")
    # A 6k-token extraction sample and a 3k-token held-out sample keep this under ~2 minutes on 2 cores.
    ex = get_extractor("rare_tokens").run(real_host, corpus, name="rare-tokens", max_tokens=6000, eval_tokens=3000,
                                          confirm_top=40, confirm_positions=512, out_dir=str(out), progress=False,
                                          force=True)  # published either way: the bars are asserted below
    return corpus, ex


def test_rare_token_brick_meets_the_bars(real_host, extraction):
    _, ex = extraction
    (brick,) = ex.bricks
    m = brick.meta.metrics
    ev = m["evaluation"]
    layer = real_host.n_layers - 1
    assert brick.layers() == [layer] and m["brick_size"] <= 0.05 * real_host.d_ff
    assert ev["rare_positions"] >= 300 and ev["common_positions"] >= 300
    assert ev["brick"]["rare_dloss"] > 0.2  # nats, mean over held-out rare-token positions
    assert ev["rare_over_common"] >= 10, ev
    assert ev["rare_over_random"] >= 10, ev
    assert all(m["bars"].values()) and not ex.skipped
    assert ex.artifacts["influence_curve"].is_file()


def test_replay_is_true_ablation_on_the_real_host(real_host, extraction):
    """The cached-head shortcut gives the losses of a full forward with the brick applied."""
    corpus, ex = extraction
    (brick,) = ex.bricks
    layer = real_host.n_layers - 1
    s = brick.neurons[layer]
    docs = Corpus(sorted(corpus.split(0.2)[1], key=lambda d: len(d.text))[:2])
    docs = Corpus(type(d)(d.text[:400], d.label) for d in docs)
    vocab = real_host.model.get_output_embeddings().weight.shape[0]
    split = TokenSplit(torch.ones(vocab, dtype=torch.bool), torch.zeros(vocab, dtype=torch.bool))
    cache = cache_layer(real_host, docs, split, layer)
    mean = torch.zeros(real_host.d_ff)
    mean[s.indices] = s.offset
    got = HeadReplay(real_host, layer, mean).ablated(cache, [s.indices])[0]
    nmap = compose_neurons([BrickUse(brick)], real_host.n_layers, real_host.d_ff)
    want = _full_forward_ce(real_host, docs, nmap) - _full_forward_ce(real_host, docs)
    assert torch.allclose(got, want, atol=2e-3), (got - want).abs().max()
