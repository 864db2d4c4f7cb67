"""OpenSearch backend: read an existing index, keep vector spaces in shadow k-NN indices.

The user's index is only ever read. :class:`OpenSearchBackend` holds the client and its error translation,
the field rules (which fields make a passage), reading (count, snapshot read, ``mget``) and BM25 search; it
mixes in the snapshot read (:mod:`rgpl_plugin.opensearch_read`: PIT or scroll, cursor and resume) and the
vector spaces (:mod:`rgpl_plugin.opensearch_vectors`: shadow indices ``<index>-rgpl-shadow-<space>``,
``knn_vector`` with ``innerproduct`` on ``lucene`` or ``faiss``, their k-NN and ``hybrid`` search, the
hybrid search pipelines). Serving a trained model goes through a new version index and an alias swap
(:mod:`rgpl_plugin.opensearch_publish`: ``publish_version``, ``swap_alias``, ``rollback``), never by rewriting the user's index in place.

Version needs: PIT reading 2.4+ (older clusters fall back to scroll), the lucene engine with
``innerproduct`` 2.13+, the ``hybrid`` query 2.10+, the ``score-ranker-processor`` (RRF) 2.19+.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from rgpl_plugin import mappings as m
from rgpl_plugin.base import BackendError, Document, Hit, batched
from rgpl_plugin.cluster_checks import refuse_serverless, refuse_serverless_info
from rgpl_plugin.connection import ClusterSettings
from rgpl_plugin.errors import FieldMappingError, PluginMissingError, _ResponseError, translate
from rgpl_plugin.opensearch_read import PIT_SHARD_DOC_SINCE, SnapshotReads
from rgpl_plugin.opensearch_vectors import (
    ALIAS_DEFAULT_PIPELINE_SINCE,
    KNN_PLUGIN,
    LUCENE_INNERPRODUCT_SINCE,
    NEURAL_PLUGIN,
    ShadowVectors,
    choose_engine,
    put_hybrid_pipeline,
    set_default_pipeline,
)

__all__ = [  # the backend, and the names of its mixins' modules that callers import from here
    "ALIAS_DEFAULT_PIPELINE_SINCE",
    "KNN_PLUGIN",
    "LUCENE_INNERPRODUCT_SINCE",
    "NEURAL_PLUGIN",
    "PIT_SHARD_DOC_SINCE",
    "OpenSearchBackend",
    "choose_engine",
    "put_hybrid_pipeline",
    "set_default_pipeline",
]

log = logging.getLogger(__name__)


class OpenSearchBackend(SnapshotReads, ShadowVectors):
    """:class:`rgpl_plugin.base.Backend` over an existing OpenSearch index (or alias).

    Args:
        client_or_settings: an ``opensearchpy.OpenSearch`` client, or :class:`ClusterSettings`
            (the backend then owns the client and closes it).
        index: the index or alias to read; never written.
        text_fields: fields whose text makes a passage (joined by a blank line); detected from
            the mapping when None (rule in :mod:`rgpl_plugin.mappings`).
        title_field: the title field; detected with the text fields when both are None.
        id_field: a ``_source`` field holding the document id (default: ``_id``).
        query: a query (OpenSearch DSL) selecting the documents to adapt to.
        vector_field: name of the vector field in shadow and version indices.
        engine: ``lucene`` or ``faiss`` for the HNSW graphs; default by version (:func:`choose_engine`).
        exact: score k-NN exactly with the ``knn_score`` script (small corpora).
        slice_id, slice_max: read only slice ``slice_id`` of ``slice_max`` (parallel readers).
        copy_text: copy the text fields into shadow indices (needed by :meth:`hybrid_search`).
        replicas_after_load, refresh_after_load: a shadow index's settings once loaded (default no
            replicas: shadow indices are the run's scratch space, never served, and a replica would copy
            every document again).
    """

    name = "opensearch"

    def __init__(
        self,
        client_or_settings: Any,
        index: str,
        *,
        text_fields: Sequence[str] | None = None,
        title_field: str | None = None,
        id_field: str | None = None,
        query: Mapping[str, Any] | None = None,
        vector_field: str = "rgpl_vector",
        engine: str | None = None,
        hnsw_m: int = 16,
        ef_construction: int = 100,
        exact: bool = False,
        slice_id: int | None = None,
        slice_max: int | None = None,
        copy_text: bool = True,
        keep_alive: str = "5m",
        bulk_chunk_size: int = 500,
        max_retries: int = 5,
        initial_backoff: float = 2.0,
        max_backoff: float = 60.0,
        replicas_after_load: int = 0,
        refresh_after_load: str = "1s",
        sample_size: int = 50,
    ) -> None:
        if isinstance(client_or_settings, ClusterSettings):
            refuse_serverless(client_or_settings.aws_service if client_or_settings.aws_region else None,
                              client_or_settings.urls)
            self.settings: ClusterSettings | None = client_or_settings
            self.client = self._make_client(client_or_settings)
            self._owns_client = True
        else:
            self.settings = None
            self.client = client_or_settings
            self._owns_client = False
        if (slice_id is None) != (slice_max is None) or (slice_max is not None and not 0 <= slice_id < slice_max):
            raise ValueError("give both slice_id and slice_max with 0 <= slice_id < slice_max")
        if engine is not None:
            m.knn_vector_field(1, engine=engine)  # validates the engine name early
        self.index = index
        self.id_field = id_field
        self.query = dict(query) if query else None
        self.vector_field = vector_field
        self._engine = engine
        self.hnsw_m, self.ef_construction = hnsw_m, ef_construction
        self.exact = exact
        self.slice = None if slice_max is None else {"id": int(slice_id), "max": int(slice_max)}
        self.copy_text = copy_text
        self.keep_alive = keep_alive
        self.bulk_chunk_size = bulk_chunk_size
        self.max_retries, self.initial_backoff, self.max_backoff = max_retries, initial_backoff, max_backoff
        self.replicas_after_load, self.refresh_after_load = replicas_after_load, refresh_after_load
        self.sample_size = sample_size
        self._given_fields = (title_field, tuple(text_fields)) if text_fields else None
        if title_field and not text_fields:
            raise ValueError("title_field needs text_fields too")
        self._fields: tuple[str | None, tuple[str, ...]] | None = None
        self._properties: dict[str, Any] | None = None
        self._version: str | None = None
        self._loading: set[str] = set()
        self._pipelines: set[str] = set()
        self.skipped: Counter[str] = Counter()
        """Documents skipped by the last :meth:`iter_documents`, by reason (``missing``, ``empty``, ``not_string``)."""
        self.read_with: str | None = None
        """``"pit"`` or ``"scroll"``: how the last :meth:`iter_documents` read."""

    # -- plumbing ------------------------------------------------------------------------------

    engine_label = "OpenSearch"

    @staticmethod
    def _make_client(settings: ClusterSettings) -> Any:
        return settings.opensearch_client()

    def _call(self, action: str, fn: Callable[..., Any], *args: Any, _index: str | None = None, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with client errors turned into actionable BackendErrors
        (naming ``_index``, else the ``index`` argument, else the backend's index)."""
        try:
            return fn(*args, **kwargs)
        except BackendError:
            raise
        except Exception as exc:
            raise self._error(exc, action, _index or kwargs.get("index") or self.index) from None

    def _error(self, exc: BaseException, action: str, index: str | None) -> BackendError:
        s = self.settings
        return translate(
            exc, action=action, index=index, urls=s.urls if s else self._client_urls(),
            secrets=s.secrets if s else (), engine=self.engine_label,
        )

    def _client_urls(self) -> tuple[str, ...]:
        hosts = getattr(getattr(self.client, "transport", None), "hosts", None) or []
        out = []
        for h in hosts:
            if isinstance(h, Mapping):
                scheme = h.get("scheme") or ("https" if h.get("use_ssl") else "http")
                out.append(f"{scheme}://{h.get('host', 'localhost')}:{h.get('port', 9200)}")
        return tuple(out)

    def version(self) -> str:
        """The cluster's version number (``GET /``), cached."""
        if self._version is None:
            info = self._call("reading the cluster version", self.client.info)
            refuse_serverless_info(info)
            self._version = str(info.get("version", {}).get("number", "0"))
            if info.get("version", {}).get("distribution") != "opensearch":
                log.info("cluster does not report distribution 'opensearch': %s", info.get("version"))
        return self._version

    def plugins(self) -> set[str]:
        """Installed plugin components (``GET _cat/plugins``)."""
        rows = self._call("listing plugins", self.client.cat.plugins, params={"format": "json"})
        return {str(r.get("component")) for r in rows or []}

    def _plugin_error(self, exc: BaseException, action: str, index: str, plugin: str) -> BackendError:
        """A PluginMissingError when ``plugin`` is absent, otherwise the translated ``exc``."""
        try:
            missing = plugin not in self.plugins()
        except BackendError:
            missing = False
        if missing:
            return PluginMissingError(
                f"{action} needs the {plugin} plugin, which this cluster does not list in _cat/plugins. "
                f"Install it (bin/opensearch-plugin install {plugin}) or use a distribution that bundles it."
            )
        return self._error(exc, action, index)

    # -- fields --------------------------------------------------------------------------------

    def properties(self) -> dict[str, Any]:
        """The mapping ``properties`` of the index (merged over the indices behind an alias)."""
        if self._properties is None:
            resp = self._call("reading the mapping", self.client.indices.get_mapping, index=self.index)
            merged: dict[str, Any] = {}
            for body in resp.values():
                merged.update(body.get("mappings", {}).get("properties", {}))
            self._properties = merged
        return self._properties

    def fields(self) -> tuple[str | None, tuple[str, ...]]:
        """``(title_field, text_fields)`` used to build passages."""
        if self._fields is not None:
            return self._fields
        available = m.text_fields_of(self.properties())
        if self._given_fields:
            title, texts = self._given_fields
            known = set(available) | {k for k in self.properties()}
            unknown = [f for f in (title, *texts) if f and f not in known and f not in available]
            if unknown:
                raise FieldMappingError(
                    f"field(s) {unknown} are not in the mapping of {self.index!r}; text fields there: {available}"
                )
            self._fields = (title, texts)
            return self._fields
        chars = None
        if not any(n in available for n in m.TEXT_NAMES) and len(available) > 1:
            chars = self._sample_chars(available)
        try:
            self._fields = m.choose_text_fields(available, chars)
        except ValueError as exc:
            raise FieldMappingError(f"{exc} (index {self.index!r})") from None
        log.info("index %s: title field %s, text fields %s", self.index, *self._fields)
        return self._fields

    def _sample_chars(self, available: Sequence[str]) -> dict[str, int]:
        body = {"size": self.sample_size, "query": self._query(), "_source": list(available)}
        resp = self._call("sampling documents", self.client.search, index=self.index, body=body)
        chars: Counter[str] = Counter()
        for hit in resp["hits"]["hits"]:
            for f in available:
                value = m.get_path(hit.get("_source", {}), f)
                if isinstance(value, str):
                    chars[f] += len(value)
        return dict(chars)

    def _source_fields(self) -> list[str]:
        title, texts = self.fields()
        return [f for f in (title, *texts, self.id_field) if f]

    def _query(self) -> dict[str, Any]:
        return dict(self.query) if self.query else {"match_all": {}}

    def _to_document(self, hit: Mapping[str, Any]) -> Document | None:
        title_field, text_fields = self.fields()
        source = hit.get("_source") or {}
        doc_id = hit["_id"] if self.id_field is None else m.get_path(source, self.id_field)
        if doc_id is None:
            self.skipped["missing_id"] += 1
            return None
        parts = []
        for f in text_fields:
            value = m.get_path(source, f)
            if value is None:
                continue
            if not isinstance(value, str):
                self.skipped["not_string"] += 1
                return None
            if value.strip():
                parts.append(value.strip())
        if not parts:
            self.skipped["empty" if any(m.get_path(source, f) is not None for f in text_fields) else "missing"] += 1
            return None
        title = m.get_path(source, title_field) if title_field else ""
        return Document(id=str(doc_id), text="\n\n".join(parts), title=title.strip() if isinstance(title, str) else "")

    # -- reading -------------------------------------------------------------------------------

    def count(self) -> int:
        """Documents in the index that match the selecting query."""
        body = {"query": self.query} if self.query else None
        return int(self._call("counting documents", self.client.count, index=self.index, body=body)["count"])

    def iter_documents(self, batch_size: int = 1000, resume: Mapping[str, Any] | None = None) -> Iterator[Document]:
        """Every selected document once, via Point-in-Time + ``search_after`` on ``_shard_doc``;
        scroll when the cluster has no PIT. Bad documents are counted in :attr:`skipped`.

        After each yielded document :attr:`cursor` is where the read stands (``{"pit_id", "after"}``; None
        with scroll). ``resume`` (such a cursor, e.g. saved by a copy killed mid-way) continues that read in
        its point in time when it is still open; when it has expired the read starts from the beginning.
        :attr:`resumed` says which happened."""
        self.skipped = Counter()
        for hit in self._iter_hits(self.index, self._source_fields(), batch_size, self._query(), resume):
            doc = self._to_document(hit)
            if doc is not None:
                yield doc
        if self.skipped:
            log.info("index %s: skipped documents %s", self.index, dict(self.skipped))

    def _fetch_sources(self, index: str, ids: Sequence[str], source: Any) -> dict[str, dict[str, Any]]:
        """``{id: hit}`` for the ids found (mget on ``_id``, or a ``terms`` search on ``id_field``)."""
        if not ids:
            return {}
        if self.id_field is None:
            resp = self._call(
                "fetching documents", self.client.mget, index=index,
                body={"docs": [{"_id": i, "_source": source} for i in ids]},
            )
            return {d["_id"]: d for d in resp["docs"] if d.get("found")}
        body = {"size": len(ids), "query": {"terms": {self.id_field: list(ids)}}, "_source": source}
        resp = self._call("fetching documents", self.client.search, index=index, body=body)
        return {str(m.get_path(h["_source"], self.id_field)): h for h in resp["hits"]["hits"]}

    def get_documents(self, ids: Sequence[str]) -> list[Document]:
        """The documents with these ids, in order; KeyError names the first unknown id."""
        found: dict[str, dict[str, Any]] = {}
        for chunk in batched(list(ids), 1000):
            found.update(self._fetch_sources(self.index, chunk, self._source_fields()))
        out = []
        for i in ids:
            if i not in found:
                raise KeyError(f"document {i!r} is not in index {self.index!r}")
            doc = self._to_document(found[i])
            out.append(doc if doc is not None else Document(id=i, text=""))
        return out

    # -- search --------------------------------------------------------------------------------

    def _msearch(self, index: str, bodies: Sequence[dict[str, Any]], action: str) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        for body in bodies:
            lines += [{"index": index}, body]
        resp = self._call(action, self.client.msearch, body=lines, index=index)
        out = []
        for r in resp["responses"]:
            if "error" in r:
                raise _ResponseError(r)
            out.append(r)
        return out

    def _hits(self, resp: Mapping[str, Any], dot: bool = False) -> list[Hit]:
        hits = []
        for h in resp["hits"]["hits"]:
            doc_id = h["_id"] if self.id_field is None else m.get_path(h.get("_source", {}), self.id_field)
            score = float(h.get("_score") or 0.0)
            hits.append(Hit(str(doc_id), m.dot_from_score(score) if dot else score))
        return hits

    def _id_source(self) -> Any:
        return [self.id_field] if self.id_field else False

    def bm25_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-k BM25 hits per query: ``multi_match`` over the text fields, sent by ``_msearch``."""
        title, texts = self.fields()
        fields = [f for f in (title, *texts) if f]
        results: list[list[Hit]] = []
        for chunk in batched(list(queries), 100):
            bodies = []
            for text in chunk:
                q: dict[str, Any] = m.multi_match(text, fields)
                if self.query:
                    q = {"bool": {"must": [q], "filter": [self.query]}}
                bodies.append({**m.search_body(q, k), "_source": self._id_source()})
            try:
                responses = self._msearch(self.index, bodies, "BM25 search")
            except _ResponseError as exc:
                raise self._error(exc, "BM25 search", self.index) from None
            results += [self._hits(r) for r in responses]
        return results

    def read_hits(
        self, index: str, body: Mapping[str, Any], *, action: str = "reading an index"
    ) -> list[dict[str, Any]]:
        """The hits of one search of another index (a query log, say): read only, errors translated as the
        backend's own (a missing index, a refused login)."""
        resp = self._call(action, self.client.search, index=index, body=dict(body))
        return list(resp["hits"]["hits"])

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Finish loading shadow indices; close the client when this backend created it."""
        for space in list(self._loading):
            try:
                self.finish_vectors(space)
            except BackendError as exc:
                log.info("could not restore settings of %s: %s", space, exc)
        if self._owns_client:
            self.client.close()

