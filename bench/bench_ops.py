"""Customized bricks on the real host: train each shipped task, merge pairs of trained bricks, prints JSON.

    .venv/bin/python bench/bench_ops.py [--steps 150] [--tasks json-extract,style,span-qa] [--out bench-ops.json]
        [--lr 1e-3] [--locality-weight W] [--targets q_proj,v_proj] [--rank 8]

Per task (the held-out 20% of its examples, split by record hash, never trained on):
- held-out loss before / after, training tokens/s, the locality penalty's KL at the first and last steps;
- the task metric of greedy replies to the held-out prompts, plain host vs the brick;
- held-out perplexity change on the shipped corpora (bricks/data, the documents extraction holds out):
  a brick for one task should not change text elsewhere (target: |Δ| <= 2%). Training's locality penalty
  (TrainOptions.locality_weight, default on) uses only the other, train split of those corpora;
- the same on chat: the mean KL(host || brick) where the host's own replies to the held-out split of the
  locality chat prompts (bricks/data/chat, never trained on) are predicted, and the share of those replies
  whose greedy tokens the brick keeps (token agreement, teacher-forced on the host's reply).
Merge, per pair of trained bricks A and B: for cat, linear, svd at half the summed rank, ties, dare_linear,
dare_ties and magnitude_prune, the share of each parent's held-out loss improvement the merge keeps,
(before - merged) / (before - parent) on that parent's held-out set (targets: cat/linear >= 95%, svd >= 90%);
and the max |Δlogit| between the cat merge and the assembly of A and B served together (no merge).
Two pairs are reported:
- json-extract + span-qa, the primary figures: a compatible pair. Each task is keyed to its own
  instruction and input (a sentence about a person to turn into JSON; a passage and a question), so one
  brick can do both and the merge should keep both improvements.
- json-extract + style, the pair that conflicts where each brick fires beyond its own prompts: style rewrites
  the reply to *any* question as three lowercase bullets, json-extract wants one line of JSON. Trained
  without the locality penalty, cat kept 32% / 91% of their improvements; with the penalty's text and chat
  parts each brick stays off the other's prompts, and cat kept 99.9% / 99.9% (100 steps). Named
  "conflicting" in the output for continuity.
Update (`--update-task`, default style: the task whose loss is furthest from zero, so more data can still
help): its examples are split in two halves by a hash of each record (salted, so unrelated to the held-out
split); v1 is trained on half A, v2 continues v1 on half B (`train_lora(..., parent=v1)`, what `brick update`
runs). Reported: the held-out loss of half B under the plain host, v1 and v2 (the target: v2 < v1), half A's
held-out loss under v1 and v2 (what the update forgets), and v2's lineage fields (parent, data digest,
parameters, seed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bricks.apply import assembly_applied  # noqa: E402
from bricks.compose import BrickUse, assemble  # noqa: E402
from bricks.corpus import load_corpus  # noqa: E402
from bricks.evaluate import label_perplexity  # noqa: E402
from bricks.host import load_host  # noqa: E402
from bricks.ops.data import file_digest, read_examples, split_heldout  # noqa: E402
from bricks.ops.merge import merge_bricks  # noqa: E402
from bricks.ops.tasks import TASKS, prompt_and_reference, task_metric  # noqa: E402
from bricks.ops.train import brick_loss, encode_all, train_lora  # noqa: E402
from bricks.profile import chunk_corpus  # noqa: E402
from bricks.steer.generation import generate_chat  # noqa: E402
from registry import Registry  # noqa: E402

PAIRS = [("json-extract", "span-qa", "compatible"), ("json-extract", "style", "conflicting")]
DEFAULT_TASKS = "json-extract,span-qa,style"  # the compatible pair first: its merge runs as soon as both exist
MERGES = [("cat", {}), ("linear", {}), ("svd", {"target_rank": "half"}), ("ties", {"density": 0.5}),
          ("dare_linear", {"density": 0.5}), ("dare_ties", {"density": 0.5}), ("magnitude_prune", {"density": 0.5})]


def heldout_corpus(host, max_docs: int = 8):
    """The shipped corpora's held-out documents (the emergent extractor's default split), chunked."""
    train, held = load_corpus("builtin").split(0.2, seed=0)
    docs = [d for lab in held.labels() for d in held.by_label(lab)[:max_docs]]
    return chunk_corpus(type(held)(docs), host.tokenizer, 256)


def heldout_chat(host) -> list:
    """The held-out split of the locality chat prompts, each with the plain host's greedy reply, encoded."""
    from bricks.ops.data import read_chat_prompts
    from bricks.ops.train import CHAT_PROMPTS, LOCALITY_SPLIT, host_replies, reply_examples

    _, held = split_heldout(read_chat_prompts(CHAT_PROMPTS), LOCALITY_SPLIT)
    replies = host_replies(host, [[m.model_dump() for m in p.messages] for p in held], 48, progress=False)
    return reply_examples(host.tokenizer, held, replies, 256)


@torch.no_grad()
def chat_locality(host, data: list, bricks: list) -> dict:
    """Mean KL(host || bricks) and greedy-token agreement where the host's replies are predicted."""
    kl_sum, agree, n = 0.0, 0, 0
    for e in data:
        ids, at = e.input_ids[None], (e.labels[1:] != -100).nonzero().flatten()
        plain = host.model(input_ids=ids).logits[0, at].float().log_softmax(-1)
        with assembly_applied(host.model, host.adapter, assemble(host.ref, [BrickUse(b) for b in bricks])):
            moved = host.model(input_ids=ids).logits[0, at].float().log_softmax(-1)
        kl_sum += float((plain.exp() * (plain - moved)).sum())
        agree += int((plain.argmax(-1) == moved.argmax(-1)).sum())
        n += len(at)
    return {"n_prompts": len(data), "n_tokens": n, "mean_kl": round(kl_sum / max(n, 1), 5),
            "token_agreement": round(agree / max(n, 1), 4)}


def task_eval(host, bricks, held_examples, task, n: int, max_new: int) -> dict:
    pairs = [prompt_and_reference(ex) for ex in held_examples[:n]]
    prompts = [p for p, _ in pairs]
    assembly = assemble(host.ref, [BrickUse(b) for b in bricks])
    with assembly_applied(host.model, host.adapter, assembly):
        replies = generate_chat(host, prompts, max_new_tokens=max_new)
    return {**task_metric(task, held_examples[:n], replies), "example_reply": replies[0][:200]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--tasks", default=DEFAULT_TASKS)
    ap.add_argument("--eval-prompts", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--lr", type=float, default=None, help="training lr (default: TrainOptions')")
    ap.add_argument("--locality-weight", type=float, default=None, help="default: TrainOptions'")
    ap.add_argument("--targets", default=None, help="LoRA target modules, comma-separated (default: TrainOptions')")
    ap.add_argument("--rank", type=int, default=None, help="LoRA rank (default: TrainOptions')")
    ap.add_argument("--update-task", default="style", help="task for the update check ('' skips it)")
    ap.add_argument("--update-steps", type=int, default=None, help="steps for v1 and for v2 (default: --steps/2)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    host = load_host()
    corpus = heldout_corpus(host)
    base_ppl = label_perplexity(host, corpus)
    chat_held = heldout_chat(host)
    options = {"steps": args.steps, "progress": True}
    options.update({k: v for k, v in (("lr", args.lr), ("locality_weight", args.locality_weight),
                                      ("targets", args.targets), ("rank", args.rank)) if v is not None})
    out: dict = {"host": host.ref.name, "steps": args.steps, "train_options": options, "tasks": {}, "merge": {}}
    bricks, held_sets = {}, {}
    for task in args.tasks.split(","):
        path = TASKS[task].path
        examples = read_examples(path)
        started = time.perf_counter()
        result = train_lora(host, examples, options, f"task-{task}", data_digest=file_digest(path), progress=True)
        brick = result.brick
        _, held = split_heldout(examples, 0.2)
        bricks[task], held_sets[task] = brick, encode_all(host.tokenizer, held, 256, "held-out")
        ppl = label_perplexity(host, corpus, [BrickUse(brick)])
        out["tasks"][task] = {
            "metrics": brick.meta.metrics, "wall_s": round(time.perf_counter() - started, 1),
            "task_metric_plain": task_eval(host, [], held, task, args.eval_prompts, args.max_new_tokens),
            "task_metric_brick": task_eval(host, [brick], held, task, args.eval_prompts, args.max_new_tokens),
            "heldout_ppl_delta_pct": {lab: round(100 * (ppl[lab] / base_ppl[lab] - 1), 3) for lab in base_ppl},
            "heldout_chat": chat_locality(host, chat_held, [brick]),
        }
        print(json.dumps({task: out["tasks"][task]}, default=str), file=sys.stderr)
        save(out, args.out)
        for first, second, kind in PAIRS:  # each pair as soon as both of its bricks exist
            key = f"{first}+{second}"
            if first in bricks and second in bricks and key not in out["merge"]:
                out["merge"][key] = {"pair": kind, **merge_pair(host, bricks, held_sets, [first, second])}
                print(json.dumps({key: out["merge"][key]}), file=sys.stderr)
                save(out, args.out)
    if args.update_task:
        steps = args.update_steps or max(1, args.steps // 2)
        out["update"] = update_check(host, args.update_task, {**options, "steps": steps})
        print(json.dumps({"update": out["update"]}, default=str), file=sys.stderr)
    print(json.dumps(out, indent=2, default=str))
    save(out, args.out)


def save(out: dict, path: str | None) -> None:
    """The figures so far (a long run can be stopped and still leave what it measured)."""
    if path:
        Path(path).write_text(json.dumps(out, indent=2, default=str))


def update_check(host, task: str, options: dict) -> dict:
    """v1 on half A of the task's examples, v2 = v1 continued on half B; held-out losses of both halves."""
    examples = read_examples(TASKS[task].path)
    half_b, half_a = split_heldout(examples, 0.5, key=lambda e: "update-half:" + e.model_dump_json())
    digest = {h: hashlib.sha256("\n".join(e.model_dump_json() for e in part).encode()).hexdigest()
              for h, part in (("a", half_a), ("b", half_b))}
    v1 = train_lora(host, half_a, options, f"update-{task}", data_digest=digest["a"], progress=True).brick
    v2 = train_lora(host, half_b, options, f"update-{task}", data_digest=digest["b"], parent=v1, progress=True).brick
    with tempfile.TemporaryDirectory() as root:  # published as `brick update` does, to read the lineage back
        reg = Registry(root)
        first = reg.publish(v1, operation="train", op_params={"data_digest": digest["a"]})
        second = reg.publish(v2, parents=[first.ref], operation="update",
                             op_params={"data_digest": digest["b"], **v2.meta.params})
        lineage = {"version": second.ref, **reg.lineage(second.ref)}
    held = {h: encode_all(host.tokenizer, split_heldout(part, 0.2)[1], 256, "held-out")
            for h, part in (("a", half_a), ("b", half_b))}
    losses = {h: {"plain": brick_loss(host, data, []), "v1": brick_loss(host, data, [v1]),
                  "v2": brick_loss(host, data, [v2])} for h, data in held.items()}
    return {
        "task": task, "n_half_a": len(half_a), "n_half_b": len(half_b),
        "heldout_loss_new_data_b": {k: round(v, 5) for k, v in losses["b"].items()},
        "heldout_loss_old_data_a": {k: round(v, 5) for k, v in losses["a"].items()},
        "v2_improves_on_new_data": losses["b"]["v2"] < losses["b"]["v1"],
        "v2_metrics": {k: v2.meta.metrics.get(k) for k in ("heldout_loss_before", "heldout_loss_after",
                                                           "tokens_per_s", "resumed_from_step")},
        "v2_lineage": lineage,
    }


def merge_pair(host, bricks: dict, held_sets: dict, names: list[str]) -> dict:
    """Each merge method's share of both parents' held-out improvement, and cat vs serving both."""
    a, b = bricks[names[0]], bricks[names[1]]
    before = {t: brick_loss(host, held_sets[t], []) for t in names}
    alone = {t: brick_loss(host, held_sets[t], [bricks[t]]) for t in names}
    summed = max(m.rank for m in a.lora.values()) + max(m.rank for m in b.lora.values())
    methods = {}
    for method, params in MERGES:
        params = {k: (summed // 2 if v == "half" else v) for k, v in params.items()}
        merged = merge_bricks([a, b], method, {**params, "progress": False}, f"merged-{method.replace('_', '-')}")
        kept = {t: round((before[t] - brick_loss(host, held_sets[t], [merged])) / (before[t] - alone[t]), 4)
                for t in names}
        methods[method] = {"params": params, "kept_improvement": kept,
                           "max_error": merged.meta.metrics.get("max_error"), "rank": merged.size()}
    return {"methods": methods, "cat_vs_assembly_max_abs_logit_diff": cat_vs_assembly(host, a, b, held_sets[names[0]])}


def cat_vs_assembly(host, a, b, data) -> float:
    """Logits of the cat merge vs both bricks served together, on held-out examples."""
    merged = merge_bricks([a, b], "cat", {"progress": False}, "cat-check")
    worst = 0.0
    for e in data[:8]:
        ids = e.input_ids[None]
        logits = []
        for uses in ([BrickUse(merged)], [BrickUse(a), BrickUse(b)]):
            with torch.no_grad(), assembly_applied(host.model, host.adapter, assemble(host.ref, uses)):
                logits.append(host.model(input_ids=ids).logits)
        worst = max(worst, float((logits[0] - logits[1]).abs().max()))
    return worst


if __name__ == "__main__":
    main()
