"""Labelled corpora: the shipped probe corpora (bricks/data/*.jsonl) or any user JSONL/text files.

A corpus is a list of `Doc(text, label)`. Splits are deterministic by content hash, so the same
document always lands in the same split whatever order files are read in: a held-out slice
never leaks into extraction. `digest()` identifies a corpus in brick metadata.

A JSONL record may label its text with a string or, for a binary property, with true/false or 1/0
(read as the labels "1" and "0"), and may name the characters that carry the property with
`"span": [start, end]` (a Python slice of the text; what `sparse-probe` averages over).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from bricks.errors import InvalidInputError

DATA_DIR = Path(__file__).parent / "data"
BUILTIN = "builtin"
NONE = "none"  # the label of a labelled example that should reach no brick


@dataclass(frozen=True)
class Doc:
    text: str
    label: str
    span: tuple[int, int] | None = None  # characters [start, end) of the text that carry the label

    def key(self) -> int:
        """A stable 64-bit hash of the text (independent of Python's hash seed)."""
        return int.from_bytes(hashlib.sha256(self.text.encode()).digest()[:8], "little")


class Corpus(list):
    """A list of Doc with label helpers."""

    def labels(self) -> list[str]:
        return sorted({d.label for d in self})

    def by_label(self, label: str) -> Corpus:
        return Corpus(d for d in self if d.label == label)

    def split(self, held_out: float = 0.2, seed: int = 0) -> tuple[Corpus, Corpus]:
        """(train, held-out) by content hash: deterministic and order-independent."""
        cut = int(held_out * 10_000)
        rest, held = Corpus(), Corpus()
        for d in self:
            (held if (d.key() ^ seed) % 10_000 < cut else rest).append(d)
        return rest, held

    def halves(self, seed: int = 1) -> tuple[Corpus, Corpus]:
        """Two disjoint halves (for stability checks)."""
        return self.split(0.5, seed=seed)

    def digest(self) -> str:
        h = hashlib.sha256()
        for d in sorted(self, key=lambda d: (d.label, d.text, d.span or ())):
            h.update(d.label.encode() + b"\0" + d.text.encode() + b"\0")
            if d.span is not None:  # only spans change the digest: corpora without them keep theirs
                h.update(f"{d.span[0]}:{d.span[1]}".encode() + b"\0")
        return "sha256:" + h.hexdigest()


def load_corpus(sources: list[str | Path] | str | Path = BUILTIN, label: str | None = None) -> Corpus:
    """Load JSONL files ({"text", "label"}), plain text files (one doc per blank-line-separated
    paragraph, labelled with `label` or the file stem), folders of those, or `builtin`."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    docs = Corpus()
    for src in sources:
        if str(src) == BUILTIN:
            docs.extend(_load_dir(DATA_DIR, None))
            continue
        p = Path(src)
        if p.is_dir():
            docs.extend(_load_dir(p, label))
        elif p.is_file():
            docs.extend(_load_file(p, label))
        else:
            raise InvalidInputError(f"corpus {src} does not exist", "pass JSONL/text files, a folder, or 'builtin'")
    if not docs:
        raise InvalidInputError(f"corpus {sources} holds no documents", "check the files are not empty")
    return docs


def _load_dir(folder: Path, label: str | None) -> Corpus:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".jsonl", ".txt"))
    if not files:
        raise InvalidInputError(f"corpus folder {folder} has no .jsonl or .txt files", "add data files")
    return Corpus(d for f in files for d in _load_file(f, label))


def _load_file(path: Path, label: str | None) -> Corpus:
    if path.suffix == ".jsonl":
        return _load_jsonl(path, label)
    text = path.read_text(encoding="utf-8", errors="replace")
    return Corpus(Doc(p.strip(), label or path.stem) for p in text.split("\n\n") if p.strip())


def _load_jsonl(path: Path, label: str | None) -> Corpus:
    docs = Corpus()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            text = rec["text"]
            lab = label or _record_label(rec.get("label"), path.stem)
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InvalidInputError(f"{path}:{n}: not a JSON object with a 'text' field ({e})",
                                    'write one {"text": ..., "label": ...} object per line') from None
        if not isinstance(text, str) or not isinstance(lab, str):
            raise InvalidInputError(f"{path}:{n}: 'text' must be a string and 'label' a string, true/false or an "
                                    f"integer (got {type(text).__name__}, {type(rec.get('label')).__name__})",
                                    "fix that line")
        docs.append(Doc(text, lab, _record_span(rec.get("span"), text, f"{path}:{n}")))
    return docs


def _record_label(value, default: str):
    """A record's label as text: missing or "" -> the file stem; true/false -> "1"/"0"; an integer -> its digits."""
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value) if isinstance(value, int) else value


def _record_span(value, text: str, where: str) -> tuple[int, int] | None:
    if value is None:
        return None
    ok = isinstance(value, list) and len(value) == 2 and all(type(v) is int for v in value)
    if not ok or not 0 <= value[0] < value[1] <= len(text):
        raise InvalidInputError(f"{where}: 'span' must be [start, end] with 0 <= start < end <= {len(text)} (the "
                                f"text's length in characters), got {json.dumps(value)}",
                                "give the characters that carry the label as a slice of 'text', or drop 'span' "
                                "to use the whole text")
    return value[0], value[1]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    labels: list[str]
    doc_index: list[int]  # position of each row's doc in the corpus


def batches(corpus: Corpus, tokenizer, batch_tokens: int = 4096, max_len: int = 256) -> Iterator[Batch]:
    """Right-padded batches of about `batch_tokens` tokens; long docs are cut to `max_len` tokens.

    Docs are sorted by length so padding stays small; `doc_index` maps rows back to the corpus.
    """
    enc = tokenizer([d.text for d in corpus], add_special_tokens=False, truncation=True, max_length=max_len)
    ids = enc["input_ids"]
    order = sorted((i for i in range(len(ids)) if ids[i]), key=lambda i: len(ids[i]))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = 0
    while start < len(order):
        width = len(ids[order[start]])
        end = start + 1
        while end < len(order) and (end - start + 1) * len(ids[order[end]]) <= batch_tokens:
            width = len(ids[order[end]])
            end += 1
        rows = order[start:end]
        x = torch.full((len(rows), width), pad, dtype=torch.long)
        m = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            x[r, : len(ids[i])] = torch.tensor(ids[i])
            m[r, : len(ids[i])] = 1
        yield Batch(x, m, [corpus[i].label for i in rows], rows)
        start = end


def load_labelled(path: str | Path) -> list[tuple[str, str]]:
    """JSONL of {"text": ..., "label": ...}; label `none` (or null) expects no brick."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, label = row["text"], row.get("label") or NONE
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise InvalidInputError(f"{path}:{n} is not a JSON object with 'text' and 'label'",
                                    'write one {"text": "...", "label": "fr"} per line') from None
        if not isinstance(text, str) or not isinstance(label, str):
            raise InvalidInputError(f"{path}:{n}: 'text' and 'label' must be strings", "fix that line")
        out.append((text, label))
    if not out:
        raise InvalidInputError(f"{path} holds no examples", 'write one {"text": ..., "label": ...} per line')
    return out
