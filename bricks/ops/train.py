"""Train and update LoRA bricks: PEFT's LoRA on the frozen host, a causal-LM loss, stored as a `lora` brick.

`train_lora(host, examples, options, name)` trains a new brick; `update_lora(host, parent, examples, options)`
continues training from a parent version (its A and B are the starting point). Both:
- split the examples into train and held-out by a stable hash of each record (never by position), and
  store the held-out loss before (plain host, or the parent) and after in the brick's metrics, the
  "after" measured through brickwork's own reference hooks on the stored brick, not on PEFT's model;
- put the loss on assistant turns only for chat examples (system and user turns are context), on every
  token for text examples;
- keep the brick local: each step also adds `locality_weight * KL(p_host || p_brick)`, token-averaged, on a
  few chunks of unrelated plain text (the train split of a corpus, the shipped one by default; the 20% that
  evaluation holds out is never used), the host's distribution taken from the same model with the adapter
  disabled. This is the KL-to-the-frozen-model penalty of Learning without Forgetting (Li & Hoiem 2016,
  https://arxiv.org/abs/1606.09282) and KL-regularised fine-tuning. Without it a brick trained on one task
  moved held-out perplexity of the shipped corpora by +4..+41% on the real host (bench/bench_ops.py); the
  default weight 3 came from a 40-step sweep of 0 / 1 / 3 there (json-extract, style). The same KL is
  also taken on the replies to a few unrelated chat requests per step (`locality_chat`: the shipped
  everyday prompts in bricks/data/chat by default, their train split only; the replies are the host's own
  greedy ones, generated once per host and cached), where the reply is predicted: every task is a chat,
  and plain text alone does not stop a brick from keying on the chat format. With the text part only, a
  span-qa brick alone raised json-extract's held-out loss 0.88 -> 1.03 and their `cat` merge kept 79.5% of
  json-extract's improvement (60-step bricks); with the chat part too, 96.2% (100 steps, bench/bench_ops.py);
- are deterministic for a seed (LoRA init, batch order) and resumable: a checkpoint (the trainable
  tensors, the optimizer's moments, the step) is written every `save_every` steps and on Ctrl-C, under a
  key of (host, data, options, parent, locality text), and the same call picks it up again.
PEFT does the LoRA part (injection, init, the adapted forward); the loop is a plain AdamW loop, small
batches with gradient accumulation, because on two CPU cores a trainer's machinery costs more than it gives.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, field_validator
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.errors import BrickError, InvalidInputError
from bricks.extract.options import ExtractorOptions, parse_options
from bricks.format import Brick, BrickMeta, RoutingKeys
from bricks.kinds.lora import LORA_MODULES, LoraModule
from bricks.ops.data import ChatExample, TextExample, split_heldout

PEFT_PREFIX = "base_model.model."
ADAPTER = "default"  # PEFT's adapter name
ROUTING_EXAMPLES = 32  # a trained brick's routing keys: this many of its training prompts
LOCALITY_SPLIT = 0.2  # the locality corpus's held-out share (corpus.split(0.2, seed=0), as evaluation holds out)
LOCALITY_MIN_TOKENS = 16  # shorter tail windows are dropped
CHAT_PROMPTS = Path(__file__).resolve().parents[1] / "data" / "chat" / "prompts.jsonl"


class TrainOptions(ExtractorOptions):
    """How a LoRA brick is trained (`brick train --opt KEY=VALUE`, or the named flags)."""

    rank: int = Field(8, ge=1, le=256, description="LoRA rank r.")
    alpha: float | None = Field(None, gt=0, description="LoRA alpha (scaling alpha/r); default 2r.")
    targets: list[str] = Field(["q_proj", "v_proj", "down_proj"], min_length=1,
                               description=f"Target module types, from: {', '.join(LORA_MODULES)}.")
    layers: list[int] | None = Field(None, description="Layers to adapt (default: all).")
    steps: int = Field(150, ge=1, le=100_000, description="Optimizer steps.")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Peak learning rate (linear warm-up, then linear decay).")
    warmup: float = Field(0.1, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    batch_size: int = Field(8, ge=1, le=512, description="Examples per micro-batch.")
    grad_accum: int = Field(1, ge=1, le=512, description="Micro-batches per optimizer step.")
    max_len: int = Field(256, ge=8, le=8192, description="Tokens per example (longer ones are cut).")
    dropout: float = Field(0.0, ge=0, lt=1, description="LoRA dropout.")
    weight_decay: float = Field(0.0, ge=0, le=1, description="AdamW weight decay.")
    heldout: float = Field(0.2, ge=0.05, le=0.5, description="Fraction of examples held out (by hash).")
    seed: int = Field(0, ge=0, description="Seed for the LoRA init and the batch order.")
    locality_weight: float = Field(3.0, ge=0, le=1000, description=(
        "Weight of the locality penalty KL(host || brick) on unrelated text, added to the task loss "
        "(0: off). Keeps the brick from changing text outside its task."))
    locality_corpus: str = Field("builtin", min_length=1, description=(
        "Unrelated text for the locality penalty: 'builtin' (the shipped corpora) or JSONL/text files and "
        "folders, comma-separated; only its train split is used."))
    locality_chunks: int = Field(2, ge=1, le=64, description="Unrelated-text chunks per optimizer step.")
    locality_tokens: int = Field(128, ge=LOCALITY_MIN_TOKENS, le=2048,
                                 description="Tokens per unrelated-text chunk.")
    locality_chat: str = Field("builtin", min_length=1, description=(
        "Unrelated chat requests for the locality penalty: 'builtin' (bricks/data/chat/prompts.jsonl), a JSONL "
        "file of {\"messages\": [... ending in a user turn]}, or 'none'; only its train split is used. The KL "
        "is taken on the host's own replies."))
    locality_chat_examples: int = Field(2, ge=1, le=64, description="Unrelated chat requests per optimizer step.")
    locality_reply_tokens: int = Field(48, ge=1, le=512,
                                       description="Tokens of the host's reply generated per chat request.")
    save_every: int = Field(50, ge=0, description="Checkpoint every N steps (0: only on interrupt).")

    @field_validator("targets", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [t.strip() for t in v.split(",") if t.strip()] if isinstance(v, str) else v

    @field_validator("targets")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = [t for t in v if t not in LORA_MODULES]
        if unknown:
            raise ValueError(f"unknown target module {unknown[0]!r}; use some of: {', '.join(LORA_MODULES)}")
        return sorted(set(v), key=LORA_MODULES.index)

    @field_validator("layers", mode="before")
    @classmethod
    def _split_layers(cls, v: Any) -> Any:
        return [int(x) for x in v.split(",") if x.strip()] if isinstance(v, str) else v

    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank

    def params(self) -> dict[str, Any]:
        return self.model_dump(exclude={"progress", "save_every"})


def train_options(raw: dict[str, Any] | TrainOptions | None) -> TrainOptions:
    return parse_options(TrainOptions, "train", raw)


# --- data -----------------------------------------------------------------------------------------------
@dataclass
class Encoded:
    input_ids: torch.Tensor  # [T] int64
    labels: torch.Tensor  # [T] int64, -100 where no loss

    @property
    def n_loss(self) -> int:
        return int((self.labels[1:] != -100).sum())


def encode(tokenizer, example: TextExample | ChatExample, max_len: int) -> Encoded:
    """Token ids and labels: every token of a text; the assistant turns of a chat (rendered by the host's
    chat template; a turn's tokens are where the conversation rendered up to it grows past the rendering
    that ends in the generation prompt)."""
    if isinstance(example, TextExample):
        ids = tokenizer(example.text, add_special_tokens=False)["input_ids"][:max_len]
        t = torch.tensor(ids, dtype=torch.long)
        return Encoded(t, t.clone())
    msgs = [m.model_dump() for m in example.messages]
    ids = _render_ids(tokenizer, msgs, generation_prompt=False)
    labels = [-100] * len(ids)
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        start = _common_prefix(_render_ids(tokenizer, msgs[:i], generation_prompt=True), ids)
        end = _common_prefix(_render_ids(tokenizer, msgs[: i + 1], generation_prompt=False), ids)
        labels[start:end] = ids[start:end]
    ids, labels = ids[:max_len], labels[:max_len]
    return Encoded(torch.tensor(ids, dtype=torch.long), torch.tensor(labels, dtype=torch.long))


def _render_ids(tokenizer, msgs: list[dict], generation_prompt: bool) -> list[int]:
    if not msgs:
        return []
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def encode_all(tokenizer, examples: list, max_len: int, what: str) -> list[Encoded]:
    out = [encode(tokenizer, ex, max_len) for ex in examples]
    kept = [e for e in out if e.n_loss > 0]
    if not kept:
        raise InvalidInputError(f"no {what} example has a token to learn from after cutting to {max_len} tokens",
                                "raise --max-len or shorten the prompts before the assistant turns")
    return kept


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(e.input_ids) for e in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, e in enumerate(items):
        n = len(e.input_ids)
        ids[row, :n], labels[row, :n], mask[row, :n] = e.input_ids, e.labels, 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def _indices(n: int, seed: int, first: int, count: int) -> list[int]:
    """Examples `first .. first+count` of an endless stream whose epoch e is a permutation seeded by
    (seed, e): a pure function of the position, so a resumed run sees the same batches."""
    out, pos = [], first
    while len(out) < count:
        epoch, within = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        take = min(count - len(out), n - within)
        out += perm[within: within + take].tolist()
        pos += take
    return out


@torch.no_grad()
def mean_loss(model: torch.nn.Module, data: list[Encoded], pad_id: int, batch_size: int = 16) -> float:
    """Token-mean cross-entropy of the labelled tokens."""
    total, count = 0.0, 0
    for i in range(0, len(data), batch_size):
        chunk = data[i: i + batch_size]
        batch = collate(chunk, pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        nll = torch.nn.functional.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels.flatten(),
                                                ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((labels != -100).sum())
    return total / max(count, 1)


def brick_loss(host, data: list[Encoded], bricks: list[Brick]) -> float:
    """Held-out loss with `bricks` applied by brickwork's reference hooks (the served semantics)."""
    assembly = assemble(host.ref, [BrickUse(b) for b in bricks])
    with assembly_applied(host.model, host.adapter, assembly):
        return mean_loss(host.model, data, host.tokenizer.pad_token_id)


# --- locality ------------------------------------------------------------------------------------------
def locality_data(tokenizer, opts: TrainOptions) -> tuple[list[Encoded], str]:
    """Windows of `locality_tokens` tokens cut from the train split of the locality corpus, and that split's
    digest (part of the run key). The split is the one evaluation uses, so its held-out documents stay unseen."""
    from bricks.corpus import BUILTIN, load_corpus

    spec = opts.locality_corpus.strip()
    sources = BUILTIN if spec == BUILTIN else [s.strip() for s in spec.split(",") if s.strip()]
    docs, _ = load_corpus(sources).split(LOCALITY_SPLIT, seed=0)
    width = opts.locality_tokens
    chunks = []
    for doc in docs:
        ids = tokenizer(doc.text, add_special_tokens=False)["input_ids"]
        for start in range(0, len(ids), width):
            window = ids[start: start + width]
            if len(window) >= LOCALITY_MIN_TOKENS:
                t = torch.tensor(window, dtype=torch.long)
                chunks.append(Encoded(t, t))
    if not chunks:
        raise InvalidInputError(f"the locality corpus {spec!r} has no train-split text of "
                                f"{LOCALITY_MIN_TOKENS}+ tokens",
                                "give a larger corpus with --opt locality_corpus=..., or turn the penalty off "
                                "with --opt locality_weight=0")
    return chunks, docs.digest()


def chat_locality_data(host, opts: TrainOptions, progress: bool = False) -> tuple[list[Encoded], str]:
    """The train split of the locality chat prompts, each with the host's own greedy reply (labels on the
    reply), and a digest of prompts and replies (part of the run key). Replies are generated once per
    (host, prompts, reply length) and cached as JSON."""
    from bricks.host import cache_dir
    from bricks.ops.data import file_digest, read_chat_prompts

    spec = opts.locality_chat.strip()
    if spec == "none":
        return [], ""
    path = CHAT_PROMPTS if spec == "builtin" else Path(spec)
    prompts, _ = split_heldout(read_chat_prompts(path), LOCALITY_SPLIT)
    if not prompts:
        raise InvalidInputError(f"the locality chat prompts {str(path)!r} have no train-split prompt",
                                "give more prompts, or --opt locality_chat=none")
    key = hashlib.sha256(json.dumps([host.ref.fingerprint, file_digest(path), opts.locality_reply_tokens])
                         .encode()).hexdigest()[:16]
    cache = cache_dir() / "locality-replies" / f"{key}.json"
    replies = json.loads(cache.read_text()) if cache.is_file() else None
    if not isinstance(replies, list) or len(replies) != len(prompts):
        replies = host_replies(host, [[m.model_dump() for m in p.messages] for p in prompts],
                               opts.locality_reply_tokens, progress)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(".tmp")
        tmp.write_text(json.dumps(replies))
        tmp.replace(cache)
    digest = hashlib.sha256(json.dumps([key, replies]).encode()).hexdigest()
    return reply_examples(host.tokenizer, prompts, replies, opts.max_len), digest


def reply_examples(tokenizer, prompts: list, replies: list[str], max_len: int) -> list[Encoded]:
    """Each chat prompt with its reply as the assistant turn, encoded with labels on the reply only
    (empty replies, and those cut away by `max_len`, are dropped)."""
    from bricks.ops.data import ChatExample, Message

    out = []
    for prompt, reply in zip(prompts, replies, strict=True):
        if reply:
            ex = ChatExample(messages=[*prompt.messages, Message(role="assistant", content=reply)])
            enc = encode(tokenizer, ex, max_len)
            if enc.n_loss:
                out.append(enc)
    return out


def host_replies(host, conversations: list[list[dict]], max_new_tokens: int, progress: bool) -> list[str]:
    """The plain host's greedy replies, with a progress bar (a minute or so for the shipped prompts on CPU)."""
    from bricks.steer.generation import generate_chat

    batch = 16
    out: list[str] = []
    for i in tqdm(range(0, len(conversations), batch), desc="host replies for the locality penalty",
                  unit="batch", disable=not progress):
        out += generate_chat(host, conversations[i: i + batch], max_new_tokens=max_new_tokens, batch_size=batch)
    return out


def locality_kl(model, batch: dict[str, torch.Tensor], replies_only: bool = False) -> torch.Tensor:
    """Token-mean KL(p_host || p_model) over the batch's real positions (or, `replies_only`, the positions
    that predict a labelled token), differentiable in the adapter; the host is the same PEFT model with its
    adapter disabled, so no second copy of the weights is held."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad(), model.disable_adapter():
        host_logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    per_token = torch.nn.functional.kl_div(logp, host_logp, log_target=True, reduction="none").sum(-1)
    if replies_only:
        weight = torch.zeros_like(per_token)
        weight[:, :-1] = (batch["labels"][:, 1:] != -100).to(per_token.dtype)
    else:
        weight = mask.to(per_token.dtype)
    return (per_token * weight).sum() / weight.sum().clamp(min=1)


# --- PEFT in and out -------------------------------------------------------------------------------------
def _peft_model(host, opts: TrainOptions, parent: Brick | None):
    """A copy of the host with PEFT LoRA layers: fresh (seeded init) or holding the parent's A and B."""
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(host.model).float()
    if parent is None:
        torch.manual_seed(opts.seed)
        config = LoraConfig(r=opts.rank, lora_alpha=opts.lora_alpha(), target_modules=list(opts.targets),
                            layers_to_transform=opts.layers, lora_dropout=opts.dropout, bias="none")
        return get_peft_model(base, config)
    mods = parent.lora
    config = LoraConfig(r=max(m.rank for m in mods.values()), target_modules=sorted(mods),
                        rank_pattern={k: m.rank for k, m in mods.items()},
                        alpha_pattern={k: m.alpha for k, m in mods.items()},
                        lora_dropout=opts.dropout, bias="none")
    model = get_peft_model(base, config)
    for mod, layer in _lora_layers(model).items():
        layer.lora_A[ADAPTER].weight.data.copy_(mods[mod].A)
        layer.lora_B[ADAPTER].weight.data.copy_(mods[mod].B)
    return model


def _lora_layers(model) -> dict[str, Any]:
    from peft.tuners.lora import LoraLayer

    return {name.removeprefix(PEFT_PREFIX): m for name, m in model.named_modules()
            if isinstance(m, LoraLayer) and ADAPTER in m.lora_A}


def modules_from_peft(model) -> dict[str, LoraModule]:
    out = {}
    for mod, layer in _lora_layers(model).items():
        A = layer.lora_A[ADAPTER].weight.detach().float().clone()
        B = layer.lora_B[ADAPTER].weight.detach().float().clone()
        out[mod] = LoraModule(A, B, float(layer.scaling[ADAPTER]) * A.shape[0])
    return out


# --- checkpoints -----------------------------------------------------------------------------------------
def run_key(host, data_digest: str, opts: TrainOptions, parent: Brick | None, name: str,
            locality_digest: str = "") -> str:
    parent_id = "" if parent is None else hashlib.sha256(parent.to_bytes()).hexdigest()
    blob = json.dumps([host.ref.fingerprint, data_digest, opts.params(), parent_id, name, locality_digest],
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _save_checkpoint(folder: Path, model, optimizer, step: int, history: dict[str, list[float]]) -> None:
    tensors = {f"param.{n}": p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            for key, v in optimizer.state.get(p, {}).items():
                if torch.is_tensor(v):
                    tensors[f"optim.{i}.{j}.{key}"] = v.detach().contiguous().reshape(v.shape)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file(tensors, tmp / "state.safetensors")
    (tmp / "state.json").write_text(json.dumps({"step": step, **history}))
    if folder.exists():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    tmp.rename(folder)


def _load_checkpoint(folder: Path, model, optimizer) -> tuple[int, dict[str, list[float]]]:
    """(step, {"history": task losses, "locality_history": KL per step}); step 0 and empty lists if none."""
    if not (folder / "state.json").is_file():
        return 0, {"history": [], "locality_history": [], "chat_locality_history": []}
    state = json.loads((folder / "state.json").read_text())
    tensors = load_file(folder / "state.safetensors")
    params = dict(model.named_parameters())
    for key, t in tensors.items():
        if key.startswith("param."):
            params[key.removeprefix("param.")].data.copy_(t)
    for i, group in enumerate(optimizer.param_groups):
        for j, p in enumerate(group["params"]):
            st = {key.split(".", 3)[3]: t for key, t in tensors.items() if key.startswith(f"optim.{i}.{j}.")}
            if st:
                optimizer.state[p] = st
    return int(state["step"]), {"history": list(state["history"]),
                                "locality_history": list(state.get("locality_history", [])),
                                "chat_locality_history": list(state.get("chat_locality_history", []))}


# --- the loop --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    brick: Brick
    checkpoint: Path


class TrainingInterrupted(BrickError):
    status = 503


def _lr_at(step: int, opts: TrainOptions) -> float:
    warm = max(1, int(opts.warmup * opts.steps))
    if step < warm:
        return opts.lr * (step + 1) / warm
    return opts.lr * max(0.0, (opts.steps - step) / max(1, opts.steps - warm))


def _fit(model, train: list[Encoded], opts: TrainOptions, pad_id: int, ckpt: Path, progress: bool,
         locality: list[Encoded] | None = None, chat: list[Encoded] | None = None) -> dict:
    """The AdamW loop: per step, the token-mean task loss over `grad_accum` micro-batches, plus
    `locality_weight` times the KL on `locality_chunks` windows of `locality` and on the replies of
    `locality_chat_examples` of the `chat` requests (none: no such term)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=opts.lr, weight_decay=opts.weight_decay)
    step, histories = _load_checkpoint(ckpt, model, optimizer)
    history, kl_history = histories["history"], histories["locality_history"]
    chat_history = histories.setdefault("chat_locality_history", [])
    resumed = step
    model.train()
    tokens, locality_tokens, started = 0, 0, time.perf_counter()
    bar = tqdm(total=opts.steps, initial=step, desc="training", unit="step", disable=not progress)
    per_step = opts.batch_size * opts.grad_accum
    try:
        while step < opts.steps:
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, opts)
            loss_sum, n_sum = 0.0, 0
            for micro in range(opts.grad_accum):
                idx = _indices(len(train), opts.seed, step * per_step + micro * opts.batch_size, opts.batch_size)
                batch = collate([train[i] for i in idx], pad_id)
                n = int((batch["labels"][:, 1:] != -100).sum())
                out = model(**batch)
                (out.loss * n).backward()
                loss_sum += out.loss.item() * n
                n_sum += n
                tokens += int(batch["attention_mask"].sum())
            for p in trainable:
                if p.grad is not None:
                    p.grad.div_(max(n_sum, 1))
            kl = None
            if locality:
                # its own stream of windows, a pure function of the step like the task batches (resumable)
                idx = _indices(len(locality), opts.seed, step * opts.locality_chunks, opts.locality_chunks)
                kl = locality_kl(model, collate([locality[i] for i in idx], pad_id))
                (opts.locality_weight * kl).backward()
                locality_tokens += sum(len(locality[i].input_ids) for i in idx)
            chat_kl = None
            if chat:
                idx = _indices(len(chat), opts.seed + 1, step * opts.locality_chat_examples,
                               opts.locality_chat_examples)
                chat_kl = locality_kl(model, collate([chat[i] for i in idx], pad_id), replies_only=True)
                (opts.locality_weight * chat_kl).backward()
                locality_tokens += sum(len(chat[i].input_ids) for i in idx)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            history.append(loss_sum / max(n_sum, 1))
            if kl is not None:
                kl_history.append(kl.item())
            if chat_kl is not None:
                chat_history.append(chat_kl.item())
            step += 1
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(loss=f"{history[-1]:.3f}", **({"kl": f"{kl_history[-1]:.4f}"} if kl is not None else {}),
                            tok_s=f"{rate:.0f}")
            bar.update(1)
            if opts.save_every and step % opts.save_every == 0 and step < opts.steps:
                _save_checkpoint(ckpt, model, optimizer, step, histories)
    except KeyboardInterrupt:
        _save_checkpoint(ckpt, model, optimizer, step, histories)
        raise TrainingInterrupted(f"training was interrupted at step {step} of {opts.steps}; nothing was published",
                                  f"run the same command again to resume from the checkpoint in {ckpt}") from None
    finally:
        bar.close()
    model.eval()
    seconds = time.perf_counter() - started
    out = {"steps": step, "resumed_from_step": resumed, **_first_last("train_loss", history),
           "train_tokens": tokens, "train_seconds": round(seconds, 2),
           "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
    if locality:
        out.update(_first_last("locality_kl", kl_history), locality_tokens=locality_tokens)
    if chat:
        out.update(_first_last("chat_locality_kl", chat_history), locality_tokens=locality_tokens)
    return out


def _first_last(name: str, history: list[float]) -> dict[str, float | None]:
    """The first value and the mean of the last ten."""
    last = history[-10:]
    return {f"{name}_first": history[0] if history else None,
            f"{name}_last": float(sum(last) / len(last)) if last else None}


def train_lora(host, examples: list, options: dict | TrainOptions | None, name: str, *, data_digest: str,
               parent: Brick | None = None, checkpoint_root: Path | None = None, description: str = "",
               progress: bool = True) -> TrainResult:
    """A LoRA brick trained on `examples` (new, or continuing `parent`); nothing is written but the checkpoint."""
    from bricks.host import cache_dir

    opts = train_options(options)
    if parent is not None and parent.kind != "lora":
        raise InvalidInputError(f"brick {parent.name!r} is a {parent.kind} brick; LoRA training continues a lora brick",
                                "update neuron bricks by re-extraction (brick update on a neurons brick)")
    _check_layers(opts, host)
    train_ex, held_ex = split_heldout(examples, opts.heldout)
    if len(train_ex) < 2 or not held_ex:
        raise InvalidInputError(f"{len(examples)} examples are too few to train and hold some out "
                                f"({len(train_ex)} train, {len(held_ex)} held out)",
                                "give at least ~20 examples (a few hundred is better)")
    tok = host.tokenizer
    train = encode_all(tok, train_ex, opts.max_len, "training")
    held = encode_all(tok, held_ex, opts.max_len, "held-out")
    locality, locality_digest = locality_data(tok, opts) if opts.locality_weight > 0 else ([], "")
    chat, chat_digest = (chat_locality_data(host, opts, progress and opts.progress) if opts.locality_weight > 0
                         else ([], ""))
    key = run_key(host, data_digest, opts, parent, name, locality_digest + chat_digest)
    ckpt = (checkpoint_root or cache_dir() / "train") / key
    before = brick_loss(host, held, [parent] if parent is not None else [])
    model = _peft_model(host, opts, parent)
    fit = _fit(model, train, opts, tok.pad_token_id, ckpt, progress and opts.progress, locality, chat)
    modules = modules_from_peft(model)
    del model
    meta = BrickMeta(name=name, kind="lora", host=host.ref, method="update-lora" if parent else "train-lora",
                     params={**opts.params(), "data_digest": data_digest},
                     metrics={}, routing=RoutingKeys(texts=_routing_texts(train_ex)),
                     description=description or (parent.meta.description if parent else ""),
                     labels=list(parent.meta.labels) if parent else [])
    brick = Brick(meta, modules)
    brick.validate(host.ref)
    after = brick_loss(host, held, [brick])
    brick.meta.metrics = {"heldout_loss_before": round(before, 5), "heldout_loss_after": round(after, 5),
                          "heldout_improvement": round(before - after, 5), "n_train": len(train),
                          "n_heldout": len(held), **fit}
    return TrainResult(brick, ckpt)


def _check_layers(opts: TrainOptions, host) -> None:
    bad = [layer for layer in opts.layers or [] if not 0 <= layer < host.n_layers]
    if bad:
        raise InvalidInputError(f"layer {bad[0]} does not exist (the host has {host.n_layers} layers)",
                                f"use layers between 0 and {host.n_layers - 1}")


def _routing_texts(examples: list) -> list[str]:
    texts = []
    for ex in examples[:ROUTING_EXAMPLES]:
        if isinstance(ex, TextExample):
            texts.append(ex.text[:300])
        else:
            user = [m.content for m in ex.messages if m.role == "user"]
            texts.append((user[0] if user else ex.messages[0].content)[:300])
    return texts


def discard_checkpoint(path: Path) -> None:
    """Remove a finished run's checkpoint (after its brick is published)."""
    if path.is_dir():
        for f in path.iterdir():
            f.unlink()
        path.rmdir()


