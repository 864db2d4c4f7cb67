"""ElasticsearchBackend through a recording fake node (elastic-transport ``node_class``): the ES
request shapes (``_pit``, top-level ``knn``, ``dense_vector``, ``rrf``/``linear`` retrievers)
and the answers turned back into raw inner products. No ES spec ships here, so bodies are
checked against the shapes the Elasticsearch reference documents."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from rgpl_plugin.base import Backend
from rgpl_plugin.connection import ClusterSettings
from rgpl_plugin.elasticsearch import ElasticsearchBackend
from rgpl_plugin.errors import BulkWriteError, ClusterAuthError, IndexMissingError, VersionTooOldError

from tests.plugin.conftest import Exchange, FakeCluster
from tests.plugin.spec import parse_body


class FakeElastic(FakeCluster):
    """FakeCluster answering Elasticsearch paths and bodies."""

    def handle(self, method: str, path: str, params: dict, body: Any) -> tuple[int, Any]:
        for override in self.overrides:
            answer = override(method, path, params, body)
            if answer is not None:
                return answer
        if path == "/":
            return 200, {"version": {"number": self.version, "build_flavor": "default"}, "tagline": "You Know, for Search"}
        if path.endswith("/_pit") and method == "POST":
            index = path.strip("/").split("/")[0]
            if index not in self.indices:
                return 404, {"error": {"type": "index_not_found_exception", "reason": f"no such index [{index}]"},
                             "status": 404}
            return 200, {"id": f"pit:{index}"}
        if path == "/_pit" and method == "DELETE":
            return 200, {"succeeded": True, "num_freed": 1}
        self.overrides, saved = [], self.overrides
        try:
            return super().handle(method, path, params, body)
        finally:
            self.overrides = saved

    def _search(self, index: str, body: dict) -> dict:
        body = dict(body)
        if "retriever" in body:
            (spec,) = body.pop("retriever").values()
            knn = next(r.get("retriever", r)["knn"] for r in spec["retrievers"] if "knn" in r.get("retriever", r))
            body["knn"] = knn
        if "knn" in body:
            knn = body.pop("knn")
            body["query"] = {"knn": {knn["field"]: {"vector": knn["query_vector"], "k": knn["k"]}}}
        q = body.get("query", {})
        if "script_score" in q and "dotProduct" in q["script_score"]["script"]["source"]:
            p = q["script_score"]["script"]["params"]
            body["query"] = {"script_score": {"script": {"params": {"field": p["field"], "query_value": p["query_vector"]}}}}
        return super()._search(index, body)


def es_client(cluster: FakeCluster, **kwargs: Any) -> Any:
    from elastic_transport import ApiResponseMeta, BaseNode, HttpHeaders
    from elastic_transport._node import NodeApiResponse
    from elasticsearch import Elasticsearch

    class RecordingNode(BaseNode):
        def perform_request(self, method, target, body=None, headers=None, request_timeout=None):
            path, _, query = target.partition("?")
            params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
            parsed = parse_body(body)
            status, response = cluster.handle(method, path, params, parsed)
            cluster.exchanges.append(Exchange(method, path, params, parsed, status, response))
            meta = ApiResponseMeta(
                status=status, http_version="1.1", duration=0.0, node=self.config,
                headers=HttpHeaders({"content-type": "application/json", "x-elastic-product": "Elasticsearch"}),
            )
            return NodeApiResponse(meta, b"" if response is None else json.dumps(response).encode())

    return Elasticsearch("http://fake:9200", node_class=RecordingNode, **kwargs)


@pytest.fixture
def es(documents):
    cluster = FakeElastic(docs=documents, version="9.1.0")
    cluster.vectors = np.random.default_rng(0).standard_normal((len(documents), 8)).astype(np.float32)
    return cluster


def _backend(cluster, **kw) -> ElasticsearchBackend:
    return ElasticsearchBackend(es_client(cluster, max_retries=0), "corpus", initial_backoff=0.01, **kw)


def test_reads_with_pit_and_searches_bm25(es, documents):
    backend = _backend(es)
    assert isinstance(backend, Backend) and backend.name == "elasticsearch"
    assert backend.count() == len(documents)
    assert [d.id for d in backend.iter_documents(batch_size=9)] == sorted(d.id for d in documents)
    pages = [ex for ex in es.exchanges if ex.path == "/_search"]
    assert pages and all(p.body["pit"]["id"] == "pit:corpus" and p.body["sort"] == ["_shard_doc"] for p in pages)
    assert "search_after" in pages[1].body
    assert any(ex.method == "DELETE" and ex.path == "/_pit" for ex in es.exchanges)
    assert backend.get_documents(["d2"])[0].title == documents[2].title
    hits = backend.bm25_search(["vitamin calcium"], k=3)
    msearch = next(ex for ex in es.exchanges if ex.path == "/corpus/_msearch")
    assert msearch.body[1]["query"]["multi_match"]["fields"] == ["title", "text"]
    assert len(hits[0]) == 3


def test_dense_vector_shadow_and_knn_scores(es, documents):
    backend = _backend(es)
    vecs = es.vectors
    backend.put_vectors("s", [d.id for d in documents], vecs)
    create = next(ex for ex in es.exchanges if ex.method == "PUT" and ex.path == "/corpus-rgpl-shadow-s")
    assert create.body["mappings"]["properties"]["rgpl_vector"] == {
        "type": "dense_vector", "dims": 8, "index": True, "similarity": "max_inner_product"}
    assert create.body["settings"]["index"]["refresh_interval"] == "-1"
    q = vecs[[1, 7]]
    for exact in (False, True):
        hits = backend.knn_search("s", q, k=4, exact=exact)
        dots = q @ vecs.T
        for row, hs in zip(dots, hits):
            expected = np.argsort(-row)[:4]
            assert [h.doc_id for h in hs] == [documents[i].id for i in expected]
            np.testing.assert_allclose([h.score for h in hs], row[expected], rtol=1e-5, atol=1e-5)
    knn_body = next(ex for ex in es.exchanges if ex.path == "/corpus-rgpl-shadow-s/_msearch").body[1]
    assert knn_body["knn"]["k"] == 4 and knn_body["knn"]["num_candidates"] >= 4 and "query" not in knn_body
    for ex in es.exchanges:
        if ex.method in ("PUT", "DELETE") or ex.path == "/_bulk":
            assert not ex.path.startswith("/corpus/")
    backend.drop_vectors("s")
    assert not backend.has_vectors("s")


def test_hybrid_retrievers_and_version_checks(es, documents):
    backend = _backend(es)
    backend.put_vectors("s", [d.id for d in documents], es.vectors)
    backend.hybrid_search("s", ["heart"], es.vectors[:1], k=3, weight=0.4)
    backend.hybrid_search("s", ["heart"], es.vectors[:1], k=3, method="rrf")
    bodies = [ex.body for ex in es.exchanges if ex.path == "/corpus-rgpl-shadow-s/_search"]
    linear, rrf = bodies[0]["retriever"]["linear"], bodies[1]["retriever"]["rrf"]
    assert [r["weight"] for r in linear["retrievers"]] == [0.6, 0.4]
    assert "standard" in linear["retrievers"][0]["retriever"] and "knn" in linear["retrievers"][1]["retriever"]
    assert rrf["rank_constant"] == 60 and len(rrf["retrievers"]) == 2
    with pytest.raises(VersionTooOldError, match="8.18"):
        _backend(FakeElastic(docs=documents, version="8.17.0")).hybrid_search("s", ["x"], np.ones((1, 8)), 3)
    with pytest.raises(VersionTooOldError, match="8.14"):
        _backend(FakeElastic(docs=documents, version="8.13.4")).hybrid_search(
            "s", ["x"], np.ones((1, 8)), 3, method="rrf")


def test_errors_are_actionable_and_secret_free(es, documents):
    with pytest.raises(IndexMissingError, match="nothere"):
        ElasticsearchBackend(es_client(es, max_retries=0), "nothere").count()
    with pytest.raises(IndexMissingError):
        list(ElasticsearchBackend(es_client(es, max_retries=0), "nothere").iter_documents())
    es.overrides.append(lambda *a: (401, {"error": {"type": "security_exception", "reason": "bad key"}, "status": 401}))
    settings = ClusterSettings(urls=("http://fake:9200",), api_key="SECRET-API-KEY")
    backend = ElasticsearchBackend(settings, "corpus")
    backend.client = es_client(es, max_retries=0, api_key="SECRET-API-KEY")
    with pytest.raises(ClusterAuthError) as info:
        backend.count()
    assert "SECRET-API-KEY" not in str(info.value) and "Elasticsearch" in str(info.value)


def test_bulk_429_retries(es, documents):
    es.bulk_429 = 3
    backend = _backend(es, max_retries=2)
    backend.put_vectors("s", [d.id for d in documents], es.vectors)
    assert len(es.indices["corpus-rgpl-shadow-s"]) == len(documents)
    es.bulk_429 = 10**6
    with pytest.raises(BulkWriteError):
        _backend(es, max_retries=1).put_vectors("t", ["d1"], es.vectors[:1])
