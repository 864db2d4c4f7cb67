"""OpenSearch backend: read an existing index, keep vector spaces in shadow k-NN indices.

The user's index is only ever read. A vector space ``space`` is the shadow index
``<index>-rgpl-shadow-<space>`` (``knn_vector``, ``innerproduct``, HNSW on ``lucene`` or
``faiss``), which also carries a copy of the text fields so the ``hybrid`` query can run on it.
Serving a trained model goes through a new version index and an alias swap
(:mod:`rgpl_plugin.opensearch_publish`: ``publish_version``, ``swap_alias``, ``rollback``), never by rewriting the user's index in place.

Version needs: PIT reading 2.4+ (older clusters fall back to scroll), the lucene engine with
``innerproduct`` 2.13+, the ``hybrid`` query 2.10+, the ``score-ranker-processor`` (RRF) 2.19+.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from rgpl_plugin import mappings as m
from rgpl_plugin.base import BackendError, Document, FusionMethod, Hit, batched
from rgpl_plugin.cluster_checks import refuse_serverless, refuse_serverless_info
from rgpl_plugin.connection import ClusterSettings
from rgpl_plugin.errors import (
    BulkWriteError,
    FieldMappingError,
    PluginMissingError,
    parse_version,
    require_version,
    translate,
)
from rgpl_plugin.opensearch_read import PIT_SHARD_DOC_SINCE, SnapshotReads  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

KNN_PLUGIN = "opensearch-knn"
NEURAL_PLUGIN = "opensearch-neural-search"
LUCENE_INNERPRODUCT_SINCE = "2.13.0"
#: From this version a search through an alias applies the index's ``index.search.default_pipeline``.
ALIAS_DEFAULT_PIPELINE_SINCE = "2.14.0"


def choose_engine(version: str) -> str:
    """``lucene`` where it supports ``innerproduct`` (k-NN 2.13+), else ``faiss``."""
    return "lucene" if parse_version(version) >= parse_version(LUCENE_INNERPRODUCT_SINCE) else "faiss"



class OpenSearchBackend(SnapshotReads):
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
        self.cursor: dict[str, Any] | None = None  # where a PIT read stands after the last yielded document
        self.resumed = False  # whether the last read continued an earlier one's point in time
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

    @property
    def engine(self) -> str:
        """The HNSW engine: as given, else ``lucene`` from k-NN 2.13 (its first with lucene ``innerproduct``;
        also the one engine a plugin without the faiss/nmslib JNI libraries, e.g. the Maven Central zip, has),
        ``faiss`` below."""
        if self._engine is None:
            self._engine = choose_engine(self.version())
        return self._engine

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

    # -- vector spaces -------------------------------------------------------------------------

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

    def read_hits(
        self, index: str, body: Mapping[str, Any], *, action: str = "reading an index"
    ) -> list[dict[str, Any]]:
        """The hits of one search of another index (a query log, say): read only, errors translated as the
        backend's own (a missing index, a refused login)."""
        resp = self._call(action, self.client.search, index=index, body=dict(body))
        return list(resp["hits"]["hits"])

    def close(self) -> None:
        """Finish loading shadow indices; close the client when this backend created it."""
        for space in list(self._loading):
            try:
                self.finish_vectors(space)
            except BackendError as exc:
                log.info("could not restore settings of %s: %s", space, exc)
        if self._owns_client:
            self.client.close()


class _ResponseError(Exception):
    """One failed response inside an ``_msearch`` answer (carries ``info`` like client errors)."""

    def __init__(self, response: Mapping[str, Any]) -> None:
        self.info = dict(response)
        self.status_code = int(response.get("status", 500))
        err = response.get("error", {})
        super().__init__(f"{err.get('type', '')}: {err.get('reason', '')}" if isinstance(err, dict) else str(err))


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
