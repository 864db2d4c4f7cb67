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

from rgpl_adapt.chunked import StoreIds, StoreReader
from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.devices import resolve_device
from rgpl_adapt.distributed import DistInfo
from rgpl_adapt.encoding import SentenceTransformerEncoder
from rgpl_adapt.neighbours import exact_search
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_plugin.base import Backend, Hit
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


def _store_dir(
    backend: Backend, scratch: ExitStack, store: str | os.PathLike | None = None, out: Path | None = None
) -> tuple[Path, str]:
    """A document store holding ``backend``'s documents and a key naming its content: ``store`` when given,
    the embedded backend's own ``docs.sqlite``, else a copy streamed a chunk at a time (resumable) into
    ``out/docs`` or, without ``out``, into a folder that ``scratch`` removes."""
    from rgpl_plugin.docstore import DOCS_FILE

    from rgpl_adapt.chunked import copy_documents

    own = getattr(backend, "path", None)
    if store is None and own is not None and (Path(own) / DOCS_FILE).is_file():
        store = own
    if store is not None:
        with StoreReader(store) as reader:
            n = reader.count()
        return Path(store), f"{n}:{(Path(store) / DOCS_FILE).stat().st_mtime_ns}"
    folder = Path(out) / "docs" if out is not None else Path(scratch.enter_context(tempfile.TemporaryDirectory()))
    copied = copy_documents(backend, folder, key=f"{getattr(backend, 'name', '')}:{backend.count()}",
                            chunk_size=ENCODE_CHUNK)
    return folder, f"{copied.count}:{copied.sha}"


def encode_store_vectors(
    store_dir: Path, encoder, out: Path, *, key: str, progress: ProgressFactory = silent,
    chunk_size: int | None = None, batch_size: int = 64,
) -> tuple[StoreIds, np.ndarray]:
    """``(ids, vectors)`` of every document of the store: encoded a chunk at a time into ``out/vectors.npy``
    (:func:`rgpl_adapt.chunked.encode_store`: resumable after a kill, reused under the same ``key``),
    returned as a read-only memory map; ids are looked up by row for the hits only."""
    from rgpl_adapt.chunked import encode_store

    dim = int(np.asarray(encoder.encode(["dimension probe"], batch_size=1)).shape[1])
    res = encode_store(encoder, store_dir, out, dim=dim, key=key, chunk_size=chunk_size or ENCODE_CHUNK,
                       batch_size=batch_size, info=DistInfo(), progress=progress)
    return StoreIds(store_dir), np.load(res.path, mmap_mode="r")


def corpus_vectors(
    backend: Backend, space: str, encoder, progress: ProgressFactory, scratch: ExitStack,
    *, out: Path | None = None, model: str = "", store: str | os.PathLike | None = None,
) -> tuple[Sequence[str], np.ndarray]:
    """Ids and vectors of ``space`` for exact search: the backend's local vectors when it has the space,
    else the store's documents encoded chunk by chunk into ``out/<space>/vectors.npy`` (resumable; reused
    while ``model`` and the store are the same) or, without ``out``, into a folder that ``scratch`` removes.
    Memory: one chunk of texts and the pages of the memory map in use, whatever the corpus size."""
    getter = getattr(backend, "vector_matrix", None)
    if getter is not None and backend.has_vectors(space):
        local = getter(space)
        if local is not None:
            return local
    store_dir, content = _store_dir(backend, scratch, store, out)
    folder = Path(out) / space if out is not None else Path(scratch.enter_context(tempfile.TemporaryDirectory()))
    return encode_store_vectors(store_dir, encoder, folder, key=f"{space}:{model}:{content}", progress=progress)


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

    from rgpl_adapt.evaluation import evaluate, evaluate_per_query
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_adapt.pipeline import DENSE_SPACE, PipelineError, hybrid_weight_of, load_encoder, open_embedded

    run_dir = Path(run_dir)
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        raise ValueError(f"unknown system(s) {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")
    cfg = AdaptConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    # a cluster run's copy of the index's documents: what its vectors are encoded from (no second read)
    copied = run_dir / "docs"
    store = copied if backend is not None and getattr(backend, "path", None) is None \
        and (copied / "docs.sqlite").is_file() else None
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
            dense = corpus_vectors(backend, DENSE_SPACE, encoder, progress, scratch, out=run_dir / "eval",
                                   model=export_key(run_dir / "export"), store=store)
            adapted = exact_search(*dense, qvecs, k + 1)
        for system in systems:
            if system == "bm25":
                hits = backend.bm25_search(texts, k + 1)
            elif system == "zero-shot":
                base = SentenceTransformerEncoder(load_sentence_transformer(
                    cfg.training.student, resolve_device(cfg.device), cfg.training.max_seq_len))
                vectors = corpus_vectors(backend, ZERO_SHOT_SPACE, base, progress, scratch, out=run_dir / "eval",
                                         model=f"{cfg.training.student}:{cfg.training.max_seq_len}", store=store)
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


def export_key(export_dir: Path) -> str:
    """The exported model's identity: its stage manifest's fingerprint (else the folder's mtime)."""
    from rgpl_adapt.manifest import read_manifest

    found = read_manifest(export_dir)
    if found is not None:
        return found.fingerprint
    return str(export_dir.stat().st_mtime_ns) if export_dir.exists() else ""


def describe(table: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {"systems": list(table), "metrics": table}


_ModelEncoder = SentenceTransformerEncoder  # the training evaluator's corpus encoder (tests patch it here)


def make_training_evaluator(
    backend: Backend,
    qrels: dict[str, dict[str, int]],
    queries: dict[str, str],
    *,
    normalize: bool = False,
    batch_size: int = 128,
    k: int = 100,
    space: str = "eval-student",
    store: str | os.PathLike | None = None,
):
    """A callable for periodic evaluation during training: metrics of the current student.

    It encodes the corpus with the student (torch; its train mode is restored) chunk by chunk from the
    document store (``store``, else the embedded backend's own, else a streamed copy of ``backend``'s
    documents) into a memory-mapped file that is removed after each call, searches those vectors exactly
    (:func:`rgpl_adapt.neighbours.exact_search`, whatever the corpus size) and returns ``evaluate``'s
    metrics. Memory: one chunk of texts and the map's pages in use, not the corpus. ``space`` is kept for
    callers that passed it and is not written.
    """
    from rgpl_adapt.encoding import encode_texts
    from rgpl_adapt.evaluation import evaluate

    qids = [q for q in queries if q in qrels]
    if not qids:
        raise ValueError("none of the evaluation queries has judgements in the qrels file")
    texts = [queries[q] for q in qids]
    copies = ExitStack()  # a streamed copy of a backend without a store lives as long as the evaluator
    store_dir, _ = _store_dir(backend, copies, store)

    def evaluator(model) -> dict[str, float]:
        with tempfile.TemporaryDirectory() as folder:  # a fresh folder per call: the key needs no count
            ids, vecs = encode_store_vectors(store_dir, _ModelEncoder(model, normalize=normalize), Path(folder),
                                             key="student", batch_size=batch_size)
            qvecs = encode_texts(model, texts, batch_size, normalize=normalize)
            hits = exact_search(ids, vecs, qvecs, k + 1)
            del vecs
        return evaluate(_as_results(qids, hits, k), qrels)

    evaluator.close = copies.close  # type: ignore[attr-defined]
    return evaluator
