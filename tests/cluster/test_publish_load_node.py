"""The one-pass publish on the real node (finding 10): each document written once, with its source and vector.

A source index of two shards (one document with custom routing) behind an alias; the ``dense`` space holds
the tiny random student's encoding. Checked: counts, vectors read back (cosine to the model), routing kept,
settings restored, the source untouched (mapping, settings, documents with ``_seq_no``); a refused document
fails the publish by its id and leaves the alias; writes to the source during the load do not fail the count
check; the reindex path (``write="reindex"``) serves the same documents.
"""

from __future__ import annotations

import numpy as np
import pytest
from rgpl_plugin.errors import BulkWriteError
from rgpl_plugin.mappings import dot_from_score
from rgpl_plugin.opensearch import OpenSearchBackend
from rgpl_plugin.opensearch_publish import alias_state, publish_version
from rgpl_plugin.version_load import encoded_vectors, space_vectors

from tests.conftest import make_documents

N_DOCS = 240


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from sentence_transformers import SentenceTransformer

    from tests.conftest import build_tiny_student

    path = build_tiny_student(tmp_path_factory.mktemp("models") / "student", make_documents())
    return SentenceTransformer(str(path), device="cpu")


def snapshot(client, index: str) -> dict:
    settings = client.indices.get_settings(index=index)[index]["settings"]["index"]
    hits = client.search(index=index, body={"size": 10_000, "sort": ["_doc"], "seq_no_primary_term": True})
    return {"mapping": client.indices.get_mapping(index=index)[index], "settings": settings,
            "docs": {h["_id"]: (h["_source"], h["_seq_no"], h.get("_routing")) for h in hits["hits"]["hits"]}}


@pytest.fixture
def source(os_client, index_name, model):
    """``<index>-v0`` (2 shards, the ``year`` field only in ``_source`` of some documents, ``d0`` routed by
    ``r1``) behind alias ``<index>``, and its ``dense`` space holding the model's encoding."""
    docs = make_documents(N_DOCS, seed=3)
    src = f"{index_name}-v0"
    os_client.indices.create(index=src, body={
        "settings": {"index": {"number_of_shards": 2, "number_of_replicas": 0}},
        "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}})
    lines = []
    for i, d in enumerate(docs):
        meta = {"_index": src, "_id": d.id, **({"routing": "r1"} if i == 0 else {})}
        year = {"year": 2000 + i} if i % 3 == 0 else {}
        lines += [{"index": meta}, {"title": d.title, "text": d.text, **year}]
    assert not os_client.bulk(body=lines, refresh="true")["errors"]
    os_client.indices.update_aliases(body={"actions": [{"add": {"index": src, "alias": index_name}}]})
    backend = OpenSearchBackend(os_client, index_name, replicas_after_load=0)
    vecs = model.encode([d.full_text() for d in docs], batch_size=64)
    backend.put_vectors("dense", [d.id for d in docs], vecs)
    yield backend, src, docs
    backend.drop_vectors("dense")
    os_client.indices.delete(index=f"{index_name}*")


def cosines(served: np.ndarray, expected: np.ndarray) -> np.ndarray:
    return (served * expected).sum(1) / (np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1))


def served_vectors(client, index: str, ids: list[str]) -> np.ndarray:
    resp = client.mget(index=index, body={"docs": [{"_id": i, **({"routing": "r1"} if i == "d0" else {})}
                                                   for i in ids]})
    return np.array([d["_source"]["rgpl_vector"] for d in resp["docs"]], dtype=np.float32)


def test_one_pass_publish_serves_every_document_once_with_the_model_vector(source, model):
    backend, src, docs = source
    client, alias = backend.client, backend.index
    before = snapshot(client, src)
    sent = []
    real_bulk, real_reindex = client.bulk, client.reindex
    client.bulk = lambda **kw: (sent.append(kw["body"]), real_bulk(**kw))[1]
    client.reindex = lambda **kw: pytest.fail("the one-pass publish must not reindex")
    try:
        result = publish_version(backend, "dense", "v1", threads=3)
    finally:
        client.bulk, client.reindex = real_bulk, real_reindex
    assert (result.write, result.documents, result.vectors) == ("bulk", N_DOCS, N_DOCS)
    assert alias_state(client, alias) == ("alias", [result.index])
    ids = [line["index"]["_id"] for body in sent for line in body if set(line) == {"index"}]
    assert sorted(ids) == sorted(d.id for d in docs)  # every document written exactly once
    served = client.search(index=alias, body={"size": N_DOCS, "seq_no_primary_term": True})["hits"]["hits"]
    assert len(served) == N_DOCS
    expected = model.encode([d.full_text() for d in docs], batch_size=64)
    got = served_vectors(client, alias, [d.id for d in docs])
    assert cosines(got, expected).min() > 0.98
    by_id = {h["_id"]: h for h in served}
    assert by_id["d0"]["_routing"] == "r1" and by_id["d3"]["_source"]["year"] == 2003
    assert {k: v for k, v in by_id["d4"]["_source"].items() if k != "rgpl_vector"} == {
        "title": docs[4].title, "text": docs[4].text}
    settings = client.indices.get_settings(index=result.index)[result.index]["settings"]["index"]
    assert settings["number_of_replicas"] == "0" and settings.get("refresh_interval", "1s") != "-1"
    # the vector field is a k-NN field of the served index: it scores d5 by inner product with its own vector
    hits = client.search(index=alias, body={"size": N_DOCS, "query": {"knn": {"rgpl_vector": {
        "vector": expected[5].tolist(), "k": N_DOCS}}}})["hits"]["hits"]
    score = next(h["_score"] for h in hits if h["_id"] == "d5")
    assert dot_from_score(score) == pytest.approx(float(expected[5] @ expected[5]), rel=1e-3)
    assert snapshot(client, src) == before  # the source index is only read


def test_a_refused_document_fails_the_publish_by_its_id_and_leaves_the_alias(source):
    backend, src, _ = source
    client, alias = backend.client, backend.index
    good = space_vectors(backend, "dense")

    def one_short(hits):  # d17's vector loses a dimension: the node's knn_vector mapper refuses it
        out = dict(good(hits))
        if "d17" in out:
            out["d17"] = out["d17"][:-1]
        return out

    with pytest.raises(BulkWriteError, match=r"d17.*dimension") as info:
        publish_version(backend, "dense", "v2", vectors=one_short)
    assert [f["index"]["_id"] for f in info.value.failures] == ["d17"]
    assert alias_state(client, alias) == ("alias", [src])
    assert not client.indices.exists(index=f"{alias}-rgpl-v2")


def test_writes_to_the_source_during_the_load_do_not_fail_the_count_check(source, model):
    backend, src, docs = source
    client = backend.client
    backend.bulk_chunk_size = 60  # pages of 60: the writes land between reads of the same snapshot
    vectors = space_vectors(backend, "dense")
    pages = []

    def writing_meanwhile(hits):  # while the load reads: a new document, a deleted one, an updated one
        if not pages:
            client.index(index=src, id="late", body={"title": "late", "text": "written during the publish"},
                         refresh="true")
            client.delete(index=src, id="d9", refresh="true")
            client.index(index=src, id="d10", body={"title": "changed", "text": "rewritten"}, refresh="true")
        pages.append(len(hits))
        return vectors(hits)

    result = publish_version(backend, "dense", "v3", vectors=writing_meanwhile, threads=2)
    assert pages == [60] * 4  # the read saw the snapshot from before the writes
    assert (result.documents, result.vectors) == (N_DOCS, N_DOCS)
    assert client.count(index=src)["count"] == N_DOCS  # +1 -1 in the source meanwhile
    served = client.get(index=result.index, id="d10")["_source"]
    assert served["title"] == docs[10].title  # as read; the next version picks the change up
    assert not client.exists(index=result.index, id="late") and client.exists(index=result.index, id="d9")


def test_the_reindex_path_serves_the_same_documents(source, model):
    backend, _, docs = source
    client = backend.client
    result = publish_version(backend, "dense", "v4", write="reindex")
    assert (result.write, result.documents, result.vectors) == ("reindex", N_DOCS, N_DOCS)
    expected = model.encode([d.full_text() for d in docs[:20]], batch_size=64)
    assert cosines(served_vectors(client, result.index, [d.id for d in docs[:20]]), expected).min() > 0.98
    # and the model can encode during the load instead of reading the space: the same vectors
    encode = encoded_vectors(backend, lambda texts: model.encode(texts, batch_size=64))
    again = publish_version(backend, "dense", "v5", alias=f"{backend.index}-enc", vectors=encode)
    assert again.vectors == N_DOCS
    assert cosines(served_vectors(client, again.index, [d.id for d in docs[:20]]), expected).min() > 0.98
