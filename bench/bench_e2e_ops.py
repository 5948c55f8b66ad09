"""End to end over HTTP on vLLM: a grown brick and a trained brick, routed by retrieval. Prints JSON.

    .venv/bin/python bench/bench_e2e_ops.py [--grown FILE.brick] [--trained FILE.brick] [--out FILE]

What runs: `brick serve` (a real subprocess, vLLM engine, loopback) on a manifest with routing.policy retrieval
holding `atlas` (a growth brick: the shipped 36 fictional facts; its routing keys are the facts' wordings) and
`json-extract` (a LoRA brick trained on the shipped json-extract task; its keys are examples from its data), the
growth brick resident in the served host's slots (engine.growth_path: gain_table). The official `openai` client
sends:
- every fact's prompt and every held-out wording (bricks/data/facts/heldout.jsonl, never trained on) as a
  completion: which brick the router chose (the `brickwork.bricks` field), and whether the reply starts with
  the fact's target;
- the json-extract task's held-out chat prompts (never trained on): which brick, and whether the reply is valid
  JSON with the right fields (the task's own metric);
- the same requests to the `plain` assembly (no bricks; model name `plain`).
Without --grown/--trained the bricks are made here first (grow 150 steps, ~10 min; train --train-steps 60, ~5 min).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bricks.format import load_brick, save_brick  # noqa: E402
from bricks.ops.data import file_digest, read_examples, read_facts, split_heldout  # noqa: E402
from bricks.ops.grow import SHIPPED_FACTS, SHIPPED_HELDOUT, wordings  # noqa: E402
from bricks.ops.tasks import prompt_and_reference, task_metric, task_path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = """name: ops-e2e
host:
  spec: smollm2-135m-instruct
  growth_slots: {slots}
bricks:
  - ref: atlas@^1
  - ref: json-extract@^1
routing:
  policy: retrieval
  top_k: 1
  threshold: {threshold}
assemblies:
  plain: []
engine:
  kind: vllm
  growth_path: gain_table
  max_loras: 2
  max_lora_rank: 16
  max_model_len: 1024
server:
  port: {port}
  max_tokens: 64
  max_prompt_tokens: 512
"""


def make_bricks(args, host_spec: str = "smollm2-135m-instruct"):
    from bricks.host import load_host
    from bricks.ops.grow import grow_facts
    from bricks.ops.train import train_lora

    host = load_host(host_spec)
    grown = load_brick(args.grown) if args.grown else grow_facts(
        host, read_facts(SHIPPED_FACTS), {"steps": 150}, "atlas", data_digest=file_digest(SHIPPED_FACTS),
        heldout=read_facts(SHIPPED_HELDOUT)).brick
    path = task_path("json-extract")
    trained = load_brick(args.trained) if args.trained else train_lora(
        host, read_examples(path), {"steps": args.train_steps}, "json-extract", data_digest=file_digest(path)).brick
    return grown, trained


def rename(brick, name: str):
    brick.meta.name = name
    return brick


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grown", default=None)
    ap.add_argument("--trained", default=None)
    ap.add_argument("--threshold", type=float, default=0.3)
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--task-prompts", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    from openai import OpenAI

    from registry import Registry

    grown, trained = make_bricks(args)
    work = Path(tempfile.mkdtemp(prefix="brick-e2e-"))
    for brick, file in ((grown, "atlas.brick"), (trained, "json-extract.brick")):
        save_brick(brick, work / file)  # reusable with --grown/--trained
    reg = Registry(work / "registry")
    reg.publish(rename(grown, "atlas"))
    reg.publish(rename(trained, "json-extract"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    slots = max(grown.per_layer().values())
    (work / "manifest.yaml").write_text(MANIFEST.format(slots=slots, threshold=args.threshold, port=port))
    env = {**os.environ, "BRICK_REGISTRY": str(work / "registry")}
    log = open(work / "serve.log", "w")
    started = time.perf_counter()
    server = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", str(work / "manifest.yaml")], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    out: dict = {"manifest": str(work / "manifest.yaml"), "log": str(work / "serve.log")}
    try:
        base = f"http://127.0.0.1:{port}"
        while True:
            if server.poll() is not None:
                raise SystemExit(f"brick serve exited with {server.returncode}; see {work / 'serve.log'}")
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(2)
        out["server_start_s"] = round(time.perf_counter() - started, 1)
        client = OpenAI(base_url=f"{base}/v1", api_key="none")
        out["facts"] = facts_check(client)
        out["task"] = task_check(client, args.task_prompts)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def _bricks_of(resp) -> list[str]:
    return [r.split("@")[0] for r in (resp.model_extra or {}).get("brickwork", {}).get("bricks", [])]


def facts_check(client) -> dict:
    res: dict = {}
    for split, facts in (("trained_wordings", read_facts(SHIPPED_FACTS)), ("heldout_wordings",
                                                                           read_facts(SHIPPED_HELDOUT))):
        pairs = [(w, f.target) for f in facts for w in wordings(f, True)]
        for model in ("ops-e2e", "plain"):
            routed = correct = 0
            for prompt, target in pairs:
                r = client.completions.create(model=model, prompt=prompt, max_tokens=8, temperature=0)
                routed += _bricks_of(r) == ["atlas"]
                correct += r.choices[0].text.lstrip().startswith(target.strip())
            res[f"{split}:{model}"] = {"n": len(pairs), "routed_to_atlas": round(routed / len(pairs), 4),
                                       "correct": round(correct / len(pairs), 4)}
    return res


def task_check(client, n: int) -> dict:
    examples = read_examples(task_path("json-extract"))
    _, held = split_heldout(examples, 0.2)
    held = held[:n]
    res: dict = {}
    for model in ("ops-e2e", "plain"):
        replies, routed = [], 0
        for ex in held:
            messages, _ = prompt_and_reference(ex)
            r = client.chat.completions.create(model=model, messages=messages, max_tokens=64, temperature=0)
            routed += _bricks_of(r) == ["json-extract"]
            replies.append(r.choices[0].message.content)
        res[model] = {"routed_to_json_extract": round(routed / len(held), 4),
                      **task_metric("json-extract", held, replies), "example_reply": replies[0][:200]}
    return res


if __name__ == "__main__":
    main()
