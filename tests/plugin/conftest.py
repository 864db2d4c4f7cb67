"""Fixtures for the cluster backends: the OpenSearch API spec, a recording fake transport, and an
osmem-server (in-memory OpenSearch imitation) on a free loopback port."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import numpy as np
import pytest
from rgpl_plugin.base import Document

from tests.plugin.spec import OpenSearchSpec, parse_body

SHARDS = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}


@pytest.fixture(scope="session")
def spec() -> OpenSearchSpec:
    try:
        return OpenSearchSpec()
    except FileNotFoundError as exc:
        pytest.skip(f"the OpenSearch API spec (../shared/opensearch-api-spec) is not beside the repository: {exc}")


# -- recording fake cluster ------------------------------------------------------------------------


@dataclass
class Exchange:
    """One request the client sent and the answer the fake gave."""

    method: str
    path: str
    params: dict[str, Any]
    body: Any
    status: int
    response: Any


@dataclass
class FakeCluster:
    """Answers the requests the OpenSearch backend sends, with spec-shaped responses, and records
    them. ``docs`` is the user's index ``corpus``; vectors written to any index are kept so k-NN
    answers are real inner products (scored as OpenSearch scores ``innerproduct``)."""

    docs: list[Document]
    version: str = "3.3.0"  # PIT with _shard_doc (3.3+); 2.x clusters read with scroll
    plugins: tuple[str, ...] = ("opensearch-knn", "opensearch-neural-search")
    index: str = "corpus"
    exchanges: list[Exchange] = field(default_factory=list)
    indices: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    overrides: list[Callable[[str, str, dict, Any], tuple[int, Any] | None]] = field(default_factory=list)
    bulk_429: int = 0

    def __post_init__(self) -> None:
        self.indices[self.index] = {d.id: {"title": d.title, "text": d.text} for d in self.docs}
        self.mappings: dict[str, dict] = {self.index: {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}}

    # helpers
    def _scroll_page(self, index: str, start: int, size: int) -> dict:
        ids = sorted(self.indices[index])[start:start + size]
        page = [self._hit(index, i, None, None) for i in ids]
        return {**self._result(page), "_scroll_id": f"{index}:{start + size}"}

    def _hit(self, index: str, doc_id: str, score: float | None, source: Any, sort: list | None = None) -> dict:
        hit: dict[str, Any] = {"_index": index, "_id": doc_id, "_score": score}
        if source is not False:
            src = self.indices[index][doc_id]
            hit["_source"] = {k: v for k, v in src.items() if source in (None, True) or k in source}
        if sort is not None:
            hit["sort"] = sort
        return hit

    def _result(self, hits: list[dict]) -> dict:
        return {
            "took": 1, "timed_out": False, "_shards": SHARDS,
            "hits": {"total": {"value": len(hits), "relation": "eq"}, "max_score": None, "hits": hits},
        }

    def _search(self, index: str, body: dict) -> dict:
        q = body.get("query", {})
        size = body.get("size", 10)
        store = self.indices[index]
        if "hybrid" in q:
            q = q["hybrid"]["queries"][1]
        if "knn" in q:
            (fieldname, spec), = q["knn"].items()
            vec, k = np.array(spec["vector"]), spec["k"]
        elif "script_score" in q:
            params = q["script_score"]["script"]["params"]
            fieldname, vec, k = params["field"], np.array(params["query_value"]), size
        else:
            words = set(re.findall(r"[a-z]+", json.dumps(q).lower())) - {"multi_match", "query", "fields", "type", "title", "text", "best_fields", "bool", "must", "filter"}
            scored = sorted(
                ((len(words & set(f"{s.get('title', '')} {s.get('text', '')}".lower().split())), i) for i, s in store.items()),
                key=lambda t: (-t[0], t[1]),
            )
            return self._result([self._hit(index, i, float(s), body.get("_source")) for s, i in scored[:size] if s > 0])
        dots = sorted(((float(np.dot(vec, s[fieldname])), i) for i, s in store.items()), key=lambda t: (-t[0], t[1]))
        score = lambda d: d + 1 if d >= 0 else 1 / (1 - d)
        return self._result([self._hit(index, i, score(d), body.get("_source")) for d, i in dots[: min(k, size)]])

    def handle(self, method: str, path: str, params: dict, body: Any) -> tuple[int, Any]:
        for override in self.overrides:
            answer = override(method, path, params, body)
            if answer is not None:
                return answer
        parts = [unquote(p) for p in path.strip("/").split("/") if p]
        head = parts[0] if parts else ""
        if method == "GET" and not parts:
            return 200, {"name": "n", "cluster_name": "c", "cluster_uuid": "u", "tagline": "The OpenSearch Project",
                         "version": {"distribution": "opensearch", "number": self.version, "build_type": "tar",
                                     "build_hash": "h", "build_date": "2025-01-01T00:00:00Z", "build_snapshot": False,
                                     "lucene_version": "9.12.0", "minimum_wire_compatibility_version": "7.10.0",
                                     "minimum_index_compatibility_version": "7.0.0"}}
        if parts == ["_cat", "plugins"]:
            return 200, [{"name": "node-1", "component": c, "version": self.version} for c in self.plugins]
        if parts == ["_search", "point_in_time"] and method == "DELETE":
            return 200, {"pits": [{"pit_id": p, "successful": True} for p in body["pit_id"]]}
        if parts[:2] == ["_search", "pipeline"]:
            return 200, {"acknowledged": True}
        if parts == ["_search", "scroll"]:
            if method == "DELETE":
                return 200, {"succeeded": True, "num_freed": 1}
            index, start = body["scroll_id"].split(":")
            return 200, self._scroll_page(index, int(start), self._scroll_size)
        if parts == ["_search"]:  # PIT page
            index = body["pit"]["id"].split(":", 1)[1]
            ids = sorted(self.indices[index])
            start = body.get("search_after", [-1])[0] + 1
            page = [self._hit(index, i, None, body.get("_source"), [n]) for n, i in enumerate(ids) if n >= start][: body["size"]]
            return 200, {**self._result(page), "pit_id": body["pit"]["id"]}
        if parts == ["_bulk"]:
            items = []
            for action, doc in zip(body[::2], body[1::2]):
                (op, meta), = action.items()
                if self.bulk_429 > 0:
                    self.bulk_429 -= 1
                    items.append({op: {"_index": meta["_index"], "_id": meta["_id"], "status": 429,
                                       "error": {"type": "es_rejected_execution_exception", "reason": "queue full"}}})
                    continue
                self.indices.setdefault(meta["_index"], {})[meta["_id"]] = doc if op == "index" else doc["doc"]
                items.append({op: {"_index": meta["_index"], "_id": meta["_id"], "_version": 1, "result": "created",
                                   "status": 201, "_shards": SHARDS, "_seq_no": 0, "_primary_term": 1}})
            return 200, {"took": 1, "errors": any(i[next(iter(i))]["status"] >= 300 for i in items), "items": items}
        index = head
        if len(parts) == 1:
            if method == "HEAD":
                return (200 if index in self.indices else 404), None
            if method == "PUT":
                self.indices[index] = {}
                self.mappings[index] = body["mappings"]
                return 200, {"acknowledged": True, "shards_acknowledged": True, "index": index}
            if method == "DELETE":
                self.indices.pop(index, None)
                return 200, {"acknowledged": True}
        if index not in self.indices:
            return 404, {"error": {"type": "index_not_found_exception", "reason": f"no such index [{index}]",
                                   "root_cause": [{"type": "index_not_found_exception", "reason": "no such index"}]},
                         "status": 404}
        action = parts[1] if len(parts) > 1 else ""
        if action == "_mapping":
            return 200, {index: {"mappings": self.mappings[index]}}
        if action == "_count":
            return 200, {"count": len(self.indices[index]), "_shards": SHARDS}
        if action == "_search" and len(parts) == 3:
            return 200, {"pit_id": f"pit:{index}", "_shards": SHARDS, "creation_time": 1}
        if action == "_search" and "scroll" in params:
            self._scroll_size = body["size"]
            return 200, self._scroll_page(index, 0, body["size"])
        if action == "_search":
            return 200, self._search(index, body)
        if action == "_msearch":
            responses = [{**self._search(index, b), "status": 200} for b in body[1::2]]
            return 200, {"took": 1, "responses": responses}
        if action == "_mget":
            docs = []
            for d in body["docs"]:
                if d["_id"] in self.indices[index]:
                    hit = self._hit(index, d["_id"], None, d.get("_source"))
                    hit.pop("_score")
                    docs.append({**hit, "found": True, "_version": 1, "_seq_no": 0, "_primary_term": 1})
                else:
                    docs.append({"_index": index, "_id": d["_id"], "found": False})
            return 200, {"docs": docs}
        if action in ("_refresh",):
            return 200, {"_shards": SHARDS}
        if action == "_settings" and method == "GET":
            return 200, {index: {"settings": {"index": {"number_of_shards": "1", "number_of_replicas": "1",
                                                        "uuid": "u", "provided_name": index,
                                                        **getattr(self, "index_settings", {})}}}}
        if action == "_settings":
            return 200, {"acknowledged": True}
        return 400, {"error": {"type": "illegal_argument_exception", "reason": f"fake: no handler for {method} {path}"},
                     "status": 400}


def _ip_score(dot: float) -> float:
    """How OpenSearch scores an ``innerproduct`` match."""
    return dot + 1 if dot >= 0 else 1 / (1 - dot)


def fake_client(cluster: FakeCluster, **kwargs: Any) -> Any:
    """An ``opensearchpy.OpenSearch`` whose connection answers from ``cluster`` and records."""
    from opensearchpy import Connection, OpenSearch

    class RecordingConnection(Connection):
        def perform_request(self, method, url, params=None, body=None, timeout=None, ignore=(), headers=None):
            path = url.split("?")[0]
            parsed = parse_body(body)
            status, response = cluster.handle(method, path, dict(params or {}), parsed)
            cluster.exchanges.append(Exchange(method, path, dict(params or {}), parsed, status, response))
            raw = "" if response is None else json.dumps(response)
            if not (200 <= status < 300) and status not in ignore:
                self._raise_error(status, raw)
            return status, {"content-type": "application/json"}, raw

    return OpenSearch(hosts=[{"host": "fake", "port": 9200}], connection_class=RecordingConnection, **kwargs)


@pytest.fixture
def fake_cluster(documents) -> FakeCluster:
    rng = np.random.default_rng(0)
    cluster = FakeCluster(docs=documents)
    cluster.vectors = rng.standard_normal((len(documents), 8)).astype(np.float32)  # type: ignore[attr-defined]
    return cluster


# -- osmem-server ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def osmem():
    """An osmem-server on a free loopback port for the whole session (skips if it cannot start)."""
    try:
        from osmem_server import OsmemError, OsmemServer
    except ImportError:
        pytest.skip("osmem-server is not installed: pip install osmem-server==0.1.6")
    try:
        server = OsmemServer.start(japanese=False, addr="127.0.0.1:0", startup_timeout=20)
    except (OsmemError, OSError) as exc:
        pytest.skip(f"osmem-server could not start here: {exc}")
    yield server
    server.close()


@pytest.fixture
def osmem_url(osmem):
    """A fresh clone of the (empty) osmem base for one test."""
    clone = osmem.clone()
    yield clone.url
    clone.close()


@pytest.fixture
def os_client(osmem_url):
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[osmem_url], timeout=10)
    yield client
    client.close()


def load_corpus(client: Any, index: str, documents: list[Document], *, extra: list[dict] | None = None) -> None:
    """Create ``index`` (title + text) holding ``documents`` and the raw ``extra`` sources."""
    from opensearchpy.helpers import bulk

    client.indices.create(index=index, body={
        "settings": {"index": {"number_of_replicas": 0}},
        "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}, "topic": {"type": "keyword"}}},
    })
    actions = [{"_index": index, "_id": d.id, "title": d.title, "text": d.text, "topic": d.title.split()[0]}
               for d in documents]
    actions += [{"_index": index, **e} for e in extra or []]
    bulk(client, actions, refresh=True)


@pytest.fixture
def osmem_tasks(monkeypatch):
    """osmem-server runs ``_reindex`` synchronously even when asked for a task, and has no ``_tasks`` API:
    publishing on it takes the reindex as done (the real node's tests poll the real ``_tasks``)."""
    monkeypatch.setattr("rgpl_plugin.version_load.wait_for_task", lambda client, task_id, timeout_s, what: {})

