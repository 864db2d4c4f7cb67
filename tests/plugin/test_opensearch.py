"""OpenSearchBackend: contract tests (every request and response checked against the
maintainers' OpenAPI spec through a recording fake transport) and behaviour tests against
osmem-server, an in-memory OpenSearch imitation (no k-NN, no search pipelines there)."""

from __future__ import annotations

import numpy as np
import pytest
from rgpl_plugin import mappings as m
from rgpl_plugin.base import Backend, Document
from rgpl_plugin.errors import (
    BulkWriteError,
    ClusterAuthError,
    ClusterUnreachableError,
    FieldMappingError,
    IndexMissingError,
    PluginMissingError,
    VersionTooOldError,
)
from rgpl_plugin.opensearch import OpenSearchBackend, put_hybrid_pipeline, set_default_pipeline

from tests.plugin.conftest import FakeCluster, fake_client, load_corpus
from tests.plugin.spec import SpecError

# -- the spec validator itself ---------------------------------------------------------------------


def test_spec_accepts_a_valid_knn_search(spec):
    spec.validate_request("POST", "/idx/_search", {"size": 3, "query": m.knn_query("v", np.ones(4), 3)})


@pytest.mark.parametrize(
    "body",
    [
        {"query": {"knn": {"v": {"k": 3}}}},  # knn without a vector
        {"query": {"knn": {"v": {"vector": [1.0], "k": "three"}}}},  # k of the wrong type
        {"query": {"knnn": {"v": {"vector": [1.0]}}}},  # no such query
        {"query": {"hybrid": {"queries": {"match_all": {}}}}},  # queries must be a list
        {"size": "ten", "query": {"match_all": {}}},
    ],
)
def test_spec_rejects_wrong_search_bodies(spec, body):
    with pytest.raises(SpecError):
        spec.validate_request("POST", "/idx/_search", body)


def test_spec_rejects_wrong_pipeline_and_msearch_and_unknown_paths(spec):
    bad = m.normalization_pipeline(0.3)
    bad["phase_results_processors"][0]["normalization-processor"]["combination"]["parameters"]["weights"] = "0.7,0.3"
    with pytest.raises(SpecError):
        spec.validate_request("PUT", "/_search/pipeline/p", bad)
    with pytest.raises(SpecError):
        spec.validate_request("POST", "/idx/_msearch", [{"index": "idx"}])  # a header without a body
    with pytest.raises(SpecError):
        spec.validate_request("POST", "/idx/_msearch", [{"index": "idx"}, {"query": {"knn": {"v": {"k": 1}}}}])
    with pytest.raises(SpecError):
        spec.operation("POST", "/_no_such_api/x/y/z")
    with pytest.raises(SpecError):
        spec.validate_response("POST", "/idx/_count", 200, {"count": "many"})


# -- contract tests through the recording fake transport -------------------------------------------


def _backend(cluster: FakeCluster, **kw) -> OpenSearchBackend:
    return OpenSearchBackend(fake_client(cluster, max_retries=0), "corpus", initial_backoff=0.01, **kw)


def test_every_request_and_response_follows_the_spec(spec, fake_cluster, documents):
    backend = _backend(fake_cluster)
    assert isinstance(backend, Backend)
    ids = [d.id for d in documents]
    vecs = fake_cluster.vectors
    assert backend.count() == len(documents)
    assert [d.id for d in backend.iter_documents(batch_size=7)] == sorted(ids)
    backend.get_documents(["d3", "d1"])
    backend.bm25_search(["vitamin calcium", "tumor growth"], k=5)
    backend.put_vectors("s1", ids, vecs)
    backend.knn_search("s1", vecs[:3], k=4)
    backend.knn_search("s1", vecs[:2], k=4, exact=True)
    backend.hybrid_search("s1", ["vitamin", "brain"], vecs[:2], k=5, weight=0.3)
    backend.hybrid_search("s1", ["vitamin"], vecs[:1], k=5, method="rrf")
    set_default_pipeline(backend.client, backend.shadow_index("s1"), "rgpl-hybrid-rrf")
    backend.drop_vectors("s1")
    seen = set()
    for ex in fake_cluster.exchanges:
        spec.validate_request(ex.method, ex.path, ex.body)
        spec.validate_response(ex.method, ex.path, ex.status, ex.response)
        seen.add(spec.operation_id(ex.method, ex.path).split(".")[0])
    assert {"count", "create_pit", "search", "delete_pit", "mget", "msearch", "bulk", "indices",
            "search_pipeline", "info"} <= seen


def test_shadow_index_is_a_knn_index_and_the_user_index_is_never_written(fake_cluster, documents):
    backend = _backend(fake_cluster)
    backend.put_vectors("r1", [d.id for d in documents], fake_cluster.vectors)
    backend.knn_search("r1", fake_cluster.vectors[:1], k=1)
    create = next(ex for ex in fake_cluster.exchanges if ex.method == "PUT" and ex.path == "/corpus-rgpl-shadow-r1")
    index_settings = create.body["settings"]["index"]
    assert index_settings["knn"] is True and index_settings["number_of_replicas"] == 0
    assert index_settings["refresh_interval"] == "-1"
    field = create.body["mappings"]["properties"]["rgpl_vector"]
    assert field["type"] == "knn_vector" and field["dimension"] == 8
    assert field["method"]["space_type"] == "innerproduct" and field["method"]["engine"] == "lucene"
    restored = [ex.body for ex in fake_cluster.exchanges if ex.path == "/corpus-rgpl-shadow-r1/_settings"]
    # loading mode ended once, before the search; shadow indices keep no replicas
    assert restored == [m.after_load_settings(0, "1s")]
    for ex in fake_cluster.exchanges:
        if ex.method in ("PUT", "POST", "DELETE") and ex.path.startswith("/corpus/"):
            assert ex.path.split("/")[2] in ("_count", "_search", "_msearch", "_mget"), ex.path
        if ex.path == "/_bulk":
            assert {line["index"]["_index"] for line in ex.body[::2]} == {"corpus-rgpl-shadow-r1"}
    written = fake_cluster.indices["corpus-rgpl-shadow-r1"]["d5"]
    assert written["title"] == documents[5].title  # text copied for the hybrid query


def test_knn_hits_carry_raw_inner_products(fake_cluster, documents):
    backend = _backend(fake_cluster)
    vecs = fake_cluster.vectors
    backend.put_vectors("s", [d.id for d in documents], vecs)
    q = vecs[[4, 9]] * 0.5
    for exact in (False, True):
        hits = backend.knn_search("s", q, k=5, exact=exact)
        dots = q @ vecs.T
        for row, hs in zip(dots, hits):
            expected = np.argsort(-row)[:5]
            assert [h.doc_id for h in hs] == [documents[i].id for i in expected]
            np.testing.assert_allclose([h.score for h in hs], row[expected], rtol=1e-5, atol=1e-5)


def test_hybrid_pipeline_bodies_and_version_checks(fake_cluster, documents):
    backend = _backend(fake_cluster)
    backend.put_vectors("s", [d.id for d in documents], fake_cluster.vectors)
    backend.hybrid_search("s", ["heart"], fake_cluster.vectors[:1], k=3, weight=0.25)
    put = next(ex for ex in fake_cluster.exchanges if ex.path.startswith("/_search/pipeline/"))
    proc = put.body["phase_results_processors"][0]["normalization-processor"]
    assert proc["combination"]["parameters"]["weights"] == [0.75, 0.25]
    search = next(ex for ex in fake_cluster.exchanges if ex.path == "/corpus-rgpl-shadow-s/_search")
    assert search.params["search_pipeline"] == put.path.rsplit("/", 1)[1]
    assert [next(iter(q)) for q in search.body["query"]["hybrid"]["queries"]] == ["multi_match", "knn"]
    rrf = put_hybrid_pipeline(backend.client, "p", method="rrf", rank_constant=40)
    # neural-search 2.19 reads rank_constant from combination.parameters (the spec puts it beside
    # the technique, where a real 2.19.1 node ignores it: tests/cluster/test_findings_node.py)
    assert rrf["phase_results_processors"][0]["score-ranker-processor"]["combination"] == {
        "technique": "rrf", "parameters": {"rank_constant": 40}}
    old = _backend(FakeCluster(docs=documents, version="2.18.0"))
    with pytest.raises(VersionTooOldError, match="2.19"):
        old.hybrid_search("s", ["x"], np.ones((1, 8)), k=3, method="rrf")
    older = _backend(FakeCluster(docs=documents, version="2.9.0"))
    with pytest.raises(VersionTooOldError, match="2.10"):
        older.hybrid_search("s", ["x"], np.ones((1, 8)), k=3)


def test_bulk_429_is_retried_then_reported(fake_cluster, documents):
    backend = _backend(fake_cluster, max_retries=3)
    fake_cluster.bulk_429 = 5  # the first 5 items are rejected once
    backend.put_vectors("s", [d.id for d in documents], fake_cluster.vectors)
    bulks = [ex for ex in fake_cluster.exchanges if ex.path == "/_bulk"]
    assert len(bulks) == 2 and len(bulks[1].body) == 2 * 5  # only the rejected items were resent
    assert len(fake_cluster.indices["corpus-rgpl-shadow-s"]) == len(documents)
    fake_cluster.bulk_429 = 10**6  # the cluster never recovers
    with pytest.raises(BulkWriteError, match="429"):
        _backend(fake_cluster, max_retries=1).put_vectors("t", ["d1"], fake_cluster.vectors[:1])


def test_pit_unavailable_falls_back_to_scroll(fake_cluster, documents):
    def no_pit(method, path, params, body):
        if path.endswith("/_search/point_in_time") and method == "POST":
            return 400, {"error": {"type": "illegal_argument_exception",
                                   "reason": f"no handler found for uri [{path}] and method [POST]"}, "status": 400}
        if path == "/corpus/_search" and "scroll" in params:
            hits = [{"_index": "corpus", "_id": d.id, "_score": None, "_source": {"title": d.title, "text": d.text}}
                    for d in documents]
            return 200, {"_scroll_id": "s1", "took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1,
                         "failed": 0}, "hits": {"hits": hits}}
        if path == "/_search/scroll":
            return 200, {"_scroll_id": "s1", "took": 1, "timed_out": False, "_shards": {"total": 1, "successful": 1,
                         "failed": 0}, "hits": {"hits": []}}
        if path == "/_search/scroll" or (method == "DELETE" and "scroll" in path):
            return 200, {"succeeded": True, "num_freed": 1}
        return None

    fake_cluster.overrides.append(no_pit)
    backend = _backend(fake_cluster)
    assert [d.id for d in backend.iter_documents()] == [d.id for d in documents]
    assert backend.read_with == "scroll"


def test_missing_knn_plugin_is_named(documents):
    cluster = FakeCluster(docs=documents, plugins=())
    cluster.overrides.append(
        lambda method, path, params, body: (400, {"error": {"type": "illegal_argument_exception",
                                                            "reason": "unknown setting [index.knn]"}, "status": 400})
        if method == "PUT" and "shadow" in path else None
    )
    with pytest.raises(PluginMissingError, match="opensearch-knn"):
        _backend(cluster).put_vectors("s", ["d1"], np.ones((1, 4)))


def test_auth_failures_never_show_the_password(documents):
    from rgpl_plugin.connection import ClusterSettings

    cluster = FakeCluster(docs=documents)
    cluster.overrides.append(lambda *a: (401, {"error": {"type": "security_exception",
                                                          "reason": "bad password hunter2"}, "status": 401}))
    settings = ClusterSettings(urls=("https://admin:hunter2@search.example:9200",))
    backend = OpenSearchBackend(settings, "corpus")
    backend.client = fake_client(cluster, max_retries=0)
    with pytest.raises(ClusterAuthError) as info:
        backend.count()
    assert "hunter2" not in str(info.value) and "401" in str(info.value)
    cluster.overrides[:] = [lambda *a: (403, {"error": {"type": "security_exception",
                                                       "reason": "no permissions for [indices:data/read]"}, "status": 403})]
    with pytest.raises(ClusterAuthError, match="403"):
        backend.count()


def test_field_names_are_checked_and_detected(fake_cluster):
    with pytest.raises(FieldMappingError, match="abstract"):
        _backend(fake_cluster, text_fields=["abstract"]).fields()
    assert _backend(fake_cluster).fields() == ("title", ("text",))


# -- osmem-server ----------------------------------------------------------------------------------

BAD = [
    {"_id": "empty", "title": "t", "text": "   "},
    {"_id": "number", "title": "t", "text": 42},
    {"_id": "missing", "title": "only a title"},
]


def test_osmem_reads_with_pit_and_scroll_and_skips_bad_documents(os_client, documents):
    load_corpus(os_client, "corpus", documents, extra=BAD)
    backend = OpenSearchBackend(os_client, "corpus")
    assert backend.count() == len(documents) + len(BAD)
    got = list(backend.iter_documents(batch_size=7))
    assert backend.read_with == "pit"
    assert sorted(d.id for d in got) == sorted(d.id for d in documents)
    assert dict(backend.skipped) == {"empty": 1, "not_string": 1, "missing": 1}
    by_id = {d.id: d for d in documents}
    assert all(d == by_id[d.id] for d in got)
    assert [d.id for d in backend.iter_documents(batch_size=7)] == [d.id for d in got]  # stable order

    def no_pit(**kwargs):
        from opensearchpy.exceptions import RequestError

        raise RequestError(400, "no handler found for uri [/corpus/_search/point_in_time]", {})

    backend.client.create_pit = no_pit
    scrolled = list(backend.iter_documents(batch_size=9))
    assert backend.read_with == "scroll" and sorted(d.id for d in scrolled) == sorted(d.id for d in got)


def test_osmem_slices_query_and_get_documents(os_client, documents):
    load_corpus(os_client, "corpus", documents)
    halves = [OpenSearchBackend(os_client, "corpus", slice_id=i, slice_max=2) for i in range(2)]
    parts = [[d.id for d in b.iter_documents(batch_size=10)] for b in halves]
    assert all(parts) and not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == sorted(d.id for d in documents)
    heart = OpenSearchBackend(os_client, "corpus", query={"term": {"topic": "heart"}})
    assert heart.count() == 10 and all(d.title.startswith("heart") for d in heart.iter_documents())
    backend = OpenSearchBackend(os_client, "corpus")
    assert [d.id for d in backend.get_documents(["d7", "d2", "d7"])] == ["d7", "d2", "d7"]
    with pytest.raises(KeyError, match="nope"):
        backend.get_documents(["d1", "nope"])


def test_osmem_bm25_finds_the_topic(os_client, documents):
    load_corpus(os_client, "corpus", documents)
    backend = OpenSearchBackend(os_client, "corpus")
    hits = backend.bm25_search(["vitamin calcium bone", "neuron synapse cortex"], k=5)
    assert [len(h) for h in hits] == [5, 5]
    assert all(by.doc_id for by in hits[0])
    titles = {d.id: d.title for d in documents}
    assert titles[hits[0][0].doc_id].startswith("vitamin") and titles[hits[1][0].doc_id].startswith("brain")
    assert hits[0][0].score >= hits[0][-1].score


def test_osmem_vector_spaces_live_in_shadow_indices(os_client, documents):
    load_corpus(os_client, "corpus", documents)
    before = os_client.indices.get_mapping(index="corpus")
    backend = OpenSearchBackend(os_client, "corpus")
    vecs = np.random.default_rng(1).standard_normal((len(documents), 6)).astype(np.float32)
    assert not backend.has_vectors("r1")
    backend.put_vectors("r1", [d.id for d in documents], vecs)
    assert backend.has_vectors("r1") and os_client.count(index="corpus-rgpl-shadow-r1")["count"] == len(documents)
    stored = os_client.get(index="corpus-rgpl-shadow-r1", id="d3")["_source"]
    np.testing.assert_allclose(stored["rgpl_vector"], vecs[3], rtol=1e-6)
    assert os_client.indices.get_mapping(index="corpus") == before  # the user's index is untouched
    with pytest.raises(PluginMissingError):  # osmem has no k-NN: the error names the plugin
        backend.knn_search("r1", vecs[:1], k=3)
    settings = os_client.indices.get_settings(index="corpus-rgpl-shadow-r1")["corpus-rgpl-shadow-r1"]["settings"]
    assert settings["index"]["refresh_interval"] == "1s"  # loading mode ended
    backend.drop_vectors("r1")
    backend.drop_vectors("r1")  # no-op the second time
    assert not backend.has_vectors("r1") and os_client.count(index="corpus")["count"] == len(documents)


def test_osmem_missing_index_and_dropped_connection(os_client, osmem, documents):
    with pytest.raises(IndexMissingError, match="nothere"):
        OpenSearchBackend(os_client, "nothere").count()
    with pytest.raises(IndexMissingError):
        list(OpenSearchBackend(os_client, "nothere").iter_documents())
    clone = osmem.clone()
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[clone.url], timeout=5, max_retries=0)
    load_corpus(client, "corpus", documents)
    backend = OpenSearchBackend(client, "corpus", bulk_chunk_size=10, copy_text=False)
    real_bulk, calls = client.bulk, []

    def bulk_then_drop(*args, **kwargs):  # the server goes away in the middle of the bulk stream
        calls.append(1)
        if len(calls) == 3:
            clone.close()
        return real_bulk(*args, **kwargs)

    client.bulk = bulk_then_drop
    with pytest.raises(ClusterUnreachableError, match="cannot reach"):
        backend.put_vectors("s", [d.id for d in documents], np.ones((len(documents), 4), dtype=np.float32))
    assert len(calls) == 3
    client.close()


def test_document_without_title_field_and_detection_by_content(os_client):
    from opensearchpy.helpers import bulk

    os_client.indices.create(index="notes", body={"mappings": {"properties": {
        "summary": {"type": "text"}, "note": {"type": "text"}, "n": {"type": "integer"}}}})
    bulk(os_client, [{"_index": "notes", "_id": str(i), "summary": "short", "note": "a much longer note " * 5, "n": i}
                     for i in range(5)], refresh=True)
    backend = OpenSearchBackend(os_client, "notes")
    assert backend.fields() == (None, ("note",))
    assert next(backend.iter_documents()) == Document(id="0", text=("a much longer note " * 5).strip())
    with pytest.raises(ValueError, match="text_fields"):
        OpenSearchBackend(os_client, "notes", title_field="summary")


@pytest.mark.parametrize("version,expected", [("2.19.1", "scroll"), ("3.2.0", "scroll"), ("3.3.0", "pit")])
def test_shard_doc_pit_sort_only_from_3_3_scroll_below(documents, version, expected):
    """``sort: ["_shard_doc"]`` with a PIT is rejected before OpenSearch 3.3 (seen on the real 2.19 node:
    search_phase_execution_exception); below, every document is read once with a ``_doc``-sorted scroll."""
    cluster = FakeCluster(docs=documents, version=version)
    backend = _backend(cluster)
    got = list(backend.iter_documents(batch_size=7))
    assert backend.read_with == expected
    assert sorted(d.id for d in got) == sorted(d.id for d in documents)
    sorts = [ex.body.get("sort") for ex in cluster.exchanges if isinstance(ex.body, dict) and "sort" in ex.body]
    assert sorts and all(s == (["_shard_doc"] if expected == "pit" else ["_doc"]) for s in sorts)


@pytest.mark.parametrize("version,engine", [("2.11.1", "faiss"), ("2.12.0", "faiss"), ("2.13.0", "lucene"),
                                            ("3.3.0", "lucene")])
def test_engine_by_version_lucene_innerproduct_from_2_13(documents, version, engine):
    cluster = FakeCluster(docs=documents, version=version)
    backend = _backend(cluster)
    assert backend.engine == engine
    backend.put_vectors("dense", [d.id for d in documents[:3]], np.ones((3, 4), dtype=np.float32))
    mapping = cluster.mappings["corpus-rgpl-shadow-dense"]["properties"]["rgpl_vector"]
    assert mapping["method"]["engine"] == engine and mapping["method"]["space_type"] == "innerproduct"
    assert _backend(FakeCluster(docs=documents, version=version), engine="lucene").engine == "lucene"  # as given


def test_rrf_rank_constant_goes_under_parameters_and_falls_back(spec, documents):
    """Finding 7: neural-search 2.19 reads rank_constant from ``combination.parameters``; the
    default (60) is not sent; a version that refuses ``parameters`` gets the flat form."""
    body = m.rrf_pipeline(40)
    spec.validate_request("PUT", "/_search/pipeline/p", body)  # SPEC_FIXES: parameters allowed, closed
    assert body["phase_results_processors"][0]["score-ranker-processor"]["combination"] == {
        "technique": "rrf", "parameters": {"rank_constant": 40}}
    assert m.rrf_pipeline()["phase_results_processors"][0]["score-ranker-processor"]["combination"] == {
        "technique": "rrf"}
    with pytest.raises(SpecError):
        spec.validate_request("PUT", "/_search/pipeline/p", {"phase_results_processors": [
            {"score-ranker-processor": {"combination": {"technique": "rrf", "rank_konstant": 40}}}]})
    cluster = FakeCluster(docs=documents)
    refused = "provided parameter for combination technique is not supported. supported parameters are [weights]"
    cluster.overrides.append(lambda method, path, params, body: (
        (400, {"error": {"type": "illegal_argument_exception", "reason": refused}, "status": 400})
        if path.startswith("/_search/pipeline/") and "parameters" in str(body) else None))
    sent = put_hybrid_pipeline(fake_client(cluster), "p", method="rrf", rank_constant=40)
    assert sent["phase_results_processors"][0]["score-ranker-processor"]["combination"] == {
        "technique": "rrf", "rank_constant": 40}
    assert [ex.status for ex in cluster.exchanges] == [400, 200]


def test_opensearch_serverless_is_refused_with_a_clear_message(documents):
    """Finding 15: Serverless (SigV4 service aoss, *.aoss.amazonaws.com, or a root answer with
    distribution aoss) has no scroll, no aliases and its own _ids: refused before any request."""
    from rgpl_plugin.connection import ClusterSettings
    from rgpl_plugin.errors import UnsupportedClusterError

    for settings in (
        ClusterSettings(urls=("https://abc.eu-west-1.aoss.amazonaws.com",), aws_region="eu-west-1", aws_service="aoss"),
        ClusterSettings(urls=("https://abc.eu-west-1.aoss.amazonaws.com",)),
    ):
        with pytest.raises(UnsupportedClusterError, match="Serverless is not supported.*no scroll or aliases"):
            OpenSearchBackend(settings, "corpus")
    cluster = FakeCluster(docs=documents)
    cluster.overrides.append(lambda method, path, *a: (200, {"version": {"distribution": "aoss", "number": "2.x"}})
                             if path == "/" else None)
    with pytest.raises(UnsupportedClusterError, match="Serverless"):
        OpenSearchBackend(fake_client(cluster), "corpus").version()


def test_a_pit_read_resumes_after_its_cursor_or_starts_over_when_the_pit_is_gone(fake_cluster, documents):
    reader = _backend(fake_cluster)
    it = reader.iter_documents(batch_size=7)
    first = [next(it) for _ in range(10)]
    assert reader.cursor == {"pit_id": "pit:corpus", "after": [9]}
    fake_cluster.exchanges.clear()
    resumed = _backend(fake_cluster)
    rest = list(resumed.iter_documents(batch_size=7, resume=reader.cursor))
    assert resumed.resumed and [d.id for d in first + rest] == sorted(d.id for d in documents)
    assert not any(ex.path.endswith("/_search/point_in_time") and ex.method == "POST" for ex in fake_cluster.exchanges)

    def expired(method, path, params, body):
        if path == "/_search" and body["pit"]["id"] == "pit-old:corpus":
            return 404, {"error": {"type": "search_context_missing_exception", "reason": "No search context found"},
                         "status": 404}
        return None

    fake_cluster.overrides.append(expired)
    again = _backend(fake_cluster)
    docs = list(again.iter_documents(batch_size=7, resume={"pit_id": "pit-old:corpus", "after": [9]}))
    assert not again.resumed and again.read_with == "pit" and [d.id for d in docs] == sorted(d.id for d in documents)
    scrolled = _backend(FakeCluster(docs=documents, version="2.19.1"))  # scroll: no cursor to resume from
    got = [d.id for d in scrolled.iter_documents(resume={"pit_id": "x", "after": [3]})]
    assert got == sorted(d.id for d in documents) and scrolled.read_with == "scroll"
    assert scrolled.cursor is None and not scrolled.resumed
