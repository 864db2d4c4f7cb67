"""Typed records passed between pipeline stages, and their JSONL persistence."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from rgpl_plugin.base import Document, Hit

__all__ = [
    "Document",
    "Hit",
    "GeneratedQuery",
    "NegativePool",
    "LabeledTriple",
    "write_jsonl",
    "read_jsonl",
]


@dataclass(frozen=True, slots=True)
class GeneratedQuery:
    """A pseudo query generated from one passage, which is its positive."""

    qid: str
    text: str
    doc_id: str


@dataclass(frozen=True, slots=True)
class NegativePool:
    """Hard-negative candidates of one query, per source (``bm25``, a retriever name, ``student``)."""

    qid: str
    negatives: dict[str, list[str]] = field(default_factory=dict)

    def all_ids(self) -> list[str]:
        """Every candidate once, in source order."""
        seen: dict[str, None] = {}
        for ids in self.negatives.values():
            for doc_id in ids:
                seen.setdefault(doc_id, None)
        return list(seen)


@dataclass(frozen=True, slots=True)
class LabeledTriple:
    """A training example: margin = teacher(q, pos) - teacher(q, neg), raw scores."""

    qid: str
    pos_id: str
    neg_id: str
    margin: float


R = TypeVar("R")


def write_jsonl(path: str | os.PathLike, records: Iterable[object]) -> int:
    """Write dataclass records as JSON lines atomically (temp file + rename). Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(asdict(record), ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def read_jsonl(path: str | os.PathLike, cls: type[R]) -> Iterator[R]:
    """Read records of dataclass ``cls`` written by :func:`write_jsonl`."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                data = json.loads(line)
                yield cls(**{k: v for k, v in data.items() if k in names})
