"""Promotion evaluation of a re-adaptation: held-out pseudo queries searched exactly over candidate documents.

:func:`fair_holdout` picks the new run's held-out queries that the serving model never trained on;
:func:`candidate_ords` the documents to search (all, or for a big corpus the positives plus a seeded
sample up to ``max_docs``) as ords of the run's document store; :func:`encoder_mrr` encodes those
documents a chunk at a time into a memory-mapped file (:func:`rgpl_adapt.chunked.encode_store`:
resumable after a kill, reused under the same model and candidates) and computes MRR@k of exact
inner-product search in bounded query batches. Memory: one chunk of texts, the held-out queries and
the pages of the map in use, whatever the corpus size.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rgpl_plugin.docstore import DocStore

from rgpl_adapt.records import GeneratedQuery
from rgpl_adapt.versions import PromotionDecision, mrr_at_k

__all__ = ["GatedPublisher", "candidate_ords", "encoder_mrr", "fair_holdout", "model_key"]

ENCODE_CHUNK = 10_000
QUERY_BATCH = 1_024
ROW_CHUNK = 8_192  # rows scored at a time: 1,024 queries x 8,192 rows of scores and sort indices ~ 100 MB


def _chunk_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Columns of the ``k`` best scores per row (any order), exactly the set a stable sort would keep:
    a partition, and a stable sort only for the rows whose k-th score is tied beyond the partition."""
    kk = min(k, scores.shape[1])
    if kk == scores.shape[1]:
        return np.argsort(-scores, axis=1, kind="stable")
    top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    vals = np.take_along_axis(scores, top, axis=1)
    last = vals.min(axis=1, keepdims=True)
    cut = np.nonzero((scores == last).sum(axis=1) != (vals == last).sum(axis=1))[0]  # ties left out
    if cut.size:
        top[cut] = np.argsort(-scores[cut], axis=1, kind="stable")[:, :kk]
    return top


def stable_topk(matrix: np.ndarray, queries: np.ndarray, k: int, *, chunk_rows: int = ROW_CHUNK) -> np.ndarray:
    """Rows of the ``k`` best inner products per query, best first, ties to the lower row at every rank
    (the k-th included: a stable sort, not a partition), reading ``matrix`` ``chunk_rows`` at a time."""
    best_rows = np.empty((len(queries), 0), np.int64)
    best_scores = np.empty((len(queries), 0), np.float32)
    for r0 in range(0, matrix.shape[0], chunk_rows):
        scores = queries @ np.asarray(matrix[r0 : r0 + chunk_rows], dtype=np.float32).T
        top = _chunk_topk(scores, k)
        rows = np.concatenate([best_rows, top + r0], axis=1)
        vals = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        order = np.lexsort((rows, -vals), axis=1)[:, :k]
        best_rows, best_scores = np.take_along_axis(rows, order, axis=1), np.take_along_axis(vals, order, axis=1)
    return best_rows


def candidate_ords(
    store: DocStore, held_out: Sequence[GeneratedQuery], max_docs: int, seed: int = 0
) -> Sequence[int]:
    """Ords of the documents to search: all of them (``range(n)``, no list), or for a big corpus the held-out
    positives (in store order) plus a seeded random sample of the others up to ``max_docs`` (in draw order).

    The sample is the one ``random.Random(seed).sample(others, m)`` draws from the list of the other
    documents in store order (it depends only on that list's length), found without the list.
    """
    n = store.count()
    if n <= max_docs:
        return range(n)
    positives = sorted(store.ords_of(q.doc_id for q in held_out).values())
    taken = set(positives)
    rest = n - len(positives)
    picks = random.Random(seed).sample(range(rest), max(0, min(rest, max_docs - len(positives))))

    def ord_of(i: int) -> int:  # the i-th ord that is not a positive
        o = i
        while True:
            before = bisect.bisect_right(positives, o)
            if o - before == i and o not in taken:
                return o
            o = i + before

    return positives + [ord_of(i) for i in picks]


def encoder_mrr(
    encoder: Any,
    store_dir: str | os.PathLike,
    ords: Sequence[int],
    held_out: Sequence[GeneratedQuery],
    *,
    out: str | os.PathLike,
    key: str = "",
    k: int = 10,
    chunk_size: int | None = None,
) -> float:
    """MRR@k of exact inner-product search over the documents at ``ords`` for the held-out queries.

    The documents are encoded into ``out/vectors.npy`` (chunks of ``chunk_size``, resumable; ``key``
    names the model, the candidates are added to it); ties go to the earlier candidate.
    """
    from rgpl_adapt.chunked import encode_store
    from rgpl_adapt.distributed import DistInfo

    q = np.asarray(encoder.encode([x.text for x in held_out], batch_size=64), dtype=np.float32)
    if not len(ords) or not len(held_out):
        return mrr_at_k([[] for _ in held_out], [x.doc_id for x in held_out], k)
    with DocStore(store_dir) as store:
        whole = isinstance(ords, range) and ords == range(store.count())  # by ord ranges, no list of ords
    if whole:
        subset, digest = None, f"all-{len(ords)}"
    else:
        subset = [int(o) for o in ords]
        digest = hashlib.sha256(np.asarray(subset, dtype=np.int64).tobytes()).hexdigest()[:16]
    res = encode_store(encoder, store_dir, out, dim=int(q.shape[1]), key=f"{key}:{digest}",
                       chunk_size=chunk_size or ENCODE_CHUNK, info=DistInfo(), ords=subset)
    vectors = np.load(res.path, mmap_mode="r")
    rankings: list[list[str]] = []
    with DocStore(store_dir) as store:
        for q0 in range(0, len(q), QUERY_BATCH):
            rows = stable_topk(vectors, q[q0 : q0 + QUERY_BATCH], k)
            flat = [ords[r] for r in rows.ravel().tolist()]
            names = iter(store.ids_of_ords(flat))
            rankings += [[next(names) for _ in range(rows.shape[1])] for _ in range(rows.shape[0])]
    del vectors
    return mrr_at_k(rankings, [x.doc_id for x in held_out], k)


def fair_holdout(new_queries: Sequence[GeneratedQuery], serving_queries: Sequence[GeneratedQuery],
                 seed: int) -> tuple[list[GeneratedQuery], str]:
    """The new run's held-out queries minus those the serving model trained on (reused queries)."""
    from rgpl_adapt.pipeline import holdout_split

    _, held = holdout_split(new_queries, seed)
    if not serving_queries:
        return held, "held-out pseudo queries of the new run"
    trained, _ = holdout_split(serving_queries, seed)
    seen = {(q.doc_id, q.text) for q in trained}
    fair = [q for q in held if (q.doc_id, q.text) not in seen]
    if fair:
        return fair, "held-out pseudo queries of the new run that the serving model never trained on"
    return held, "held-out pseudo queries of the new run (all were seen by the serving model: biased towards it)"


def model_key(export_dir: Path) -> str:
    """Names an exported model for reusing its encoded candidates (its path and stage fingerprint)."""
    from rgpl_adapt.compare import export_key

    return f"{Path(export_dir).resolve()}:{export_key(Path(export_dir))}"


class GatedPublisher:
    """A :class:`rgpl_adapt.pipeline.Publisher` that publishes (moves the alias) only when the
    promotion rule says so; otherwise the new version stays unpublished."""

    def __init__(self, inner: Any, decide: Callable[[Path], PromotionDecision]) -> None:
        self.inner = inner
        self.decide = decide

    def fingerprint(self) -> dict[str, Any]:
        return self.inner.fingerprint()

    def documents(self) -> Any:
        return self.inner.documents()

    def describe(self) -> dict[str, Any]:
        return self.inner.describe()

    def publish(self, export_dir: Path, weights: dict[str, Any]) -> dict[str, Any]:
        decision = self.decide(export_dir)
        if decision.promoted:
            return {**self.inner.publish(export_dir, weights), "promotion": decision.to_dict()}
        return {"published": False, "hybrid_weight": weights.get("hybrid_weight"), "promotion": decision.to_dict()}
