"""Adapting an existing OpenSearch / Elasticsearch index (serving it: :mod:`rgpl_adapt.cluster_serve`).

``rgpl-adapt --index docs`` goes through :func:`adapt_index`:

* :class:`ClusterBackend` is what the pipeline sees. Documents and BM25 come from the user's
  index (read only: Point-in-Time, ``multi_match``). Vector spaces (initial mining, every
  remining round, the final ``dense`` space) live either in shadow k-NN indices on the cluster
  (``miner="cluster"``) or in a local :class:`~rgpl_plugin.vectors.VectorStore` under the run
  folder (``miner="local"``: exact / HNSW on the training machine; ``dense`` is mirrored to the
  cluster because publishing copies it from there). Every space it created, and every
  temporary search pipeline of the hybrid-weight sweep, is removed by :meth:`ClusterBackend.close`,
  which :func:`adapt_index` calls also when the run fails.
* :class:`~rgpl_adapt.cluster_serve.ClusterPublisher` is the serve stage's cluster half: the final vectors
  of *every* document go into a new version index behind the alias, with the hybrid search pipeline (and
  with ``register_model`` the ML Commons model) set up before the alias moves. It, and querying the
  published index afterwards (:func:`~rgpl_adapt.cluster_serve.search_index`), live in
  :mod:`rgpl_adapt.cluster_serve`; this module re-exports their names.

Nothing here deletes or rewrites a user's index; taking over a concrete index's name with an
alias needs ``allow_alias_takeover`` (see :mod:`rgpl_plugin.opensearch_publish`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rgpl_plugin.base import Document, FusionMethod, Hit
from rgpl_plugin.connection import ClusterSettings, Engine

from rgpl_adapt.cluster_serve import (
    ClusterPublisher,
    default_version,
    es_retriever_template,
    read_cluster_report,
    search_index,
)
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.runfolder import DENSE_SPACE

__all__ = [  # the adaptation, and the serving names callers import from here (rgpl_adapt.cluster_serve)
    "DENSE_SPACE",
    "ClusterBackend",
    "ClusterOptions",
    "ClusterPublisher",
    "adapt_index",
    "default_version",
    "docs_fingerprint",
    "es_retriever_template",
    "open_backend",
    "read_cluster_report",
    "sample_documents",
    "search_index",
]

log = logging.getLogger(__name__)

Miner = Literal["cluster", "local"]
PublishWrite = Literal["bulk", "reindex"]


@dataclass(frozen=True)
class ClusterOptions:
    """What to adapt in the cluster and how to publish it (no credentials: those are in
    :class:`~rgpl_plugin.connection.ClusterSettings`)."""

    index: str
    engine: Engine = "opensearch"
    text_fields: tuple[str, ...] = ()
    title_field: str | None = None
    query: dict[str, Any] | None = None
    sample: int | None = None
    miner: Miner = "cluster"
    alias: str | None = None
    allow_alias_takeover: bool = False
    publish: bool = True
    search_pipeline: bool = True
    register_model: bool = False
    version: str | None = None
    exact_knn: bool = False
    seed: int = 42
    publish_write: PublishWrite = "bulk"
    """How the version index is filled: ``bulk`` reads the source once and writes each document with its
    vector in one bulk pass (1.3-3.1x faster on the test node: bench/RESULTS.md); ``reindex`` copies with ``_reindex``
    and adds the vectors in a second pass (:mod:`rgpl_plugin.version_load`)."""

    def __post_init__(self) -> None:
        if self.miner not in ("cluster", "local"):
            raise ValueError(f"miner must be 'cluster' or 'local', not {self.miner!r}")
        if self.publish_write not in ("bulk", "reindex"):
            raise ValueError(f"publish_write must be 'bulk' or 'reindex', not {self.publish_write!r}")
        if self.sample is not None and self.sample < 2:
            raise ValueError("sample must be at least 2 documents")
        if self.register_model and self.engine != "opensearch":
            raise ValueError(
                "register_model uploads to OpenSearch ML Commons; Elasticsearch is not supported"
            )
        if self.title_field and not self.text_fields:
            raise ValueError("a title field needs the text field(s) too (--text-field)")

    def fingerprint(self) -> dict[str, Any]:
        """What decides the published result (for the serve stage's manifest)."""
        return {k: v for k, v in asdict(self).items() if k not in ("miner", "exact_knn", "publish_write")}


def open_backend(client_or_settings: Any, options: ClusterOptions, *, query: bool = True) -> Any:
    """The plugin backend for ``options.engine`` over ``options.index``."""
    kwargs: dict[str, Any] = {
        "text_fields": list(options.text_fields) or None,
        "title_field": options.title_field,
        "query": options.query if query else None,
        "exact": options.exact_knn,
    }
    if options.engine == "elasticsearch":
        from rgpl_plugin.elasticsearch import ElasticsearchBackend

        return ElasticsearchBackend(client_or_settings, options.index, **kwargs)
    if options.engine != "opensearch":
        raise ValueError(f"engine must be 'opensearch' or 'elasticsearch', not {options.engine!r}")
    from rgpl_plugin.opensearch import OpenSearchBackend

    return OpenSearchBackend(client_or_settings, options.index, **kwargs)


def sample_documents(documents: Iterator[Document], n: int, seed: int) -> list[Document]:
    """A uniform sample of ``n`` documents (reservoir sampling: one pass, memory O(n)), in the
    order they were read."""
    rng = random.Random(seed)
    reservoir: list[tuple[int, Document]] = []
    for i, doc in enumerate(documents):
        if i < n:
            reservoir.append((i, doc))
        else:
            j = rng.randint(0, i)
            if j < n:
                reservoir[j] = (i, doc)
    return [d for _, d in sorted(reservoir, key=lambda t: t[0])]


class ClusterBackend:
    """The :class:`rgpl_plugin.base.Backend` the pipeline uses for a cluster index.

    Args:
        source: an ``OpenSearchBackend`` / ``ElasticsearchBackend`` over the user's index.
        store: a local ``VectorStore`` for ``miner="local"``; None keeps spaces in shadow indices.
        sample: adapt to a uniform sample of this many documents (BM25 hits outside the sample
            are dropped, over-fetching to keep ``k``).
        mirror: spaces that are also written to the cluster in local mode (publishing copies the
            served vectors from a shadow index).
    """

    def __init__(
        self,
        source: Any,
        *,
        store: Any = None,
        sample: int | None = None,
        seed: int = 42,
        mirror: Sequence[str] = (DENSE_SPACE,),
    ) -> None:
        self.source = source
        self.store = store
        self.name = f"{source.name}+local" if store is not None else source.name
        self.sample_size = sample
        self.seed = seed
        self.mirror = set(mirror)
        self._sample: list[Document] | None = None
        self._sample_ids: set[str] | None = None
        self.cluster_spaces: set[str] = set()
        self.local_spaces: set[str] = set()

    # -- reading ----------------------------------------------------------------------------
    def _sampled(self) -> list[Document] | None:
        if self.sample_size is None:
            return None
        if self._sample is None:
            self._sample = sample_documents(self.source.iter_documents(), self.sample_size, self.seed)
            self._sample_ids = {d.id for d in self._sample}
            log.info("adapting to a sample of %d documents of %s", len(self._sample), self.source.index)
        return self._sample

    def count(self) -> int:
        sampled = self._sampled()
        return len(sampled) if sampled is not None else self.source.count()

    def iter_documents(self, batch_size: int = 1000, resume: dict | None = None) -> Iterator[Document]:
        """The sample, or the source's documents (``resume``: a :attr:`cursor` of an interrupted read)."""
        sampled = self._sampled()
        if sampled is not None:
            yield from sampled
        elif resume:
            yield from self.source.iter_documents(batch_size, resume=resume)
        else:
            yield from self.source.iter_documents(batch_size)

    @property
    def cursor(self) -> dict | None:
        """Where the source's read stands (None for a sample: it is read whole before the first document)."""
        return None if self.sample_size is not None else getattr(self.source, "cursor", None)

    @property
    def resumed(self) -> bool:
        return self.sample_size is None and bool(getattr(self.source, "resumed", False))

    def get_documents(self, ids: Sequence[str]) -> list[Document]:
        return self.source.get_documents(ids)

    def bm25_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        if self._sampled() is None:
            return self.source.bm25_search(queries, k)
        total = max(1, self.source.count())
        factor = min(10, math.ceil(total / max(1, len(self._sample or []))))
        hits = self.source.bm25_search(queries, min(10_000, k * factor))
        keep = self._sample_ids or set()
        return [[h for h in hs if h.doc_id in keep][:k] for hs in hits]

    # -- vector spaces ------------------------------------------------------------------------
    def put_vectors(self, space: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        if self.store is None or space in self.mirror:
            self.cluster_spaces.add(space)
            self.source.put_vectors(space, ids, vectors)
        if self.store is not None:
            self.local_spaces.add(space)
            self.store.put(space, list(ids), vectors)

    def knn_search(
        self, space: str, queries: np.ndarray, k: int, *, exact: bool | None = None
    ) -> list[list[Hit]]:
        """``exact=True`` scores every vector (the cluster's ``script_score``; local spaces are exact up to
        the store's HNSW threshold anyway); the miners use it only to measure recall on a sample."""
        if self.store is not None:
            return self.store.search(space, np.atleast_2d(np.asarray(queries, dtype=np.float32)), k)
        return self.source.knn_search(space, queries, k, exact=exact)

    def vector_matrix(self, space: str) -> tuple[list[str], np.ndarray] | None:
        """The local space's ids and vectors (``miner="local"``); None when the space lives in the cluster."""
        return self.store.matrix(space) if self.store is not None else None

    def has_vectors(self, space: str) -> bool:
        return self.store.has(space) if self.store is not None else self.source.has_vectors(space)

    def drop_vectors(self, space: str) -> None:
        if self.store is None or space in self.mirror:
            self.source.drop_vectors(space)
            self.cluster_spaces.discard(space)
        if self.store is not None:
            self.store.drop(space)
            self.local_spaces.discard(space)

    def hybrid_search(
        self,
        space: str,
        texts: Sequence[str],
        vectors: np.ndarray,
        k: int,
        *,
        weight: float = 0.5,
        method: FusionMethod = "min_max",
    ) -> list[list[Hit]]:
        """In the cluster (shadow index + search pipeline), or, in local mode, the cluster's BM25
        fused with local k-NN exactly as OpenSearch's processors fuse (:func:`rgpl_plugin.fusion.fuse`)."""
        if self.store is None:
            return self.source.hybrid_search(space, texts, vectors, k, weight=weight, method=method)
        from rgpl_plugin.fusion import fuse

        bm25 = self.source.bm25_search(texts, k)
        dense = self.knn_search(space, vectors, k)
        return [fuse(b, d, k, weight=weight, method=method) for b, d in zip(bm25, dense)]

    # -- lifecycle ----------------------------------------------------------------------------
    def cleanup(self) -> list[str]:
        """Remove every vector space and temporary search pipeline this run created; returns
        what was removed. Errors are logged, never raised (the first error of a run matters)."""
        removed = []
        for space in sorted(self.cluster_spaces):
            try:
                self.source.drop_vectors(space)
                removed.append(self.source.shadow_index(space))
            except Exception as exc:  # noqa: BLE001 - client errors of every kind are translated/logged
                log.warning("could not delete shadow index of %s: %s", space, type(exc).__name__)
        self.cluster_spaces.clear()
        for space in sorted(self.local_spaces):
            self.store.drop(space)
        self.local_spaces.clear()
        pipelines = getattr(self.source, "_pipelines", set())
        for name in sorted(pipelines):
            try:
                self.source.client.search_pipeline.delete(id=name)
                removed.append(f"search pipeline {name}")
            except Exception as exc:  # noqa: BLE001 - client errors of every kind are translated/logged
                log.warning("could not delete search pipeline %s: %s", name, type(exc).__name__)
        pipelines.clear()
        return removed

    def close(self) -> None:
        self.cleanup()
        self.source.close()


def docs_fingerprint(docs: Sequence[Document]) -> str:
    """A short hash of the documents' ids and texts (a changed index rebuilds every stage); what
    :func:`rgpl_adapt.chunked.copy_documents` computes over the copied store in store order."""
    h = hashlib.sha256()
    for d in docs:
        h.update(json.dumps([d.id, d.title, d.text]).encode("utf-8"))
    return h.hexdigest()[:16]


def adapt_index(
    cfg: Any,
    run_dir: str | os.PathLike,
    client_or_settings: Any,
    options: ClusterOptions,
    *,
    progress: ProgressFactory = silent,
    on_event: Any = None,
    resume: bool = False,
    restart: bool = False,
) -> Any:
    """Run the whole adaptation on a cluster index and publish it; returns the AdaptResult.

    Shadow indices, local vector spaces and temporary pipelines are removed whatever happens.
    """
    from rgpl_adapt.pipeline import Pipeline

    run_dir = Path(run_dir)
    settings = client_or_settings if isinstance(client_or_settings, ClusterSettings) else None
    source = open_backend(client_or_settings, options)
    store = None
    if options.miner == "local":
        from rgpl_plugin.vectors import VectorStore

        store = VectorStore(run_dir / "vectors")
    backend = ClusterBackend(source, store=store, sample=options.sample, seed=options.seed)
    publisher = ClusterPublisher(backend, options, run_dir, settings=settings, progress=progress)
    kwargs = {"on_event": on_event} if on_event is not None else {}
    try:
        return Pipeline(cfg, run_dir, backend=backend, publisher=publisher, progress=progress, **kwargs).run(
            resume=resume, restart=restart
        )
    finally:
        backend.close()
