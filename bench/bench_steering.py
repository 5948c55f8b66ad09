"""Staged steering on SmolLM2-135M: the quality bar of issue 15 §2, on prompts the project never tuned on.

    python bench/bench_steering.py [--targets fr,de] [--max-new-tokens 48] [--choose] [--out bench-steering.json]

For each target language: extract the emergent label bricks from the shipped corpora (train split), build
the steering brick `brick steer --no-measure` publishes (bricks.steer.publish.DEFAULT_SETTING: clamp to 2x
the target mean while the prompt is read, +0.3 x (target - English mean) while generating), and greedily
answer the English chat prompts of bricks/data/routing/prompts.jsonl (written for the routing check, never
used to tune steering; `brick eval --steer` tunes on bricks.steer.DEFAULT_PROMPTS). Compared with:
- the plain host on the same English prompts;
- the same offset at every token (diff, k=1: what a one-map server could serve before);
- the plain host answering that language's own prompts (the fluency reference: its repetition and
  known-word rate).
Figures per setting: target-language word share, repeated-3-gram rate, known-word rate (words of the target +
English corpora), the plain host's perplexity of the replies, and English perplexity (held-out text of the
corpora) under the generation-time map and under the prompt-time map. The staged brick's replies are also
generated through the assembly path (the one staged brick, as `brick serve` composes it) and must equal the
sweep's (two position-restricted hooks): what is served is what is evaluated. With --choose, `brick steer`'s
choice is measured too: its candidates (bricks.steer.publish.DEFAULT_CANDIDATES) are compared on the tuning
prompts (bricks.steer.DEFAULT_PROMPTS, never the evaluation prompts) and the chosen setting is then evaluated
on the English prompts like the default. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from bricks.apply import assembly_applied
from bricks.compose import BrickUse, assemble
from bricks.corpus import load_corpus
from bricks.evaluate import evaluation_corpus
from bricks.extract import get_extractor
from bricks.host import load_host
from bricks.steer import Setting, generate, score_generations, steer_sweep, word_vocab
from bricks.steer.publish import DEFAULT_CANDIDATES, DEFAULT_SETTING, choose_setting, steering_brick

PROMPTS = Path(__file__).resolve().parents[1] / "bricks" / "data" / "routing" / "prompts.jsonl"
ALL_POSITIONS = Setting(("diff", 1.0), ("diff", 1.0))
BAR = {"target_share": 0.9, "ppl_ratio": 1.1, "fluency_rel": 0.2}


def prompts_by_label() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in PROMPTS.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            out.setdefault(rec["label"], []).append(rec["text"])
    return out


def within(value: float, reference: float, rel: float) -> bool:
    return abs(value - reference) <= rel * max(reference, 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--targets", default="fr,de")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--choose", action="store_true", help="also measure brick steer's choice (see the docstring)")
    ap.add_argument("--candidates", default=DEFAULT_CANDIDATES)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    host = load_host()
    full = load_corpus("builtin")
    extraction = get_extractor("emergent").run(host, full, name="emergent")
    by_label = {b.meta.routing.label: b for b in extraction.bricks}
    prompts = prompts_by_label()
    out: dict = {"prompts": {k: len(v) for k, v in prompts.items()}, "setting": {
        "prompt": DEFAULT_SETTING.prompt, "generated": DEFAULT_SETTING.generated}, "bar": BAR, "targets": {}}
    for target in args.targets.split(","):
        brick = by_label.get(target)
        if brick is None:
            out["targets"][target] = {"error": f"no {target} brick published by the extraction"}
            continue
        eval_corpus = evaluation_corpus([brick], full, host.tokenizer)
        vocab = word_vocab(full.by_label(target)) | word_vocab(full.by_label("en"))
        settings, names = [DEFAULT_SETTING, ALL_POSITIONS], ["plain host", "staged (served)",
                                                             "same offset at every token"]
        chosen = None
        if args.choose:
            chosen = choose_setting(host, brick, target, eval_corpus.by_label("en"), args.candidates,
                                    max_new_tokens=args.max_new_tokens, vocab=vocab)
            settings.append(chosen.setting)
            names.append("brick steer's choice")
        rows = steer_sweep(host, brick, target, eval_corpus.by_label("en"), settings,
                           prompts=prompts["en"], max_new_tokens=args.max_new_tokens, vocab=vocab)
        table = {n: r.to_dict() for n, r in zip(names, rows)}
        # the published brick through the assembly path, as the server composes it
        staged = steering_brick(brick, target)
        asm = assemble(host.ref, [BrickUse(staged)])
        with torch.inference_mode(), assembly_applied(host.model, host.adapter, asm):
            served_texts = generate(host, prompts["en"], args.max_new_tokens)
        served_score = score_generations(served_texts, target, "en", vocab)
        own = generate(host, prompts[target], args.max_new_tokens)
        own_score = score_generations(own, target, "en", vocab)
        s = table["staged (served)"]
        out["targets"][target] = {
            "brick_size": brick.size(), "table": table,
            "choice": None if chosen is None else {"setting": [chosen.setting.prompt, chosen.setting.generated],
                                                   "why": chosen.reason, "tuning_table": chosen.table},
            "host_own_replies": {**own_score, "sample": own[0][:160]},
            "served_equals_evaluated": served_texts[0][:160] == s["sample"]
            and served_score["target_share"] == s["target_share"] and served_score["repetition"] == s["repetition"],
            "bars": {
                "target_share>=0.9": s["target_share"] >= BAR["target_share"],
                "en_ppl<=1.1x": s["dominant_ppl_ratio"] <= BAR["ppl_ratio"],
                "repetition within 20% of host's own": within(s["repetition"], own_score["repetition"],
                                                              BAR["fluency_rel"]),
                "known words within 20% of host's own": within(s["known_words"], own_score["known_words"],
                                                               BAR["fluency_rel"]),
            },
        }
        print(json.dumps({target: out["targets"][target]["bars"]}), flush=True)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(out, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
