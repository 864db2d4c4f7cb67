"""ElasticsearchBackend through a recording fake node (elastic-transport ``node_class``): the ES
request shapes (``_pit``, top-level ``knn``, ``dense_vector``, ``rrf``/``linear`` retrievers)
and the answers turned back into raw inner products. No ES spec ships here, so bodies are
checked against the shapes the Elasticsearch reference documents."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from rgpl_plugin import cluster_checks
from rgpl_plugin.base import Backend
from rgpl_plugin.connection import ClusterSettings
from rgpl_plugin.elasticsearch import ElasticsearchBackend
from rgpl_plugin.errors import (
    BulkWriteError,
    ClusterAuthError,
    IndexMissingError,
    LicenseError,
    UnsupportedClusterError,
    VersionTooOldError,
)

from tests.plugin.conftest import Exchange, FakeCluster
from tests.plugin.spec import parse_body


class FakeElastic(FakeCluster):
    """FakeCluster answering Elasticsearch paths and bodies. ``licence`` is what ``GET _license``
    reports; an Enterprise/trial-only retriever on another licence gets ES's 403
    (``current license is non-compliant``)."""

    licence = "trial"
    rejects_other_client = True  # an 8.x node refuses the 9 client's compatible-with=9 header

    def handle(self, method: str, path: str, params: dict, body: Any) -> tuple[int, Any]:
        for override in self.overrides:
            answer = override(method, path, params, body)
            if answer is not None:
                return answer
        if path == "/_license":
            return 200, {"license": {"status": "active", "type": self.licence}}
        if isinstance(body, dict) and "retriever" in body and self.licence not in ("trial", "enterprise"):
            (kind,) = body["retriever"]
            return 403, {"error": {"type": "security_exception",
                                   "reason": f"current license is non-compliant for [{kind}]"}, "status": 403}
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
            accept = str((headers or {}).get("accept", ""))
            server_major = cluster.version.split(".")[0]
            if "compatible-with=" in accept and f"compatible-with={server_major}" not in accept \
                    and server_major == "8" and cluster.rejects_other_client:
                status, response = 400, {"error": {"type": "media_type_header_exception",
                                                   "reason": "Invalid media-type value on headers [Accept]"},
                                         "status": 400}
                meta = ApiResponseMeta(status=status, http_version="1.1", duration=0.0, node=self.config,
                                       headers=HttpHeaders({"content-type": "application/json",
                                                            "x-elastic-product": "Elasticsearch"}))
                return NodeApiResponse(meta, json.dumps(response).encode())
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
    assert create.body["mappings"]["properties"]["rgpl_vector"] == {  # float HNSW, not int8/bbq (finding 13)
        "type": "dense_vector", "dims": 8, "index": True, "similarity": "max_inner_product",
        "index_options": {"type": "hnsw"}}
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


def test_hybrid_retrievers_and_version_checks(es, documents, monkeypatch):
    backend = _backend(es)
    backend.put_vectors("s", [d.id for d in documents], es.vectors)
    backend.hybrid_search("s", ["heart"], es.vectors[:1], k=3, weight=0.4)
    backend.hybrid_search("s", ["heart"], es.vectors[:1], k=3, method="rrf")
    bodies = [ex.body for ex in es.exchanges if ex.path == "/corpus-rgpl-shadow-s/_search"]
    linear, rrf = bodies[0]["retriever"]["linear"], bodies[1]["retriever"]["rrf"]
    assert [r["weight"] for r in linear["retrievers"]] == [0.6, 0.4]
    assert "standard" in linear["retrievers"][0]["retriever"] and "knn" in linear["retrievers"][1]["retriever"]
    assert rrf["rank_constant"] == 60 and len(rrf["retrievers"]) == 2
    monkeypatch.setattr(cluster_checks, "es_client_major", lambda: 8)  # as with an elasticsearch8 client
    monkeypatch.setattr(FakeElastic, "rejects_other_client", False)
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


def test_basic_licence_fuses_on_the_client(es, documents):
    """Finding 12: rrf/linear retrievers are Enterprise/trial only; on basic the backend reads
    GET _license, sends no retriever, and fuses BM25 + k-NN itself (rgpl_plugin.fusion)."""
    from rgpl_plugin.fusion import fuse

    es.licence = "basic"
    backend = _backend(es)
    backend.put_vectors("s", [d.id for d in documents], es.vectors)
    for method in ("min_max", "rrf"):
        hits = backend.hybrid_search("s", ["heart"], es.vectors[:1], k=3, weight=0.4, method=method)
        assert backend.fused_on_client is True
        bm25, dense = backend.bm25_search(["heart"], 3)[0], backend.knn_search("s", es.vectors[:1], 3)[0]
        assert [h.doc_id for h in hits[0]] == [h.doc_id for h in fuse(bm25, dense, 3, weight=0.4, method=method)]
    assert not any(isinstance(ex.body, dict) and "retriever" in ex.body for ex in es.exchanges)
    assert any(ex.path == "/_license" for ex in es.exchanges)


def test_licence_403_does_not_blame_role_permissions(es, documents):
    es.licence = "basic"
    backend = _backend(es)
    with pytest.raises(LicenseError) as info:
        backend._call("hybrid search", backend.client.search, index="corpus",
                      body={"retriever": {"rrf": {"retrievers": []}}})
    assert "licence" in str(info.value) and "lacks a permission" not in str(info.value)
    assert "Grant the role" not in str(info.value)


def test_client_major_mismatch_says_which_client_to_install(documents, monkeypatch):
    """Finding 14: the 9 client against an 8.x server (rejected with media_type_header_exception)."""
    cluster = FakeElastic(docs=documents, version="8.15.0")
    with pytest.raises(UnsupportedClusterError, match=r"elasticsearch>=8,<9.*elasticsearch8"):
        _backend(cluster).version()
    monkeypatch.setattr(cluster_checks, "es_client_major", lambda: 8)
    with pytest.raises(UnsupportedClusterError, match=r"9.1.0.*elasticsearch>=9,<10"):
        cluster_checks.check_es_client_major("9.1.0", 8)
    cluster_checks.check_es_client_major("8.15.0", 8)  # matching majors pass


def test_one_pass_version_load_reads_with_pit_and_bulk_indexes_each_document_once(es, documents):
    """Finding 10 on Elasticsearch: the version index is filled by one PIT read of the source and one
    ``index`` per document carrying its vector (the ES client's ``operations=``), 429s resent."""
    from rgpl_plugin.version_load import load_one_pass, space_vectors

    backend = _backend(es, bulk_chunk_size=25)
    backend.put_vectors("s", [d.id for d in documents], es.vectors)
    es.exchanges.clear()
    es.indices["corpus-rgpl-v1"] = {}
    es.bulk_429 = 4
    load = load_one_pass(backend, "corpus", "corpus-rgpl-v1", space_vectors(backend, "s"), threads=1)
    assert (load.read, load.written, load.with_vector) == (len(documents),) * 3
    assert any(ex.path == "/corpus/_pit" for ex in es.exchanges)
    assert any(ex.method == "DELETE" and ex.path == "/_pit" for ex in es.exchanges)
    written = [line["index"]["_id"] for ex in es.exchanges if ex.path == "/_bulk" for line in ex.body[::2]]
    assert sorted(written) == sorted([d.id for d in documents] + written[:4])  # 4 rejected, each resent once
    served = es.indices["corpus-rgpl-v1"]["d3"]
    assert served["text"] == documents[3].text
    np.testing.assert_allclose(served["rgpl_vector"], es.vectors[3], rtol=1e-6)


def test_a_read_resumes_in_its_point_in_time_or_starts_over_when_it_is_gone(es, documents):
    reader = _backend(es)
    it = reader.iter_documents(batch_size=9)
    first = [next(it) for _ in range(12)]
    cursor = reader.cursor
    assert cursor == {"pit_id": "pit:corpus", "after": [11]}  # the sort values of the 12th document
    es.exchanges.clear()
    resumed = _backend(es)
    rest = list(resumed.iter_documents(batch_size=9, resume=cursor))
    assert resumed.resumed and [d.id for d in first + rest] == sorted(d.id for d in documents)
    assert not any(ex.path.endswith("/_pit") and ex.method == "POST" for ex in es.exchanges)  # no new PIT
    page = next(ex for ex in es.exchanges if ex.path == "/_search")
    assert page.body["search_after"] == [11] and page.body["pit"]["id"] == "pit:corpus"

    def expired(method, path, params, body):
        if path == "/_search" and body["pit"]["id"] == "pit-old:corpus":
            return 404, {"error": {"type": "search_context_missing_exception", "reason": "No search context found"},
                         "status": 404}
        return None

    es.overrides.append(expired)
    again = _backend(es)
    docs = list(again.iter_documents(batch_size=9, resume={"pit_id": "pit-old:corpus", "after": [11]}))
    assert not again.resumed and [d.id for d in docs] == sorted(d.id for d in documents)  # from the start
