"""rgpl_adapt.cluster without training: the composite backend (local vectors, sampling, cleanup),
options, and the publisher on osmem-server (new alias next to a concrete index, failures that
must leave the alias where it was)."""

from __future__ import annotations

import numpy as np
import pytest
from rgpl_adapt.cluster import (
    ClusterBackend,
    ClusterOptions,
    ClusterPublisher,
    docs_fingerprint,
    es_retriever_template,
    open_backend,
    sample_documents,
)
from rgpl_plugin.base import Backend, Document
from rgpl_plugin.errors import AliasSwapError
from rgpl_plugin.opensearch_publish import alias_state, rollback
from rgpl_plugin.vectors import VectorStore

from tests.plugin.conftest import load_corpus, os_client, osmem, osmem_tasks, osmem_url  # noqa: F401  (fixtures)


@pytest.fixture(autouse=True)
def _osmem_tasks(osmem_tasks):  # noqa: F811 - osmem has no _tasks API (see tests.plugin.conftest)
    yield


def _vectors(n: int, dim: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def test_options_are_validated_and_fingerprint_ignores_the_miner():
    with pytest.raises(ValueError, match="miner"):
        ClusterOptions(index="docs", miner="gpu")
    with pytest.raises(ValueError, match="Elasticsearch"):
        ClusterOptions(index="docs", engine="elasticsearch", register_model=True)
    with pytest.raises(ValueError, match="--text-field"):
        ClusterOptions(index="docs", title_field="title")
    with pytest.raises(ValueError, match="sample"):
        ClusterOptions(index="docs", sample=1)
    with pytest.raises(ValueError, match="publish_write"):
        ClusterOptions(index="docs", publish_write="twice")
    a, b = ClusterOptions(index="docs"), ClusterOptions(index="docs", miner="local")
    assert a.fingerprint() == b.fingerprint()
    # how the version index is filled does not change what is served
    assert a.publish_write == "bulk"
    assert a.fingerprint() == ClusterOptions(index="docs", publish_write="reindex").fingerprint()
    assert a.fingerprint() != ClusterOptions(index="docs", search_pipeline=False).fingerprint()


def test_sample_is_uniform_deterministic_and_ordered(documents):
    s1 = sample_documents(iter(documents), 10, seed=3)
    assert s1 == sample_documents(iter(documents), 10, seed=3) and len(s1) == 10
    assert [d.id for d in s1] == [d.id for d in documents if d in s1]  # read order kept
    assert s1 != sample_documents(iter(documents), 10, seed=4)
    assert sample_documents(iter(documents[:4]), 10, seed=3) == documents[:4]
    picked = np.zeros(len(documents))
    for seed in range(200):
        for d in sample_documents(iter(documents), 6, seed):
            picked[int(d.id[1:])] += 1
    assert picked.min() > 0 and picked.max() < 3 * picked.mean()  # every document gets its chance
    changed = [Document(d.id, d.text + "!", d.title) if d.id == "d3" else d for d in documents]
    assert docs_fingerprint(documents) == docs_fingerprint(list(documents))
    assert docs_fingerprint(documents) != docs_fingerprint(changed)


def test_local_miner_keeps_vectors_here_mirrors_dense_and_cleans_up(os_client, documents, tmp_path):  # noqa: F811
    load_corpus(os_client, "corpus", documents)
    source = open_backend(os_client, ClusterOptions(index="corpus"))
    backend = ClusterBackend(source, store=VectorStore(tmp_path / "vectors"))
    assert isinstance(backend, Backend) and backend.name == "opensearch+local"
    ids, vecs = [d.id for d in documents], _vectors(len(documents))
    backend.put_vectors("student-r1", ids, vecs)
    assert backend.has_vectors("student-r1") and not source.has_vectors(
        "student-r1"
    )  # nothing in the cluster
    hits = backend.knn_search("student-r1", vecs[[5]], k=3)[0]
    assert hits[0].doc_id == ids[int(np.argmax(vecs @ vecs[5]))]
    backend.put_vectors("dense", ids, vecs)
    assert source.has_vectors("dense")  # mirrored: publishing copies it from the shadow index
    fused = backend.hybrid_search("dense", ["vitamin calcium bone"], vecs[[0]], k=5, weight=0.0)[0]
    assert [h.doc_id for h in fused] == [
        h.doc_id for h in backend.bm25_search(["vitamin calcium bone"], 5)[0]
    ]
    removed = backend.cleanup()
    assert removed == ["corpus-rgpl-shadow-dense"]
    assert (
        not source.has_vectors("dense")
        and not backend.has_vectors("student-r1")
        and not backend.has_vectors("dense")
    )
    assert os_client.count(index="corpus")["count"] == len(documents)


def test_sampled_backend_only_sees_and_returns_the_sample(os_client, documents, tmp_path):  # noqa: F811
    load_corpus(os_client, "corpus", documents)
    source = open_backend(os_client, ClusterOptions(index="corpus"))
    backend = ClusterBackend(source, store=VectorStore(tmp_path / "v"), sample=12, seed=1)
    docs = list(backend.iter_documents())
    assert backend.count() == 12 == len(docs) and docs == list(backend.iter_documents())
    keep = {d.id for d in docs}
    hits = backend.bm25_search(["vitamin calcium bone", "neuron brain memory"], k=5)
    assert all(h.doc_id in keep for hs in hits for h in hs) and all(0 < len(hs) <= 5 for hs in hits)


@pytest.mark.parametrize("write", ["bulk", "reindex"])
def test_publisher_serves_a_new_alias_next_to_a_concrete_index_and_rolls_back(os_client, documents, tmp_path,  # noqa: F811
                                                                              write):
    load_corpus(os_client, "plain", documents)
    options = ClusterOptions(index="plain", alias="plain-serving", search_pipeline=False, version="V2",
                             publish_write=write)
    backend = ClusterBackend(open_backend(os_client, options))
    backend.put_vectors("dense", [d.id for d in documents], _vectors(len(documents)))
    publisher = ClusterPublisher(backend, options, tmp_path)
    assert [d.id for d in publisher.documents()] == [d.id for d in backend.iter_documents()]
    info = publisher.publish(tmp_path, {"hybrid_weight": 0.3})
    assert (info["index"], info["previous"], info["version"], info["hybrid_weight"]) == (
        "plain-serving-rgpl-v2",
        "plain",
        "v2",
        0.3,
    )
    assert (info["write"], info["documents"], info["vectors"]) == (write, len(documents), len(documents))
    assert alias_state(os_client, "plain-serving") == ("alias", ["plain-serving-rgpl-v2"])
    assert alias_state(os_client, "plain") == ("index", ["plain"])  # the user's index is untouched
    assert not backend.source.has_vectors("dense")  # the served copy replaced the shadow index
    assert publisher.describe()["text_fields"] == ["text"]
    assert rollback(os_client, "plain-serving") == "plain"


def test_a_failure_mid_publish_leaves_the_alias(os_client, documents, tmp_path, monkeypatch):  # noqa: F811
    load_corpus(os_client, "corpus-v0", documents)
    os_client.indices.update_aliases(body={"actions": [{"add": {"index": "corpus-v0", "alias": "corpus"}}]})
    options = ClusterOptions(index="corpus", search_pipeline=False, version="v9")
    backend = ClusterBackend(open_backend(os_client, options))
    backend.put_vectors("dense", [d.id for d in documents], _vectors(len(documents)))
    real = os_client.indices.update_aliases

    def refuse(**kwargs):
        raise AliasSwapError("simulated: the _aliases call was rejected")

    monkeypatch.setattr(os_client.indices, "update_aliases", refuse)
    with pytest.raises(AliasSwapError, match="simulated"):
        ClusterPublisher(backend, options, tmp_path).publish(tmp_path, {"hybrid_weight": 0.5})
    monkeypatch.setattr(os_client.indices, "update_aliases", real)
    assert alias_state(os_client, "corpus") == ("alias", ["corpus-v0"])
    assert not os_client.indices.exists(index="corpus-rgpl-v9")  # the half-built version is gone
    backend.close()
    assert not os_client.indices.exists(index="corpus-rgpl-shadow-dense")  # and close() drops the shadow


def test_elasticsearch_retriever_template_has_placeholders():
    body = es_retriever_template(["title", "text"], "rgpl_vector", 0.7)
    standard, knn = body["linear"]["retrievers"]
    assert standard["weight"] == pytest.approx(0.3) and knn["weight"] == pytest.approx(0.7)
    assert standard["retriever"]["standard"]["query"]["multi_match"]["query"] == "QUERY_TEXT"
    assert knn["retriever"]["knn"]["query_vector"] == "QUERY_VECTOR"
