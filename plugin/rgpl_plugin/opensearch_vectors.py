"""Vector spaces of the OpenSearch backend: shadow k-NN indices, k-NN and hybrid search on them.

A vector space ``space`` is the shadow index ``<index>-rgpl-shadow-<space>`` (``knn_vector``,
``innerproduct``, HNSW on ``lucene`` or ``faiss``: :func:`choose_engine`), which also carries a copy of the
text fields so the ``hybrid`` query can run on it. The first :meth:`~ShadowVectors.put_vectors` creates it
in loading mode, vectors go in with ``streaming_bulk`` (429s retried with backoff) and
:meth:`~ShadowVectors.finish_vectors` restores its settings before the first search. Hybrid search fuses
BM25 and k-NN in a search pipeline (:func:`put_hybrid_pipeline`: min-max + weighted mean, or RRF), created
once per method and weight.

:class:`ShadowVectors` is mixed into :class:`rgpl_plugin.opensearch.OpenSearchBackend`; the Elasticsearch
backend overrides how a shadow index is created, written and searched.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rgpl_plugin import mappings as m
from rgpl_plugin.base import BackendError, FusionMethod, Hit, batched
from rgpl_plugin.errors import BulkWriteError, _ResponseError, parse_version, require_version

__all__ = [
    "ALIAS_DEFAULT_PIPELINE_SINCE",
    "KNN_PLUGIN",
    "LUCENE_INNERPRODUCT_SINCE",
    "NEURAL_PLUGIN",
    "ShadowVectors",
    "choose_engine",
    "put_hybrid_pipeline",
    "set_default_pipeline",
]

log = logging.getLogger("rgpl_plugin.opensearch")

KNN_PLUGIN = "opensearch-knn"
NEURAL_PLUGIN = "opensearch-neural-search"
LUCENE_INNERPRODUCT_SINCE = "2.13.0"
#: From this version a search through an alias applies the index's ``index.search.default_pipeline``.
ALIAS_DEFAULT_PIPELINE_SINCE = "2.14.0"


def choose_engine(version: str) -> str:
    """``lucene`` where it supports ``innerproduct`` (k-NN 2.13+), else ``faiss``."""
    return "lucene" if parse_version(version) >= parse_version(LUCENE_INNERPRODUCT_SINCE) else "faiss"


class ShadowVectors:
    """The vector spaces of :class:`~rgpl_plugin.opensearch.OpenSearchBackend` (``client``, ``index``,
    ``vector_field``, the HNSW, bulk and after-load settings, ``fields()``, ``properties()``, ``version()``,
    ``_call``, ``_error``, ``_plugin_error``, ``_fetch_sources``, ``_msearch`` and ``_hits`` come from it)."""

    @property
    def engine(self) -> str:
        """The HNSW engine: as given, else ``lucene`` from k-NN 2.13 (its first with lucene ``innerproduct``;
        also the one engine a plugin without the faiss/nmslib JNI libraries, e.g. the Maven Central zip, has),
        ``faiss`` below."""
        if self._engine is None:
            self._engine = choose_engine(self.version())
        return self._engine

    def shadow_index(self, space: str) -> str:
        """The shadow index of a vector space."""
        name = m.shadow_index_name(self.index, space)
        assert name != self.index
        return name

    def has_vectors(self, space: str) -> bool:
        """Whether the shadow index of ``space`` exists."""
        return bool(self._call("checking a vector space", self.client.indices.exists, index=self.shadow_index(space)))

    def _create_shadow(self, space: str, dimension: int) -> None:
        shadow = self.shadow_index(space)
        text_props = {}
        if self.copy_text:
            title, texts = self.fields()
            props = self.properties()
            text_props = {f: props[f] for f in (title, *texts) if f and f in props}
        body = m.shadow_index_body(
            dimension, vector_field=self.vector_field, text_properties=text_props, engine=self.engine,
            m=self.hnsw_m, ef_construction=self.ef_construction, source_settings=self.source_settings(),
        )
        try:
            self.client.indices.create(index=shadow, body=body)
        except Exception as exc:
            text = str(exc).lower()
            if "knn" in text and ("unknown setting" in text or "no handler" in text or "mapper_parsing" in text):
                raise self._plugin_error(exc, "creating a k-NN shadow index", shadow, KNN_PLUGIN) from None
            raise self._error(exc, "creating a k-NN shadow index", shadow) from None
        self._loading.add(space)
        log.info("created shadow index %s (%d-d, %s)", shadow, dimension, self.engine)

    def source_settings(self) -> dict[str, Any]:
        """``settings.index`` of the (first) index behind :attr:`index` (its analyzers and limits are
        copied into shadow indices: :func:`rgpl_plugin.mappings.copyable_index_settings`)."""
        resp = self._call("reading the index settings", self.client.indices.get_settings, index=self.index)
        resp = getattr(resp, "body", resp)
        first = next(iter(resp.values()), {}) if isinstance(resp, Mapping) and resp else {}
        index = first.get("settings", {}).get("index", {}) if isinstance(first, Mapping) else {}
        return dict(index) if isinstance(index, Mapping) else {}

    def put_vectors(self, space: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Index (id, vector) pairs into the shadow index of ``space`` with ``streaming_bulk``
        (429s retried with backoff). The first call creates the index in loading mode."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(ids) != len(vectors):
            raise ValueError(f"need one row per id: {len(ids)} ids, vectors of shape {vectors.shape}")
        if len(ids) == 0:
            return
        if not self.has_vectors(space):
            self._create_shadow(space, vectors.shape[1])
        shadow = self.shadow_index(space)
        title, texts = self.fields() if self.copy_text else (None, ())
        text_fields = [f for f in (title, *texts) if f]

        def actions() -> Iterator[dict[str, Any]]:
            for chunk in batched(range(len(ids)), self.bulk_chunk_size):
                sources = (
                    self._fetch_sources(self.index, [ids[i] for i in chunk], text_fields) if text_fields else {}
                )
                for i in chunk:
                    doc: dict[str, Any] = {self.vector_field: m.vector_list(vectors[i])}
                    for f in text_fields:
                        value = m.get_path(sources.get(ids[i], {}).get("_source", {}), f)
                        if value is not None:
                            doc[f] = value
                    yield {"_op_type": "index", "_index": shadow, "_id": str(ids[i]), "_source": doc}

        self._bulk(actions(), f"writing vectors to {shadow}", shadow)
        self._call("refreshing a shadow index", self.client.indices.refresh, index=shadow)

    @staticmethod
    def _streaming_bulk() -> Callable[..., Any]:
        from opensearchpy.helpers import streaming_bulk

        return streaming_bulk

    def _bulk(self, actions: Any, action: str, index: str) -> int:
        """Stream bulk actions (429s retried with backoff); BulkWriteError lists what failed."""
        streaming_bulk = self._streaming_bulk()
        failures, done = [], 0
        try:
            for ok, info in streaming_bulk(
                self.client, actions, chunk_size=self.bulk_chunk_size, max_retries=self.max_retries,
                initial_backoff=self.initial_backoff, max_backoff=self.max_backoff,
                raise_on_error=False, raise_on_exception=True, yield_ok=True,
            ):
                done += 1
                if not ok:
                    failures.append(info)
        except BackendError:
            raise
        except Exception as exc:
            raise self._error(exc, action, index) from None
        if failures:
            first = next(iter(failures[0].values()), {})
            raise BulkWriteError(
                f"{len(failures)} of {done} documents failed while {action}; first: "
                f"{first.get('status')} {str(first.get('error'))[:300]}",
                failures,
            )
        return done

    def finish_vectors(self, space: str) -> None:
        """End loading mode of a shadow index: restore replicas and refresh interval, refresh."""
        if space not in self._loading:
            return
        shadow = self.shadow_index(space)
        body = m.after_load_settings(self.replicas_after_load, self.refresh_after_load)
        self._call("restoring index settings", self.client.indices.put_settings, index=shadow, body=body)
        self._call("refreshing a shadow index", self.client.indices.refresh, index=shadow)
        self._loading.discard(space)

    def knn_search(self, space: str, queries: np.ndarray, k: int, *, exact: bool | None = None) -> list[list[Hit]]:
        """Top-k inner-product neighbours per query row; scores are raw dot products."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        shadow = self.shadow_index(space)
        self.finish_vectors(space)
        exact = self.exact if exact is None else exact
        results: list[list[Hit]] = []
        for chunk in batched(range(len(queries)), 100):
            bodies = []
            for i in chunk:
                q = (m.exact_knn_query if exact else lambda f, v: m.knn_query(f, v, k))(self.vector_field, queries[i])
                bodies.append(m.search_body(q, k))
            try:
                responses = self._msearch(shadow, bodies, "k-NN search")
            except _ResponseError as exc:
                raise self._plugin_error(exc, "k-NN search", shadow, KNN_PLUGIN) from None
            except BackendError as exc:
                if "knn" in str(exc).lower():
                    raise self._plugin_error(exc, "k-NN search", shadow, KNN_PLUGIN) from None
                raise
            results += [self._hits(r, dot=True) for r in responses]
        return results

    def drop_vectors(self, space: str) -> None:
        """Delete the shadow index of ``space`` (only that index); no-op when absent."""
        shadow = self.shadow_index(space)
        self._call(
            "deleting a shadow index", self.client.indices.delete, index=shadow, params={"ignore_unavailable": "true"}
        )
        self._loading.discard(space)

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
        """BM25 + k-NN with the neural-search ``hybrid`` query on the shadow index, fused by a
        search pipeline (created once): min-max + weighted mean, or RRF."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        require_version(self.version(), "2.19.0" if method == "rrf" else "2.10.0", f"hybrid search ({method})")
        if not self.copy_text:
            raise BackendError("hybrid_search needs the text fields in the shadow index; create the backend with copy_text=True")
        shadow = self.shadow_index(space)
        self.finish_vectors(space)
        pipeline = m.hybrid_pipeline_name(method, weight)
        if pipeline not in self._pipelines:
            try:
                put_hybrid_pipeline(self.client, pipeline, weight=weight, method=method)
            except Exception as exc:
                raise self._plugin_error(exc, "creating a hybrid search pipeline", shadow, NEURAL_PLUGIN) from None
            self._pipelines.add(pipeline)
        title, fields = self.fields()
        fields = tuple(f for f in (title, *fields) if f)
        out = []
        for text, vec in zip(texts, vectors):
            body = m.search_body(m.hybrid_query(text, fields, self.vector_field, vec, k), k)
            try:
                resp = self.client.search(index=shadow, body=body, params={"search_pipeline": pipeline})
            except Exception as exc:
                raise self._plugin_error(exc, "hybrid search", shadow, NEURAL_PLUGIN) from None
            out.append(self._hits(resp))
        return out


def put_hybrid_pipeline(
    client: Any, name: str, *, weight: float = 0.5, method: FusionMethod = "min_max", rank_constant: int = 60
) -> dict[str, Any]:
    """Create or replace search pipeline ``name`` for the ``hybrid`` query; returns its body."""
    body = m.rrf_pipeline(rank_constant) if method == "rrf" else m.normalization_pipeline(weight)
    try:
        client.search_pipeline.put(id=name, body=body)
    except Exception as exc:
        if method != "rrf" or getattr(exc, "status_code", None) != 400 or "parameter" not in str(exc).lower():
            raise
        # a neural-search that reads rank_constant beside the technique refuses it in parameters
        body = m.rrf_pipeline(rank_constant, legacy_shape=True)
        client.search_pipeline.put(id=name, body=body)
    return body


def set_default_pipeline(client: Any, index: str, name: str) -> None:
    """Make ``name`` the default search pipeline of ``index`` (``index.search.default_pipeline``)."""
    client.indices.put_settings(index=index, body={"index": {"search": {"default_pipeline": name}}})
