"""Stage 9: evaluate a run against qrels: BM25, zero-shot, adapted and hybrid in one table."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.devices import resolve_device
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_plugin.base import Backend, Hit

SYSTEMS = ("bm25", "zero-shot", "adapted", "hybrid")
ZERO_SHOT_SPACE = "zero-shot"


def _as_results(qids: Sequence[str], hits: list[list[Hit]], k: int | None = None) -> dict[str, dict[str, float]]:
    """Results per query; with ``k``, the self-hit (doc id == query id) is dropped and the rest cut to k.

    Searches ask for ``k + 1`` hits, so a query that finds itself still has ``k`` others, as BEIR's
    ``ignore_identical_ids`` does (search k+1, drop the self-hit, cut to k).
    """
    if k is None:
        return {qid: {h.doc_id: h.score for h in hs} for qid, hs in zip(qids, hits)}
    results = {}
    for qid, hs in zip(qids, hits):
        others = [h for h in hs if h.doc_id != qid][:k]
        results[qid] = {h.doc_id: h.score for h in others}
    return results


def _encode_corpus_into(backend: Backend, space: str, encoder, progress: ProgressFactory) -> None:
    docs = list(backend.iter_documents())
    vecs = encoder.encode([d.full_text() for d in docs], batch_size=64, progress=progress)
    for start in range(0, len(docs), 10_000):
        backend.put_vectors(space, [d.id for d in docs[start : start + 10_000]], vecs[start : start + 10_000])


def evaluate_run(
    run_dir: str | os.PathLike,
    qrels: dict[str, dict[str, int]],
    queries: dict[str, str],
    *,
    systems: Sequence[str] = SYSTEMS,
    backend: Backend | None = None,
    k: int = 100,
    progress: ProgressFactory = silent,
    per_query: dict[str, dict[str, float]] | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics (nDCG@10, Recall@100, MRR@10) per system for the queries that have qrels.

    ``per_query``, when given, is filled with ``{system: {qid: nDCG@10}}`` (for significance tests).
    """
    import json

    from rgpl_adapt.encoding import SentenceTransformerEncoder
    from rgpl_adapt.evaluation import evaluate, evaluate_per_query
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_adapt.pipeline import DENSE_SPACE, PipelineError, hybrid_weight_of, load_encoder, open_embedded

    run_dir = Path(run_dir)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown system(s) {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    cfg = AdaptConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    backend = backend or open_embedded(run_dir)
    qids = [q for q in queries if q in qrels]
    if not qids:
        raise PipelineError("none of the queries has judgements in the qrels file; check the query ids")
    texts = [queries[q] for q in qids]
    table: dict[str, dict[str, float]] = {}
    needs_adapted = {"adapted", "hybrid"} & set(systems)
    encoder = load_encoder(run_dir / "export", cfg.export.onnx) if needs_adapted else None
    qvecs: np.ndarray | None = encoder.encode(texts, batch_size=64) if encoder is not None else None
    if needs_adapted and not backend.has_vectors(DENSE_SPACE):
        _encode_corpus_into(backend, DENSE_SPACE, encoder, progress)
    for system in systems:
        if system == "bm25":
            hits = backend.bm25_search(texts, k + 1)
        elif system == "zero-shot":
            base = SentenceTransformerEncoder(load_sentence_transformer(cfg.training.student, resolve_device(cfg.device), cfg.training.max_seq_len))
            if not backend.has_vectors(ZERO_SHOT_SPACE):
                _encode_corpus_into(backend, ZERO_SHOT_SPACE, base, progress)
            hits = backend.knn_search(ZERO_SHOT_SPACE, base.encode(texts, batch_size=64), k + 1)
        elif system == "adapted":
            hits = backend.knn_search(DENSE_SPACE, qvecs, k + 1)
        else:
            hits = backend.hybrid_search(DENSE_SPACE, texts, qvecs, k + 1, weight=hybrid_weight_of(run_dir))
        table[system] = evaluate(_as_results(qids, hits, k), qrels)
        if per_query is not None:
            scores = evaluate_per_query(_as_results(qids, hits, k), qrels, ("ndcg@10",))
            per_query[system] = {q: v["ndcg@10"] for q, v in scores.items()}
    return table


def describe(table: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"systems": list(table), "metrics": table}


def make_training_evaluator(
    backend: Backend,
    qrels: dict[str, dict[str, int]],
    queries: dict[str, str],
    *,
    normalize: bool = False,
    batch_size: int = 128,
    k: int = 100,
    space: str = "eval-student",
):
    """A callable for periodic evaluation during training: metrics of the current student.

    It encodes the corpus with the student (torch; its train mode is restored), searches a
    scratch vector space that it drops afterwards, and returns ``evaluate``'s metrics.
    """
    from rgpl_adapt.encoding import encode_texts
    from rgpl_adapt.evaluation import evaluate

    qids = [q for q in queries if q in qrels]
    if not qids:
        raise ValueError("none of the evaluation queries has judgements in the qrels file")
    texts = [queries[q] for q in qids]
    docs = list(backend.iter_documents())
    doc_ids = [d.id for d in docs]
    doc_texts = [d.full_text() for d in docs]

    def evaluator(model) -> dict[str, float]:
        vecs = encode_texts(model, doc_texts, batch_size, normalize=normalize)
        backend.drop_vectors(space)
        try:
            for start in range(0, len(doc_ids), 10_000):
                backend.put_vectors(space, doc_ids[start : start + 10_000], vecs[start : start + 10_000])
            hits = backend.knn_search(space, encode_texts(model, texts, batch_size, normalize=normalize), k + 1)
        finally:
            backend.drop_vectors(space)
        return evaluate(_as_results(qids, hits, k), qrels)

    return evaluator
