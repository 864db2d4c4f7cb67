"""The test node itself: the version asked for, the plugins on it, what the lucene k-NN engine and the
neural-search hybrid query do there (the capabilities the cluster path relies on)."""

from __future__ import annotations


def test_node_runs_the_version_and_plugins_asked_for(opensearch_node, os_client):
    info = os_client.info()
    assert opensearch_node.version.startswith(info["version"]["number"])
    components = {row["component"] for row in os_client.cat.plugins(format="json")}
    assert "org.opensearch.knn.plugin.KNNPlugin" in components
    assert "org.opensearch.index.reindex.ReindexPlugin" in components
    if "neural-search" in opensearch_node.plugins:
        assert "org.opensearch.neuralsearch.plugin.NeuralSearch" in components


def test_lucene_innerproduct_knn_and_hybrid_search(opensearch_node, os_client, index_name):
    os_client.indices.create(index=index_name, body={
        "settings": {"index.knn": True, "number_of_replicas": 0},
        "mappings": {"properties": {"text": {"type": "text"}, "v": {
            "type": "knn_vector", "dimension": 2,
            "method": {"name": "hnsw", "engine": "lucene", "space_type": "innerproduct"}}}}})
    docs = {"a": ("red apple", [1.0, 0.0]), "b": ("green pear", [0.0, 1.0]), "c": ("red pear", [0.7, 0.7])}
    for doc_id, (text, vec) in docs.items():
        os_client.index(index=index_name, id=doc_id, body={"text": text, "v": vec})
    os_client.indices.refresh(index=index_name)
    hits = os_client.search(index=index_name, body={"size": 3, "query": {"knn": {"v": {"vector": [1.0, 0.1],
                                                                                             "k": 3}}}})
    assert [h["_id"] for h in hits["hits"]["hits"]][0] == "a"
    if "neural-search" not in opensearch_node.plugins:
        return
    pipeline = f"{index_name}-p"
    os_client.transport.perform_request("PUT", f"/_search/pipeline/{pipeline}", body={
        "phase_results_processors": [{"normalization-processor": {
            "normalization": {"technique": "min_max"},
            "combination": {"technique": "arithmetic_mean", "parameters": {"weights": [0.5, 0.5]}}}}]})
    body = {"size": 3, "query": {"hybrid": {"queries": [{"match": {"text": "pear"}},
                                                         {"knn": {"v": {"vector": [0.0, 1.0], "k": 3}}}]}}}
    hits = os_client.search(index=index_name, body=body, params={"search_pipeline": pipeline})
    assert [h["_id"] for h in hits["hits"]["hits"]][0] == "b"
