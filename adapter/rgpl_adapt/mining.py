"""Stage 4: hard negatives for each generated query, mined through the search backend.

GPL (``gpl/toolkit/mine.py``) and R-GPL take, for every pseudo query, the top-k passages of each of
two dense retrievers ranked by cosine similarity, with the query's positive passage removed. BM25
negatives are an option of ours (``MiningConfig.bm25``), off by default. The pool keeps the
sources apart (``negatives["bm25"]``, ``negatives["<retriever>"]``); training samples one
negative from their union.

Everything goes through the :class:`~rgpl_plugin.base.Backend` protocol, so the same code
mines on the embedded index and on OpenSearch: a dense retriever's corpus vectors are written
to a scratch vector space ``miner-<slug>``, searched, and dropped again.

R-GPL's *remining* reuses :func:`remine_pools` once the training loop has written the current
student's corpus vectors to a space; :func:`churn` measures how much the pools changed.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from rgpl_adapt.encoding import TextEncoder
from rgpl_adapt.neighbours import DEFAULT_EXACT_BUDGET_S, SearchReport, measure_backend, plan_search
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.records import GeneratedQuery, Hit, NegativePool
from rgpl_plugin.base import Backend, batched

logger = logging.getLogger(__name__)

BM25_SOURCE = "bm25"
STUDENT_SOURCE = "student"
SEARCH_BATCH = 256  # queries per k-NN / BM25 request
LOCAL_SEARCH_BATCH = 1024  # queries per local (exact or HNSW) search call
CORPUS_CHUNK_MIN = 1024  # documents encoded and written per put_vectors call (at least)

__all__ = [
    "BM25_SOURCE",
    "STUDENT_SOURCE",
    "churn",
    "exclude_positive",
    "mine_negatives",
    "remine_pools",
    "space_name",
]


def space_name(retriever: str) -> str:
    """The scratch vector-space name for a retriever: ``miner-<slug>``.

    The slug is lower-case ``[a-z0-9-]`` (valid as an OpenSearch index suffix). A name that is
    not already such a slug (a path, upper case) or is long gets a short hash of the full name,
    so two retrievers never share a space.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", retriever.lower()).strip("-") or "retriever"
    if slug != retriever or len(slug) > 48:
        digest = hashlib.sha1(retriever.encode("utf-8")).hexdigest()[:8]
        slug = f"{slug[:40].rstrip('-')}-{digest}"
    return f"miner-{slug}"


def _texts_for(queries: Sequence[GeneratedQuery], query_texts: Mapping[str, str] | None) -> list[str]:
    if query_texts is None:
        return [q.text for q in queries]
    missing = [q.qid for q in queries if q.qid not in query_texts]
    if missing:
        raise KeyError(f"query_texts has no text for {len(missing)} query id(s), e.g. {missing[:3]}")
    return [query_texts[q.qid] for q in queries]


def _unique(texts: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Distinct texts in first-seen order, and for each input the index of its distinct text."""
    index: dict[str, int] = {}
    where = np.empty(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        where[i] = index.setdefault(text, len(index))
    return list(index), where


def exclude_positive(hits: Sequence[Hit], positive: str, k: int) -> list[str]:
    """The top-``k`` ids of ``hits`` without ``positive`` (and without repeats)."""
    out: list[str] = []
    seen: set[str] = {positive}
    for hit in hits:
        if hit.doc_id not in seen:
            seen.add(hit.doc_id)
            out.append(hit.doc_id)
            if len(out) == k:
                break
    return out


def _search_k(k: int, n_docs: int) -> int:
    """k+1 results (room to drop the positive), but never more than the corpus holds."""
    if k + 1 > n_docs:
        logger.warning("k=%d negatives asked for a corpus of %d documents; pools will be smaller", k, n_docs)
    return max(1, min(k + 1, n_docs))


def _local_vectors(backend: Backend, space: str) -> tuple[list[str], np.ndarray] | None:
    """The space's ids and vectors when they are on this machine (embedded, ``miner="local"``), else None."""
    getter = getattr(backend, "vector_matrix", None)
    return getter(space) if getter is not None else None


def _knn_negatives(
    backend: Backend,
    space: str,
    queries: Sequence[GeneratedQuery],
    vectors: np.ndarray,
    k: int,
    *,
    desc: str,
    progress: ProgressFactory,
    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S,
    device: str | None = None,
) -> tuple[list[list[str]], SearchReport]:
    """Top-k neighbours of each query vector in ``space``, the query's positive removed.

    Vectors on this machine are searched by :func:`rgpl_adapt.neighbours.plan_search` (exact within
    ``exact_budget_s``, else HNSW with measured recall); a cluster's space by its own k-NN, whose recall
    is measured on a sample (:func:`rgpl_adapt.neighbours.measure_backend`).
    """
    kk = _search_k(k, backend.count())
    local = _local_vectors(backend, space)
    if local is not None:
        planned = plan_search(*local, vectors, kk, budget_s=exact_budget_s, device=device)
        search, step, report = planned.search, LOCAL_SEARCH_BATCH, planned.report
        fell_back = report.method == "exact" and report.recall_at_k is not None  # HNSW missed the target
        (logger.warning if fell_back else logger.info)("%s: %s", desc, report.summary())
    else:
        def search(batch: np.ndarray) -> list[list[Hit]]:
            return backend.knn_search(space, batch, kk)

        step = SEARCH_BATCH
        report = measure_backend(backend, space, vectors, kk)
    out: list[list[str]] = []
    with progress(total=len(queries), desc=desc, unit="query") as bar:
        for start in range(0, len(queries), step):
            chunk = queries[start : start + step]
            results = search(vectors[start : start + len(chunk)])
            out.extend(exclude_positive(hits, q.doc_id, k) for q, hits in zip(chunk, results))
            bar.update(len(chunk))
    return out, report


def _bm25_negatives(
    backend: Backend,
    queries: Sequence[GeneratedQuery],
    texts: Sequence[str],
    k: int,
    *,
    progress: ProgressFactory,
) -> list[list[str]]:
    kk = _search_k(k, backend.count())
    distinct, where = _unique(texts)
    hits: list[list[Hit]] = []
    with progress(total=len(distinct), desc="mining bm25", unit="query") as bar:
        for chunk in batched(distinct, SEARCH_BATCH):
            hits.extend(backend.bm25_search(chunk, kk))
            bar.update(len(chunk))
    return [exclude_positive(hits[where[i]], q.doc_id, k) for i, q in enumerate(queries)]


def _write_corpus_vectors(
    backend: Backend,
    space: str,
    encoder: TextEncoder,
    *,
    batch_size: int,
    desc: str,
    progress: ProgressFactory,
) -> int:
    """Encode every document of the backend and write the vectors to ``space``; returns the count."""
    chunk_size = max(CORPUS_CHUNK_MIN, batch_size)
    n = 0
    with progress(total=backend.count(), desc=desc, unit="doc") as bar:
        for docs in batched(backend.iter_documents(), chunk_size):
            vectors = np.asarray(encoder.encode([d.full_text() for d in docs], batch_size), dtype=np.float32)
            backend.put_vectors(space, [d.id for d in docs], vectors)
            n += len(docs)
            bar.update(len(docs))
    return n


CorpusWriter = Callable[[Backend, str, str, TextEncoder], int]
"""``(backend, space, retriever name, encoder) -> documents written``: puts every document's vector into ``space``."""


def _mine_dense(
    name: str,
    encoder: TextEncoder,
    backend: Backend,
    queries: Sequence[GeneratedQuery],
    texts: Sequence[str],
    k: int,
    *,
    batch_size: int,
    progress: ProgressFactory,
    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S,
    write_corpus: CorpusWriter | None = None,
    device: str | None = None,
) -> tuple[list[list[str]], SearchReport]:
    space = space_name(name)
    if backend.has_vectors(space):
        logger.info("dropping stale scratch space %s left by an earlier run", space)
        backend.drop_vectors(space)
    try:
        if write_corpus is not None:
            n = write_corpus(backend, space, name, encoder)
        else:
            n = _write_corpus_vectors(
                backend,
                space,
                encoder,
                batch_size=batch_size,
                desc=f"encoding corpus ({name})",
                progress=progress,
            )
        logger.info("wrote %d corpus vectors of %s to %s", n, name, space)
        distinct, where = _unique(texts)
        qvecs = np.asarray(encoder.encode(distinct, batch_size, progress=progress), dtype=np.float32)
        return _knn_negatives(
            backend, space, queries, qvecs[where], k, desc=f"mining {name}", progress=progress,
            exact_budget_s=exact_budget_s, device=device,
        )
    finally:
        backend.drop_vectors(space)


def mine_negatives(
    queries: Sequence[GeneratedQuery],
    backend: Backend,
    *,
    retrievers: Sequence[tuple[str, TextEncoder]] = (),
    bm25: bool = True,
    k: int = 50,
    query_texts: Mapping[str, str] | None = None,
    encode_batch_size: int = 128,
    progress: ProgressFactory = silent,
    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S,
    search_reports: dict[str, dict] | None = None,
    write_corpus: CorpusWriter | None = None,
    device: str | None = None,
) -> list[NegativePool]:
    """Hard-negative pools for ``queries``: BM25 and each dense retriever's top-``k``, positive removed.

    Args:
        queries: generated queries; each one's ``doc_id`` is its positive and never a negative.
        backend: the index holding the corpus. Dense retrievers get a scratch vector space
            ``miner-<slug>`` that is dropped afterwards (also when mining fails).
        retrievers: ``(name, encoder)`` pairs; ``name`` becomes the pool's source key.
        bm25: also take BM25's top-``k`` (source ``"bm25"``).
        k: negatives per query and source (fewer when the corpus is smaller than ``k + 1``).
        query_texts: optional ``qid -> text`` used instead of ``GeneratedQuery.text`` (for
            example with a retriever's query prefix).
        encode_batch_size: batch size for the encoders.
        progress: progress-bar factory (corpus encoding, query encoding, searching).
        exact_budget_s: seconds exact search of one retriever's space may take before HNSW is used
            (:func:`rgpl_adapt.neighbours.plan_search`; vectors on this machine only).
        search_reports: when given, filled with ``{retriever: SearchReport.as_dict()}`` (how each
            dense source was searched: exact or HNSW, the estimate, the measured recall).
        write_corpus: how a retriever's corpus vectors get into its space; default: encode
            ``backend.iter_documents()`` in chunks. The pipeline passes one that encodes its document
            store in resumable, memory-mapped chunks (:func:`rgpl_adapt.chunked.encode_store`).
        device: where exact search of vectors on this machine runs: a CUDA device runs it there
            (:class:`rgpl_adapt.torch_topk.TorchTopk`, same results), anything else numpy on the CPU.

    Returns:
        One :class:`NegativePool` per query, in the order of ``queries``.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    names = [name for name, _ in retrievers]
    if len(set(names)) != len(names):
        raise ValueError(f"retriever names must be distinct, got {names}")
    if bm25 and BM25_SOURCE in names:
        raise ValueError(f"a retriever may not be named {BM25_SOURCE!r} while BM25 mining is on; rename it")
    if not bm25 and not retrievers:
        raise ValueError("no negative source: pass retrievers=[(name, encoder), ...] or bm25=True")
    texts = _texts_for(queries, query_texts)
    per_source: dict[str, list[list[str]]] = {}
    if bm25:
        per_source[BM25_SOURCE] = _bm25_negatives(backend, queries, texts, k, progress=progress)
    for name, encoder in retrievers:
        per_source[name], report = _mine_dense(
            name, encoder, backend, queries, texts, k, batch_size=encode_batch_size, progress=progress,
            exact_budget_s=exact_budget_s, write_corpus=write_corpus, device=device,
        )
        if search_reports is not None:
            search_reports[name] = report.as_dict()
    pools = [
        NegativePool(qid=q.qid, negatives={source: ids[i] for source, ids in per_source.items()})
        for i, q in enumerate(queries)
    ]
    empty = sum(1 for p in pools if not p.all_ids())
    if empty:
        logger.warning("%d of %d queries got no negative at all", empty, len(pools))
    return pools


def remine_pools(
    queries: Sequence[GeneratedQuery],
    backend: Backend,
    space: str,
    query_vectors: np.ndarray,
    k: int,
    *,
    progress: ProgressFactory = silent,
    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S,
    search_reports: dict[str, dict] | None = None,
    device: str | None = None,
) -> list[NegativePool]:
    """R-GPL remining: new pools (source ``"student"``) from the student's vectors in ``space``.

    The caller has written the student's corpus vectors to ``space`` and encoded the queries
    (``query_vectors[i]`` belongs to ``queries[i]``) with the same model and normalisation.
    ``exact_budget_s``, ``device`` and ``search_reports`` (filled with ``{"student": ...}``) as in
    :func:`mine_negatives`.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    query_vectors = np.asarray(query_vectors, dtype=np.float32)
    if query_vectors.ndim != 2 or len(query_vectors) != len(queries):
        raise ValueError(
            f"query_vectors must have one row per query: got shape {query_vectors.shape} for {len(queries)} queries"
        )
    if not backend.has_vectors(space):
        raise ValueError(
            f"vector space {space!r} does not exist; write the student's corpus vectors to it first"
        )
    negatives, report = _knn_negatives(backend, space, queries, query_vectors, k, desc="remining",
                                       progress=progress, exact_budget_s=exact_budget_s, device=device)
    if search_reports is not None:
        search_reports[STUDENT_SOURCE] = report.as_dict()
    return [NegativePool(qid=q.qid, negatives={STUDENT_SOURCE: ids}) for q, ids in zip(queries, negatives)]


def churn(old: Sequence[NegativePool], new: Sequence[NegativePool]) -> float:
    """Share of each new pool's negatives that were not in the old pool of the same query, averaged.

    Pools are matched by ``qid`` and compared as the union of their sources. Queries whose new
    pool is empty are left out; a query absent from ``old`` counts as fully new (1.0). Returns
    0.0 when no query has a new negative.
    """
    before = {pool.qid: set(pool.all_ids()) for pool in old}
    shares: list[float] = []
    for pool in new:
        ids = pool.all_ids()
        if not ids:
            continue
        seen = before.get(pool.qid, set())
        shares.append(sum(1 for doc_id in ids if doc_id not in seen) / len(ids))
    return float(np.mean(shares)) if shares else 0.0
