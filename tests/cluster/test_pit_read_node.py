"""The Point-in-Time read path (OpenSearch >= 3.3: PIT + ``search_after`` on ``_shard_doc``) on a real 3.5 node.

The 2.19 test node reads with scroll (``_shard_doc`` in a PIT sort arrived in 3.3), so the PIT path that
every newer cluster takes is proven here, on a 3.5.0 node without plugins (Maven Central serves the 3.5 core
but not a k-NN 3.5 that starts, see README.md here): every document once over several shards and pages, a
query filter, a snapshot unaffected by writes during the read, slices, no PIT left open afterwards, and
the resumable copy (``chunked.copy_documents``) continuing a killed read in its PIT.
"""

from __future__ import annotations

import uuid

import pytest
from rgpl_plugin.opensearch import OpenSearchBackend

from tests.cluster.node import NodeSpec

N = 2_300


@pytest.fixture(scope="module")
def node35(opensearch_node_factory):
    return opensearch_node_factory(NodeSpec(version="3.5.0.0", plugins=()))


@pytest.fixture(scope="module")
def client35(node35):
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[node35.url], timeout=60)
    yield client
    client.close()


@pytest.fixture(scope="module")
def source_index(client35):
    from opensearchpy import helpers

    name = f"pit-{uuid.uuid4().hex[:8]}"
    client35.indices.create(index=name, body={"settings": {"number_of_shards": 3, "number_of_replicas": 0}})
    helpers.bulk(client35, ({"_index": name, "_id": f"d{i}", "title": f"title {i}", "text": f"passage number {i}",
                             "lang": "en" if i % 3 else "de"} for i in range(N)), refresh=True)
    yield name
    client35.indices.delete(index=name, ignore_unavailable=True)


def open_pits(client) -> int:
    return len(client.transport.perform_request("GET", "/_search/point_in_time/_all").get("pits", []))


def test_every_document_once_through_a_pit(client35, source_index):
    backend = OpenSearchBackend(client35, source_index, text_fields=["text"], title_field="title")
    assert backend.version().startswith("3.5") and backend.pit_sort_supported()
    docs = list(backend.iter_documents(batch_size=97))  # many pages over 3 shards
    assert backend.read_with == "pit"
    assert len(docs) == N and len({d.id for d in docs}) == N
    assert {d.id for d in docs} == {f"d{i}" for i in range(N)}
    d7 = next(d for d in docs if d.id == "d7")
    assert (d7.title, d7.text) == ("title 7", "passage number 7")
    assert open_pits(client35) == 0  # closed when the read ended


def test_a_query_selects_and_the_pit_is_a_snapshot(client35, source_index):
    backend = OpenSearchBackend(client35, source_index, text_fields=["text"], title_field="title",
                                query={"term": {"lang.keyword": "de"}})
    reader = backend.iter_documents(batch_size=50)
    first = [next(reader) for _ in range(10)]
    client35.index(index=source_index, id="late", body={"title": "late", "text": "written mid-read", "lang": "de"},
                   refresh=True)
    try:
        rest = list(reader)
    finally:
        client35.delete(index=source_index, id="late", refresh=True)
    ids = [d.id for d in first + rest]
    expected = {f"d{i}" for i in range(N) if i % 3 == 0}
    assert set(ids) == expected and len(ids) == len(expected)  # "late" is after the PIT: not read
    assert backend.count() == len(expected)


def test_slices_partition_the_read(client35, source_index):
    seen = []
    for s in range(2):
        backend = OpenSearchBackend(client35, source_index, text_fields=["text"], slice_id=s, slice_max=2)
        part = [d.id for d in backend.iter_documents(batch_size=200)]
        assert backend.read_with == "pit" and part
        seen.append(set(part))
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == N


def test_a_read_resumes_in_its_point_in_time_and_starts_over_once_it_is_gone(client35, source_index):
    first = OpenSearchBackend(client35, source_index, text_fields=["text"], title_field="title")
    reader = first.iter_documents(batch_size=97)
    head = [next(reader).id for _ in range(500)]
    cursor = dict(first.cursor)  # what a copy records with each finished chunk
    assert cursor["pit_id"] and cursor["after"] is not None
    second = OpenSearchBackend(client35, source_index, text_fields=["text"], title_field="title")
    tail = [d.id for d in second.iter_documents(batch_size=97, resume=cursor)]
    assert second.resumed and second.read_with == "pit"
    assert len(head) + len(tail) == N and set(head) | set(tail) == {f"d{i}" for i in range(N)}
    reader.close()  # the first read's PIT is closed with it (a killed process leaves it to expire)
    third = OpenSearchBackend(client35, source_index, text_fields=["text"], title_field="title")
    again = [d.id for d in third.iter_documents(batch_size=500, resume=cursor)]
    assert not third.resumed and len(again) == N  # the PIT is gone: the whole index, from the start
    assert open_pits(client35) == 0


def test_kill_9_mid_copy_continues_in_the_point_in_time(tmp_path, client35, source_index, node35):
    """The copy of a cluster index into the run's store, killed with SIGKILL after 3 chunks, continues the
    same PIT on the real node after its last finished chunk and ends equal to an uninterrupted copy."""
    from rgpl_adapt.chunked import StoreReader, copy_documents

    from tests.kill9 import kill_copy_after_chunks

    store = tmp_path / "store"
    kill_copy_after_chunks(node35.url, source_index, store, key="k", chunk_size=200, pause_s=0.5,
                           backend_args="text_fields=['text'], title_field='title'")
    backend = OpenSearchBackend(client35, source_index, text_fields=["text"], title_field="title")
    res = copy_documents(backend, store, key="k", chunk_size=200)
    assert res.resumed and backend.resumed and res.skipped_written == 0
    assert 600 <= res.reused < N and res.count == N
    whole = copy_documents(OpenSearchBackend(client35, source_index, text_fields=["text"], title_field="title"),
                           tmp_path / "whole", key="k", chunk_size=200)

    def stored(path):
        reader = StoreReader(path)
        try:
            return sorted((d.id, d.title, d.text) for d in reader.documents(0, reader.count()))
        finally:
            reader.close()

    assert stored(store) == stored(tmp_path / "whole") and whole.count == N
    assert res.sha == whole.sha  # same documents in the same (shard, doc) order: the run fingerprint matches
