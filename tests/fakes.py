"""Small deterministic stand-ins used by several test modules."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from rgpl_adapt.records import GeneratedQuery, NegativePool

_WORD = re.compile(r"\w+")


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


class OverlapTeacher:
    """A teacher whose score is the number of query words found in the passage (so margins are predictable)."""

    def __init__(self) -> None:
        self.calls = 0
        self.pairs = 0

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        self.calls += 1
        self.pairs += len(queries)
        return np.array([float(len(words(q) & words(p))) for q, p in zip(queries, passages)])


def title_queries(documents) -> list[GeneratedQuery]:
    """One query per document: its title words plus the first two words of its text."""
    return [
        GeneratedQuery(qid=f"{d.id}-q0", text=f"{d.title} {' '.join(d.text.split()[:2])}", doc_id=d.id) for d in documents
    ]


def random_pools(queries, documents, k: int = 5, seed: int = 0) -> list[NegativePool]:
    rng = np.random.default_rng(seed)
    ids = [d.id for d in documents]
    pools = []
    for q in queries:
        cands = [i for i in rng.permutation(ids)[: k + 1] if i != q.doc_id][:k]
        pools.append(NegativePool(qid=q.qid, negatives={"random": list(cands)}))
    return pools
