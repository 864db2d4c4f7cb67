"""End to end on real OpenSearch (2.19, 3.x) and Elasticsearch (8, 9) containers: create an
index, read it, write a shadow vector space, k-NN search, hybrid search, publish a version
behind an alias and roll back. Tiny random vectors; skipped when Docker is absent."""

from __future__ import annotations

import json
import time
from typing import Any

import numpy as np
import pytest
from rgpl_plugin.base import Document

pytestmark = pytest.mark.integration

DOCS = [Document(id=f"d{i}", title=f"topic {i % 3}", text=f"passage {i} about subject {i % 3} and words") for i in range(30)]
OPENSEARCH_IMAGES = ["opensearchproject/opensearch:2.19.1", "opensearchproject/opensearch:3.1.0"]
ELASTIC_IMAGES = ["docker.elastic.co/elasticsearch/elasticsearch:8.18.0",
                  "docker.elastic.co/elasticsearch/elasticsearch:9.0.0"]


def _wait_green(client: Any, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.cluster.health(wait_for_status="yellow", timeout="5s")
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


@pytest.fixture(scope="module", params=OPENSEARCH_IMAGES)
def opensearch_url(request, docker_ready):
    from testcontainers.opensearch import OpenSearchContainer

    with OpenSearchContainer(request.param, security_enabled=False).with_env("OPENSEARCH_JAVA_OPTS", "-Xms512m -Xmx512m") as c:
        yield f"http://{c.get_container_host_ip()}:{c.get_exposed_port(9200)}"


@pytest.fixture(scope="module", params=ELASTIC_IMAGES)
def elastic(request, docker_ready):
    import elasticsearch
    from testcontainers.core.container import DockerContainer

    client_major, server_major = elasticsearch.__versionstr__.split(".")[0], request.param.rsplit(":", 1)[1][0]
    if client_major != server_major:  # 9.x clients send compatible-with=9 headers that 8.x rejects
        pytest.skip(f"elasticsearch-py {elasticsearch.__versionstr__} cannot talk to {request.param}; "
                    f"install elasticsearch=={server_major}.* to run this one")
    container = (DockerContainer(request.param).with_exposed_ports(9200)
                 .with_env("discovery.type", "single-node").with_env("xpack.security.enabled", "false")
                 .with_env("ES_JAVA_OPTS", "-Xms512m -Xmx512m"))
    with container as c:
        yield f"http://{c.get_container_host_ip()}:{c.get_exposed_port(9200)}"


def _load(client: Any, index: str) -> None:
    client.indices.create(index=index, body={"mappings": {"properties": {"title": {"type": "text"},
                                                                        "text": {"type": "text"}}}})
    for d in DOCS:
        client.index(index=index, id=d.id, body={"title": d.title, "text": d.text})
    client.indices.refresh(index=index)
    client.indices.update_aliases(body={"actions": [{"add": {"index": index, "alias": "corpus"}}]})


def _exercise(backend: Any, client: Any) -> None:
    from rgpl_plugin.opensearch_publish import alias_state, publish_version, rollback

    assert backend.count() == len(DOCS)
    assert sorted(d.id for d in backend.iter_documents(batch_size=7)) == sorted(d.id for d in DOCS)
    assert backend.bm25_search(["passage 3"], k=3)[0]
    vecs = np.random.default_rng(0).standard_normal((len(DOCS), 8)).astype(np.float32)
    backend.put_vectors("dense", [d.id for d in DOCS], vecs)
    hits = backend.knn_search("dense", vecs[:2], k=5)
    assert [h[0].doc_id for h in hits] == [DOCS[int(np.argmax(vecs @ vecs[i]))].id for i in range(2)]
    np.testing.assert_allclose(hits[0][0].score, float(np.max(vecs @ vecs[0])), rtol=1e-3)
    exact = backend.knn_search("dense", vecs[:1], k=5, exact=True)
    assert [h.doc_id for h in exact[0]] == [DOCS[i].id for i in np.argsort(-(vecs @ vecs[0]))[:5]]
    assert len(backend.hybrid_search("dense", ["passage 3"], vecs[3:4], k=5, weight=0.5)[0]) > 0
    assert len(backend.hybrid_search("dense", ["passage 3"], vecs[3:4], k=5, method="rrf")[0]) > 0
    result = publish_version(backend, "dense", "v1")
    assert alias_state(client, "corpus") == ("alias", [result.index]) and result.vectors == len(DOCS)
    assert rollback(client, "corpus") == "corpus-v0"
    backend.drop_vectors("dense")
    assert not backend.has_vectors("dense")


def _cleanup(client: Any) -> None:
    """Delete what the test created (by name: wildcard deletes may be forbidden)."""
    for index in ("corpus-v0", "corpus-rgpl-v1", "corpus-rgpl-shadow-dense"):
        if client.indices.exists(index=index):
            client.indices.delete(index=index)


def test_opensearch_end_to_end(opensearch_url):
    from opensearchpy import OpenSearch
    from rgpl_plugin.opensearch import OpenSearchBackend

    client = OpenSearch(hosts=[opensearch_url], timeout=30)
    _wait_green(client)
    _load(client, "corpus-v0")
    _exercise(OpenSearchBackend(client, "corpus"), client)
    _cleanup(client)


def test_elasticsearch_end_to_end(elastic):
    from elasticsearch import Elasticsearch
    from rgpl_plugin.elasticsearch import ElasticsearchBackend

    client = Elasticsearch(elastic, request_timeout=30)
    _wait_green(client)
    _load(client, "corpus-v0")
    _exercise(ElasticsearchBackend(client, "corpus"), client)
    _cleanup(client)


# -- the whole `rgpl-adapt --index` flow with tiny models -------------------------------------------


def _adapt_args(tiny_t5, tiny_cross_encoder, tiny_student, *extra: str) -> list[str]:
    return ["--generator", str(tiny_t5), "--teacher", str(tiny_cross_encoder), "--student", str(tiny_student),
            "--retriever", str(tiny_student), "--queries-per-passage", "2", "--steps", "4", "--batch-size", "4",
            "--remine-every", "2", "--max-seq-len", "32", "--warmup-steps", "1", "--device", "cpu", "--scale", "cpu",
            *extra]


@pytest.mark.parametrize("miner", ["cluster", "local"])
def test_rgpl_adapt_index_on_opensearch(opensearch_url, miner, tmp_path, tiny_t5, tiny_cross_encoder, tiny_student):
    from click.testing import CliRunner
    from opensearchpy import OpenSearch
    from rgpl_adapt.cli import cli
    from rgpl_plugin.opensearch_publish import alias_state

    client = OpenSearch(hosts=[opensearch_url], timeout=30)
    _wait_green(client)
    _load(client, "corpus-v0")
    env = {"OPENSEARCH_URL": opensearch_url, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = tmp_path / "run"
    try:
        result = CliRunner().invoke(cli, ["--index", "corpus", "--out", str(run), "--miner", miner,
                                          "--publish-version", "it1",
                                          *_adapt_args(tiny_t5, tiny_cross_encoder, tiny_student)], env=env)
        assert result.exit_code == 0, result.output + repr(result.exception)
        assert alias_state(client, "corpus") == ("alias", ["corpus-rgpl-it1"])
        assert client.count(index="corpus")["count"] == len(DOCS)
        settings = client.indices.get_settings(index="corpus-rgpl-it1")["corpus-rgpl-it1"]["settings"]["index"]
        assert settings["search"]["default_pipeline"] == "corpus-rgpl-it1-hybrid"
        assert not client.indices.exists(index="corpus-rgpl-shadow-dense")
        hits = CliRunner().invoke(cli, ["search", "--index", "corpus", "--run", str(run), "--json", "passage 3"],
                                  env=env)
        assert hits.exit_code == 0, hits.output
        assert len(json.loads(hits.output)) > 0
        back = CliRunner().invoke(cli, ["rollback", "--index", "corpus"], env=env)
        assert back.exit_code == 0, back.output
        assert alias_state(client, "corpus") == ("alias", ["corpus-v0"])
    finally:
        for index in ("corpus-v0", "corpus-rgpl-it1"):
            if client.indices.exists(index=index):
                client.indices.delete(index=index)
        client.search_pipeline.delete(id="corpus-rgpl-it1-hybrid", params={"ignore": 404})
