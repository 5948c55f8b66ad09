"""LoRA training and update on the tiny host: the stored brick is what PEFT trained, loss goes down,
runs are deterministic and resumable, the locality penalty keeps unrelated text closer to the host,
and bad input is refused before any work."""

from __future__ import annotations

import pytest
import torch

from bricks.errors import InvalidInputError
from bricks.ops import train as train_mod
from bricks.ops.data import ChatExample, TextExample
from bricks.ops.train import (
    TrainingInterrupted,
    TrainOptions,
    collate,
    encode,
    locality_data,
    locality_kl,
    train_lora,
    train_options,
)

OPTS = {"steps": 25, "rank": 4, "lr": 1e-2, "batch_size": 4, "progress": False}


@pytest.fixture(autouse=True, scope="module")
def _own_cache(tmp_path_factory):
    """The locality penalty's cached host replies go to a folder of this module, not the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("BRICK_CACHE", str(tmp_path_factory.mktemp("brick-cache")))
    yield
    mp.undo()


def chat(i: int) -> ChatExample:
    return ChatExample.model_validate({"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": f"what does fox {i} do"},
        {"role": "assistant", "content": f"the fox {i} jumps over the dog"}]})


EXAMPLES = [chat(i) for i in range(60)]


def run(host, tmp_path, examples=EXAMPLES, options=None, **kw):
    return train_lora(host, examples, {**OPTS, **(options or {})}, "fox", data_digest="sha256:test",
                      checkpoint_root=tmp_path / "ckpt", progress=False, **kw)


def test_loss_is_on_assistant_turns_only(tiny_host):
    e = encode(tiny_host.tokenizer, chat(3), 512)
    learned = tiny_host.tokenizer.decode([t for t, lab in zip(e.input_ids.tolist(), e.labels.tolist(), strict=True)
                                          if lab != -100])
    assert learned.startswith("the fox 3 jumps over the dog")
    assert "what does" not in learned and "Answer briefly" not in learned


def test_text_examples_learn_every_token(tiny_host):
    e = encode(tiny_host.tokenizer, TextExample(text="The quick brown fox."), 512)
    assert (e.labels == e.input_ids).all()


def test_training_lowers_heldout_loss_and_the_brick_is_what_peft_trained(tiny_host, tmp_path, monkeypatch):
    kept = {}
    real_fit = train_mod._fit

    def fit_and_keep(model, *a, **kw):
        out = real_fit(model, *a, **kw)
        kept["model"] = model
        return out

    monkeypatch.setattr(train_mod, "_fit", fit_and_keep)
    result = run(tiny_host, tmp_path)
    m = result.brick.meta.metrics
    assert m["heldout_loss_after"] < m["heldout_loss_before"] - 0.1
    assert m["n_train"] + m["n_heldout"] == len(EXAMPLES) and m["tokens_per_s"] > 0
    assert result.brick.meta.params["data_digest"] == "sha256:test"
    assert len(result.brick.meta.routing.texts) > 0
    # brickwork's hooks on the stored brick give PEFT's own logits
    ids = encode(tiny_host.tokenizer, chat(1), 512).input_ids[None]
    with torch.no_grad():
        want = kept["model"](input_ids=ids).logits
    from bricks.apply import assembly_applied
    from bricks.compose import BrickUse, assemble

    with torch.no_grad(), assembly_applied(tiny_host.model, tiny_host.adapter,
                                           assemble(tiny_host.ref, [BrickUse(result.brick)])):
        got = tiny_host.model(input_ids=ids).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_same_seed_same_brick_and_other_seed_another(tiny_host, tmp_path):
    a = run(tiny_host, tmp_path / "a").brick
    b = run(tiny_host, tmp_path / "b").brick
    c = run(tiny_host, tmp_path / "c", options={"seed": 1}).brick
    mod = next(iter(a.parts))
    assert torch.equal(a.parts[mod].A, b.parts[mod].A) and torch.equal(a.parts[mod].B, b.parts[mod].B)
    assert not torch.equal(a.parts[mod].A, c.parts[mod].A)


def test_interrupted_run_resumes_to_the_same_brick(tiny_host, tmp_path, monkeypatch):
    whole = run(tiny_host, tmp_path / "whole", options={"save_every": 0}).brick
    calls = {"n": 0}
    real_step = torch.optim.AdamW.step

    def interrupt_at_ten(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real_step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupt_at_ten)
    with pytest.raises(TrainingInterrupted, match="step 10 of 25.*nothing was published"):
        run(tiny_host, tmp_path / "cut", options={"save_every": 0})
    monkeypatch.setattr(torch.optim.AdamW, "step", real_step)
    resumed = run(tiny_host, tmp_path / "cut", options={"save_every": 0})
    assert resumed.brick.meta.metrics["resumed_from_step"] == 10
    mod = next(iter(whole.parts))
    torch.testing.assert_close(resumed.brick.parts[mod].B, whole.parts[mod].B, atol=1e-6, rtol=1e-5)


def test_update_continues_from_the_parent(tiny_host, tmp_path):
    parent = run(tiny_host, tmp_path / "p").brick
    more = [ChatExample.model_validate({"messages": [{"role": "user", "content": f"cat {i}?"},
                                                     {"role": "assistant", "content": f"the cat {i} sleeps"}]})
            for i in range(40)]
    child = run(tiny_host, tmp_path / "c", examples=more, parent=parent).brick
    m = child.meta.metrics
    assert child.meta.method == "update-lora"
    assert set(child.parts) == set(parent.parts)
    assert m["heldout_loss_after"] < m["heldout_loss_before"]
    # "before" is the parent on the new data, not the plain host
    plain = run(tiny_host, tmp_path / "n", examples=more).brick.meta.metrics["heldout_loss_before"]
    assert m["heldout_loss_before"] != pytest.approx(plain)


@pytest.mark.parametrize(("options", "message"), [
    ({"rank": 0}, "rank"), ({"targets": "q_proj,attn"}, "unknown target module 'attn'"),
    ({"lr": -1}, "lr"), ({"steps": 0}, "steps"), ({"rnak": 4}, "rnak"),
    ({"locality_weight": -1}, "locality_weight"), ({"locality_tokens": 4}, "locality_tokens"),
    ({"locality_chunks": 0}, "locality_chunks"),
])
def test_bad_options_are_refused_up_front(options, message):
    with pytest.raises(InvalidInputError, match=message):
        train_options(options)


def test_bad_layers_and_too_few_examples(tiny_host, tmp_path):
    with pytest.raises(InvalidInputError, match="layer 9 does not exist"):
        run(tiny_host, tmp_path, options={"layers": [9]})
    with pytest.raises(InvalidInputError, match="too few"):
        run(tiny_host, tmp_path, examples=EXAMPLES[:2])


def test_update_of_a_neuron_brick_is_not_lora_training(tiny_host, tmp_path):
    from tests.conftest import labelled_brick

    with pytest.raises(InvalidInputError, match="re-extraction"):
        run(tiny_host, tmp_path, parent=labelled_brick(tiny_host))


# --- locality --------------------------------------------------------------------------------------------
def test_locality_options_parse_from_cli_text_and_are_described():
    from bricks.extract.options import describe_option, option_pairs

    opts = train_options(option_pairs(["locality_weight=3", "locality-tokens=64"]))
    assert opts.locality_weight == 3.0 and opts.locality_tokens == 64
    assert train_options({}).locality_weight > 0  # on by default
    assert "KL" in describe_option(TrainOptions, "locality_weight")
    assert "locality_weight" in train_options({"locality_weight": 0}).params()


def heldout_chunks(host, n: int = 8):
    """Windows of the shipped corpora's held-out split: text the penalty never saw."""
    from bricks.corpus import load_corpus

    _, held = load_corpus("builtin").split(0.2, seed=0)
    ids = host.tokenizer(" ".join(d.text for d in held[:40]), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[: n * 64]).reshape(n, 64)


def kl_to_host(host, brick, ids) -> float:
    from bricks.apply import assembly_applied
    from bricks.compose import BrickUse, assemble

    with torch.no_grad():
        plain = host.model(input_ids=ids).logits.float().log_softmax(-1)
        with assembly_applied(host.model, host.adapter, assemble(host.ref, [BrickUse(brick)])):
            adapted = host.model(input_ids=ids).logits.float().log_softmax(-1)
    return float(torch.nn.functional.kl_div(adapted, plain, log_target=True, reduction="none").sum(-1).mean())


def test_locality_kl_is_zero_at_step_zero_and_recorded(tiny_host, tmp_path):
    m = run(tiny_host, tmp_path, options={"steps": 10}).brick.meta.metrics
    assert m["locality_kl_first"] == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at 0: the host itself
    assert m["locality_kl_last"] > 0 and m["locality_tokens"] > 0
    off = run(tiny_host, tmp_path / "off", options={"steps": 2, "locality_weight": 0}).brick.meta.metrics
    assert "locality_kl_first" not in off


def test_locality_kl_is_differentiable_in_the_adapter_only(tiny_host):
    from bricks.ops.train import _peft_model

    model = _peft_model(tiny_host, train_options({"rank": 4}), None)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    chunks, digest = locality_data(tiny_host.tokenizer, train_options({"locality_tokens": 32}))
    assert digest.startswith("sha256:") and all(len(c.input_ids) <= 32 for c in chunks)
    kl = locality_kl(model, collate(chunks[:2], tiny_host.tokenizer.pad_token_id))
    kl.backward()
    assert kl.item() > 0
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert grads and all("lora_" in n for n in grads)
    assert all(p.requires_grad for n, p in model.named_parameters() if "lora_" in n)  # disable_adapter restored them


def test_locality_penalty_keeps_unrelated_text_closer_to_the_host(tiny_host, tmp_path):
    options = {"steps": 20, "lr": 3e-2, "locality_tokens": 64, "locality_chunks": 4}
    free = run(tiny_host, tmp_path / "free", options={**options, "locality_weight": 0}).brick
    kept = run(tiny_host, tmp_path / "kept", options={**options, "locality_weight": 10}).brick
    ids = heldout_chunks(tiny_host)
    assert kl_to_host(tiny_host, kept, ids) < 0.5 * kl_to_host(tiny_host, free, ids)
    assert kept.meta.metrics["heldout_loss_after"] < kept.meta.metrics["heldout_loss_before"] - 0.1


# --- chat locality ---------------------------------------------------------------------------------------
def test_chat_locality_holds_the_hosts_replies_to_train_split_prompts_and_caches_them(tiny_host, tmp_path,
                                                                                       monkeypatch):
    from bricks.ops.data import read_chat_prompts, split_heldout
    from bricks.ops.train import CHAT_PROMPTS, chat_locality_data

    monkeypatch.setenv("BRICK_CACHE", str(tmp_path / "cache"))
    opts = train_options({"locality_reply_tokens": 6})
    chat_data, digest = chat_locality_data(tiny_host, opts)
    train_prompts, held_prompts = split_heldout(read_chat_prompts(CHAT_PROMPTS), 0.2)
    assert held_prompts and 0 < len(chat_data) <= len(train_prompts)
    for e in chat_data:  # the loss mask covers the generated reply only, never the prompt
        reply = tiny_host.tokenizer.decode(e.input_ids[e.labels != -100])
        assert 0 < (e.labels != -100).sum() <= 6 + 2, reply
    held_texts = {p.messages[-1].content for p in held_prompts}
    rendered = [tiny_host.tokenizer.decode(e.input_ids) for e in chat_data]
    assert not any(t in r for t in held_texts for r in rendered)  # evaluation's prompts are never trained on

    def no_generation(*a, **k):
        raise AssertionError("the replies were generated again instead of read from the cache")

    monkeypatch.setattr(train_mod, "host_replies", no_generation)
    again, digest_again = chat_locality_data(tiny_host, opts)
    assert digest_again == digest and [e.input_ids.tolist() for e in again] == [e.input_ids.tolist()
                                                                                 for e in chat_data]
    assert chat_locality_data(tiny_host, train_options({"locality_chat": "none"})) == ([], "")


def test_chat_locality_kl_is_on_reply_positions_and_recorded(tiny_host, tmp_path, monkeypatch):
    monkeypatch.setenv("BRICK_CACHE", str(tmp_path / "cache"))
    m = run(tiny_host, tmp_path, options={"steps": 6, "locality_reply_tokens": 6}).brick.meta.metrics
    assert m["chat_locality_kl_first"] == pytest.approx(0.0, abs=1e-6)
    assert m["chat_locality_kl_last"] > 0
    batch = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long),
             "labels": torch.tensor([[-100, -100, 7, 8]])}

    class Fake(torch.nn.Module):  # logits differ from the "host" at position 0 only
        def __init__(self):
            super().__init__()
            self.off = False

        def disable_adapter(self):
            import contextlib

            @contextlib.contextmanager
            def ctx():
                self.off = True
                yield
                self.off = False
            return ctx()

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(1, 4, 10)
            if not self.off:
                logits[0, 0, 3] = 5.0
            return type("O", (), {"logits": logits})()

    assert locality_kl(Fake(), batch, replies_only=True).item() == pytest.approx(0.0, abs=1e-7)
    assert locality_kl(Fake(), batch).item() > 0


def test_a_bad_chat_prompts_file_is_one_clear_error(tiny_host, tmp_path):
    from bricks.ops.train import chat_locality_data
    from bricks.yamlconfig import ConfigError

    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n')
    with pytest.raises(ConfigError, match=r"prompts.jsonl:1.*ends with a non-empty user turn"):
        chat_locality_data(tiny_host, train_options({"locality_chat": str(bad)}))
