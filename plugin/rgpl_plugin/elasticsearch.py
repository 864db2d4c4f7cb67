"""Elasticsearch backend (elasticsearch-py 8 or 9): the OpenSearch backend's design on ES APIs.

Reading, BM25 (``_msearch`` of ``multi_match``), ``mget`` and the field rules are shared with
:class:`~rgpl_plugin.opensearch.OpenSearchBackend`; this class swaps in what differs:

* vector spaces are shadow indices ``<index>-rgpl-shadow-<space>`` with a ``dense_vector``
  field (``similarity: max_inner_product``, ``index: true``, HNSW), searched with the top-level
  ``knn`` section (``k``, ``num_candidates``); ``exact=True`` scores every document with a
  ``script_score`` over ``dotProduct`` (made non-negative the way ``max_inner_product`` is);
* Point-in-Time is ``POST <index>/_pit`` / ``DELETE _pit`` and scroll uses the ES client calls;
* hybrid search is one ``retriever``: ``rrf`` (8.14+) or ``linear`` with min-max normalisation
  (8.18+/9.0+), weights ``[1 - weight, weight]``;
* :func:`rgpl_plugin.opensearch_publish.publish_version` / ``swap_alias`` / ``rollback`` work
  with this backend too (``_aliases``, PIT reads and ``_bulk`` exist in both engines; so do ``_reindex``
  and partial updates for ``write="reindex"``).

Use the client major that matches the cluster: elasticsearch-py 9 sends
``compatible-with=9`` headers that an 8.x cluster rejects; :meth:`ElasticsearchBackend.version`
detects the mix and says which client to install (``elasticsearch>=8,<9`` there).
The ``rrf``/``linear`` retrievers need an Enterprise or trial licence: on another licence
(``GET _license``) hybrid search fuses BM25 and k-NN on the client (:func:`rgpl_plugin.fusion.fuse`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rgpl_plugin import mappings as m
from rgpl_plugin import cluster_checks
from rgpl_plugin.base import BackendError, FusionMethod, Hit, batched
from rgpl_plugin.connection import ClusterSettings
from rgpl_plugin.errors import FieldMappingError, require_version
from rgpl_plugin.opensearch import OpenSearchBackend, _ResponseError

log = logging.getLogger(__name__)

EXACT_SCRIPT = (
    "double d = dotProduct(params.query_vector, params.field); return d >= 0 ? d + 1 : 1 / (1 - d);"
)


class ElasticsearchBackend(OpenSearchBackend):
    """:class:`rgpl_plugin.base.Backend` over an existing Elasticsearch index (or alias).

    Takes the arguments of :class:`~rgpl_plugin.opensearch.OpenSearchBackend` (``engine``,
    ``hnsw_m`` and ``ef_construction`` are ignored: Elasticsearch chooses its HNSW settings) plus
    ``num_candidates``, the per-shard candidate list of approximate k-NN (default
    ``max(100, 2k)``).
    """

    name = "elasticsearch"
    engine_label = "Elasticsearch"

    def __init__(self, client_or_settings: Any, index: str, *, num_candidates: int | None = None, **kwargs: Any):
        super().__init__(client_or_settings, index, **kwargs)
        self.num_candidates = num_candidates
        self.fused_on_client: bool | None = None
        """Whether the last hybrid search fused on the client (the licence lacks the retrievers)."""
        self._licence: tuple[bool, str] | None = None

    @staticmethod
    def _make_client(settings: ClusterSettings) -> Any:
        return settings.elasticsearch_client()

    def _call(self, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        resp = super()._call(action, fn, *args, **kwargs)
        return getattr(resp, "body", resp)  # ObjectApiResponse -> its JSON

    def _client_urls(self) -> tuple[str, ...]:
        pool = getattr(getattr(self.client, "transport", None), "node_pool", None)
        try:
            return tuple(str(node.base_url) for node in pool.all())
        except Exception:  # only used to word error messages
            return ()

    def version(self) -> str:
        if self._version is None:
            try:
                info = self._call("reading the cluster version", self.client.info)
            except BackendError as exc:
                raise cluster_checks.explain_client_mismatch(exc) or exc from None
            version = str(info.get("version", {}).get("number", "0"))
            cluster_checks.check_es_client_major(version, cluster_checks.es_client_major())
            self._version = version
        return self._version

    def retriever_licence(self) -> tuple[bool, str]:
        """``(allowed, licence type)``: whether ``GET _license`` allows the rrf/linear retrievers."""
        if self._licence is None:
            lic = self._call("reading the licence", self.client.license.get)
            self._licence = cluster_checks.licence_allows_retrievers(lic)
        return self._licence

    def _plugin_error(self, exc: BaseException, action: str, index: str, plugin: str) -> BackendError:
        return self._error(exc, action, index)  # vector search is built into Elasticsearch

    # -- reading -------------------------------------------------------------------------------

    def pit_sort_supported(self) -> bool:
        return True  # Elasticsearch: PIT with _shard_doc since 7.12

    def _fresh_hits(self, index: str, source: Any, batch_size: int, query: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        self.read_with = "pit"
        pit = self._call("opening a point in time", self.client.open_point_in_time, index=index, keep_alive=self.keep_alive)
        yield from self._pit_hits(index, source, batch_size, query, pit["id"])

    def _pit_search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("reading documents with a point in time", self.client.search, body=body, _index=index)

    def _close_pit(self, index: str, pit_id: str) -> None:
        try:
            self.client.close_point_in_time(id=pit_id)
        except Exception as exc:  # it expires by itself
            log.info("could not close PIT on %s: %s", index, type(exc).__name__)

    # -- vector spaces -------------------------------------------------------------------------

    def _create_shadow(self, space: str, dimension: int) -> None:
        shadow = self.shadow_index(space)
        text_props = {}
        if self.copy_text:
            title, texts = self.fields()
            props = self.properties()
            text_props = {f: props[f] for f in (title, *texts) if f and f in props}
        body = m.es_shadow_index_body(
            dimension, vector_field=self.vector_field, text_properties=text_props,
            source_settings=self.source_settings(),
        )
        self._call("creating a dense_vector shadow index", self.client.indices.create, index=shadow, body=body)
        self._loading.add(space)

    @staticmethod
    def _streaming_bulk() -> Any:
        from elasticsearch.helpers import streaming_bulk

        return streaming_bulk

    def knn_search(self, space: str, queries: np.ndarray, k: int, *, exact: bool | None = None) -> list[list[Hit]]:
        """Top-k by inner product (top-level ``knn``, or exact ``script_score``); raw dot products."""
        queries = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        shadow = self.shadow_index(space)
        self.finish_vectors(space)
        exact = self.exact if exact is None else exact
        results: list[list[Hit]] = []
        for chunk in batched(range(len(queries)), 100):
            bodies = []
            for i in chunk:
                if exact:
                    script = {"source": EXACT_SCRIPT,
                              "params": {"query_vector": m.vector_list(queries[i]), "field": self.vector_field}}
                    body = m.search_body({"script_score": {"query": {"match_all": {}}, "script": script}}, k)
                else:
                    body = {"size": int(k), "_source": False,
                            "knn": m.es_knn_section(self.vector_field, queries[i], k, self.num_candidates)}
                bodies.append(body if self.id_field is None else {**body, "_source": [self.id_field]})
            try:
                responses = self._msearch(shadow, bodies, "k-NN search")
            except _ResponseError as exc:
                raise self._error(exc, "k-NN search", shadow) from None
            results += [self._hits(r, dot=True) for r in responses]
        return results

    def drop_vectors(self, space: str) -> None:
        """Delete the shadow index of ``space`` (only that index); no-op when absent."""
        shadow = self.shadow_index(space)
        self._call("deleting a shadow index", self.client.indices.delete, index=shadow, ignore_unavailable=True)
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
        """BM25 + k-NN in one request with the ``rrf`` or ``linear`` (min-max) retriever; where the
        licence lacks them (basic), BM25 and k-NN top-k fused on the client (logged, and
        ``fused_on_client`` set)."""
        vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
        if len(texts) != len(vectors):
            raise ValueError(f"{len(texts)} texts but {len(vectors)} vectors")
        needed = "8.14.0" if method == "rrf" else "8.18.0"
        require_version(self.version(), needed, f"hybrid search ({method} retriever)", engine="Elasticsearch")
        if not self.copy_text:
            raise FieldMappingError("hybrid_search needs the text fields in the shadow index; use copy_text=True")
        allowed, licence = self.retriever_licence()
        self.fused_on_client = not allowed
        if not allowed:
            return self._fuse_on_client(space, texts, vectors, k, weight=weight, method=method, licence=licence)
        shadow = self.shadow_index(space)
        self.finish_vectors(space)
        title, fields = self.fields()
        fields = tuple(f for f in (title, *fields) if f)
        out = []
        for text, vec in zip(texts, vectors):
            retriever = m.es_hybrid_retriever(text, fields, self.vector_field, vec, k, method=method, weight=weight)
            body = {"size": int(k), "_source": self._id_source(), "retriever": retriever}
            resp = self._call("hybrid search", self.client.search, index=shadow, body=body)
            out.append(self._hits(resp))
        return out

    def _fuse_on_client(
        self, space: str, texts: Sequence[str], vectors: np.ndarray, k: int, *,
        weight: float, method: FusionMethod, licence: str,
    ) -> list[list[Hit]]:
        from rgpl_plugin.fusion import fuse

        log.warning(
            "Elasticsearch licence %r lacks the %s retriever (Enterprise/trial only): fusing BM25 and k-NN "
            "on the client instead", licence, method,
        )
        bm25 = self.bm25_search(list(texts), k)
        dense = self.knn_search(space, vectors, k)
        return [fuse(b, d, k, weight=weight, method=method) for b, d in zip(bm25, dense)]
