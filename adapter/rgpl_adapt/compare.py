"""Stage 9: evaluate a run against qrels: BM25, zero-shot, adapted and hybrid in one table.

Dense retrieval is always **exact** here, whatever the corpus size
(:func:`rgpl_adapt.neighbours.exact_search`: a chunked matrix product over the space's vectors,
memory-mapped when large, with a running top-k);
the backend's own k-NN (HNSW above 200k vectors on the embedded backend, the engine's index in a
cluster) is never what a metric is computed on. Hybrid fuses the backend's BM25 with the exact dense
hits exactly as the backends fuse (:func:`rgpl_plugin.fusion.fuse`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.devices import resolve_device
from rgpl_adapt.neighbours import exact_search
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_plugin.base import Backend, Hit, batched
from rgpl_plugin.fusion import fuse

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


ENCODE_CHUNK = 10_000  # documents encoded and written at a time


def _encode_corpus_into(backend: Backend, space: str, encoder, progress: ProgressFactory) -> None:
    with progress(total=backend.count(), desc=f"encoding corpus ({space})", unit="doc") as bar:
        for docs in batched(backend.iter_documents(), ENCODE_CHUNK):
            vecs = encoder.encode([d.full_text() for d in docs], batch_size=64)
            backend.put_vectors(space, [d.id for d in docs], vecs)
            bar.update(len(docs))


def _encode_corpus_to_file(backend: Backend, encoder, folder: str) -> tuple[list[str], np.ndarray]:
    """The corpus vectors in a memory-mapped file under ``folder`` (backends without local vectors)."""
    ids: list[str] = []
    matrix: np.ndarray | None = None
    n = backend.count()
    for docs in batched(backend.iter_documents(), ENCODE_CHUNK):
        vecs = np.asarray(encoder.encode([d.full_text() for d in docs], batch_size=64), dtype=np.float32)
        if matrix is None:
            path = os.path.join(folder, "vectors.npy")
            matrix = np.lib.format.open_memmap(path, "w+", np.float32, (n, vecs.shape[1]))
        matrix[len(ids) : len(ids) + len(docs)] = vecs
        ids.extend(d.id for d in docs)
    if matrix is None:
        return [], np.empty((0, 1), np.float32)
    matrix.flush()
    return ids, matrix[: len(ids)]


def corpus_vectors(
    backend: Backend, space: str, encoder, progress: ProgressFactory, scratch: ExitStack
) -> tuple[list[str], np.ndarray]:
    """Ids and vectors of ``space`` for exact search: the backend's local vectors (written first when the
    space is missing), or, for a backend that keeps vectors elsewhere (a cluster), the corpus encoded into
    a memory-mapped file in a temporary folder that ``scratch`` removes."""
    getter = getattr(backend, "vector_matrix", None)
    local = None
    if getter is not None:
        if not backend.has_vectors(space):
            _encode_corpus_into(backend, space, encoder, progress)
        local = getter(space)
    if local is not None:
        return local
    return _encode_corpus_to_file(backend, encoder, scratch.enter_context(tempfile.TemporaryDirectory()))


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
    encoder = load_encoder(run_dir / "export", cfg.export.onnx, bulk=True) if needs_adapted else None
    with ExitStack() as scratch:
        if needs_adapted:
            qvecs = encoder.encode(texts, batch_size=64)
            dense = corpus_vectors(backend, DENSE_SPACE, encoder, progress, scratch)
            adapted = exact_search(*dense, qvecs, k + 1)
        for system in systems:
            if system == "bm25":
                hits = backend.bm25_search(texts, k + 1)
            elif system == "zero-shot":
                base = SentenceTransformerEncoder(load_sentence_transformer(
                    cfg.training.student, resolve_device(cfg.device), cfg.training.max_seq_len))
                vectors = corpus_vectors(backend, ZERO_SHOT_SPACE, base, progress, scratch)
                hits = exact_search(*vectors, base.encode(texts, batch_size=64), k + 1)
            elif system == "adapted":
                hits = adapted
            else:
                weight = hybrid_weight_of(run_dir)
                bm25 = backend.bm25_search(texts, k + 1)
                hits = [fuse(b, d, k + 1, weight=weight, method="min_max") for b, d in zip(bm25, adapted)]
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

    It encodes the corpus with the student (torch; its train mode is restored), searches those
    vectors exactly (:func:`rgpl_adapt.neighbours.exact_search`, whatever the corpus size) and
    returns ``evaluate``'s metrics. ``backend`` only supplies the documents; ``space`` is kept for
    callers that passed it and is no longer written.
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
        vecs = np.asarray(encode_texts(model, doc_texts, batch_size, normalize=normalize), dtype=np.float32)
        hits = exact_search(doc_ids, vecs, encode_texts(model, texts, batch_size, normalize=normalize), k + 1)
        return evaluate(_as_results(qids, hits, k), qrels)

    return evaluator
