"""Greedy chat replies from a host, and the unmodified host's perplexity of them (a fluency proxy)."""

from __future__ import annotations

import torch

from bricks.corpus import Corpus, Doc
from bricks.evaluate import label_perplexity

DEFAULT_PROMPTS = [
    "Tell me about your favourite season and why you like it.",
    "What do you usually eat for breakfast?",
    "Describe the town where you grew up.",
    "Give me some advice for a job interview.",
    "What is the best way to learn to cook?",
    "Write a short story about a lost dog.",
    "Why do people enjoy travelling?",
    "Explain how to plant a tree in a garden.",
    "What makes a good friend?",
    "Describe a rainy afternoon in the city.",
]


def generate(host, prompts: list[str], max_new_tokens: int = 48) -> list[str]:
    """Greedy replies to chat prompts, batched with left padding."""
    return generate_chat(host, [[{"role": "user", "content": p}] for p in prompts], max_new_tokens,
                         batch_size=max(len(prompts), 1))


def generate_chat(host, conversations: list[list[dict]], max_new_tokens: int = 48, batch_size: int = 16) -> list[str]:
    """Greedy replies to conversations (lists of {"role", "content"}; the reply is the next assistant turn)."""
    out: list[str] = []
    for i in range(0, len(conversations), batch_size):
        out += _generate_batch(host, conversations[i: i + batch_size], max_new_tokens)
    return out


def _generate_batch(host, conversations: list[list[dict]], max_new_tokens: int) -> list[str]:
    tok = host.tokenizer
    texts = [_chat(tok, c) for c in conversations]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tok.padding_side = side
    with torch.inference_mode():
        out = host.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return [tok.decode(row[enc.input_ids.shape[1]:], skip_special_tokens=True) for row in out]


def _chat(tok, conversation: list[dict]) -> str:
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in conversation)


def text_perplexity(host, texts: list[str]) -> float:
    """The unmodified host's perplexity of `texts` (a fluency proxy for generated text)."""
    corpus = Corpus()
    corpus.extend(Doc(t, "gen") for t in texts if t.strip())
    return label_perplexity(host, corpus)["gen"] if corpus else float("nan")
