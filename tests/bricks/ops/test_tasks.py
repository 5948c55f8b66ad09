"""The shipped task datasets: well formed, varied, reproducible, and scored as intended by their metrics."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bricks.errors import InvalidInputError
from bricks.ops.data import ChatExample, Message, TextExample, read_examples, split_heldout
from bricks.ops.tasks import TASKS, prompt_and_reference, task_metric, task_path

GENERATOR = Path(__file__).resolve().parents[3] / "bench" / "make_task_data.py"


def examples(task: str) -> list[ChatExample]:
    return read_examples(TASKS[task].path)


def references(task: str) -> list[str]:
    return [prompt_and_reference(e)[1] for e in examples(task)]


def test_tasks_in_order_with_their_metrics():
    assert list(TASKS) == ["json-extract", "style", "span-qa"]
    assert [t.metric for t in TASKS.values()] == ["valid_json", "conforms", "exact_match"]


@pytest.mark.parametrize("task", list(TASKS))
def test_shipped_file_is_varied_and_splits(task):
    items = examples(task)
    assert len(items) >= 250
    assert all(isinstance(e, ChatExample) for e in items)
    records = [e.model_dump_json() for e in items]
    prompts = [json.dumps(prompt_and_reference(e)[0]) for e in items]
    assert len(set(records)) == len(records)
    assert len(set(prompts)) == len(prompts)  # a held-out prompt was never trained on
    train, held = split_heldout(items, 0.2)
    assert len(held) >= 30 and len(train) >= 180
    assert not {e.model_dump_json() for e in train} & {e.model_dump_json() for e in held}


@pytest.mark.parametrize("task", list(TASKS))
def test_references_score_full_marks(task):
    items = examples(task)
    result = task_metric(task, items, references(task))
    assert result["metric"] == TASKS[task].metric
    assert result["value"] == 1.0
    assert result["n"] == len(items)
    assert all(0.0 <= v <= 1.0 for k, v in result.items() if k not in ("metric", "n", "mean_lines"))


@pytest.mark.parametrize("task", list(TASKS))
def test_chatty_replies_score_low(task):
    items = examples(task)
    chatty = [f"Sure! Here is my answer:\n\n{ref}\n\nLet me know if you need more." for ref in references(task)]
    assert task_metric(task, items, chatty)["value"] == 0.0
    assert task_metric(task, items, ["I don't know."] * len(items))["value"] == 0.0


def test_json_extract_fields():
    items = examples("json-extract")[:4]
    refs = [json.loads(r) for r in references("json-extract")[:4]]
    wrong_age = [json.dumps({**r, "age": r["age"] + 1}) for r in refs]
    result = task_metric("json-extract", items, wrong_age)
    assert result["value"] == 1.0 and result["exact_match"] == 0.0 and result["field_match"] == 0.75
    fenced = ["```json\n" + json.dumps(r) + "\n```" for r in refs]
    extra_key = [json.dumps({**r, "country": "x"}) for r in refs]
    assert task_metric("json-extract", items, fenced)["value"] == 0.0
    assert task_metric("json-extract", items, extra_key)["value"] == 0.0


def test_style_rules():
    items = examples("style")[:3]
    replies = ["- one\n- two\n- three\n", "- One\n- two\n- three", "- one\n- two"]
    result = task_metric("style", items, replies)
    assert result["value"] == pytest.approx(1 / 3)
    assert result["lowercase"] == pytest.approx(2 / 3) and result["three_lines"] == pytest.approx(2 / 3)
    assert result["mean_lines"] == pytest.approx(8 / 3)


def test_span_qa_normalises_and_counts_containment():
    items = examples("span-qa")[:2]
    refs = references("span-qa")[:2]
    result = task_metric("span-qa", items, [f"The {refs[0].upper()}.", f"It is {refs[1]}, I think"])
    assert result["value"] == 0.5 and result["contains_answer"] == 1.0


def test_bad_calls_are_clear_errors():
    items = examples("style")[:2]
    with pytest.raises(InvalidInputError, match="did you mean 'span-qa'"):
        task_metric("span_qa", items, ["a", "b"])
    with pytest.raises(InvalidInputError, match="json-extract, style, span-qa"):
        task_path("nope")
    with pytest.raises(InvalidInputError, match="2 examples but 1 replies"):
        task_metric("style", items, ["a"])
    with pytest.raises(InvalidInputError, match="chat example"):
        prompt_and_reference(TextExample(text="plain"))


def test_prompt_and_reference_keeps_system_and_stops_at_last_answer():
    example = ChatExample(messages=[Message(role="system", content="be brief"), Message(role="user", content="hi"),
                                    Message(role="assistant", content="hello"), Message(role="user", content="and?"),
                                    Message(role="assistant", content="bye")])
    prompt, reference = prompt_and_reference(example)
    assert reference == "bye"
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]


def test_generator_rewrites_the_shipped_files_byte_for_byte():
    spec = importlib.util.spec_from_file_location("make_task_data", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for task in TASKS:
        assert module.build(task).encode("utf-8") == TASKS[task].path.read_bytes(), task


@pytest.mark.real
def test_examples_are_short_for_the_host_tokenizer():
    from transformers import AutoTokenizer

    from bricks.host import resolve_host_path

    tok = AutoTokenizer.from_pretrained(resolve_host_path())
    for task in TASKS:
        for e in examples(task):
            text = tok.apply_chat_template([m.model_dump() for m in e.messages], tokenize=False)
            assert len(tok(text, add_special_tokens=False)["input_ids"]) < 160, (task, e.messages[0].content)
