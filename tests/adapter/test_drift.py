"""Drift arithmetic (fingerprints, counts, writes since the last run) and the cluster measurements
(timestamp on osmem-server; seqno on a recording fake whose request bodies follow the spec)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from rgpl_adapt.drift import (
    compare_fingerprints,
    count_drift,
    doc_hash,
    fingerprints,
    since_drift,
    snapshot_digest,
    written_since_seqno,
    written_since_timestamp,
)
from rgpl_plugin.base import Document

from tests.plugin.conftest import osmem  # noqa: F401  (session fixture)


def docs(n: int) -> list[Document]:
    return [Document(f"d{i}", f"text {i}", f"title {i}") for i in range(n)]


def test_fingerprints_count_new_changed_deleted_exactly():
    old = fingerprints(docs(100))
    now = docs(100)[3:] + [Document("n1", "new one"), Document("n2", "new two")]
    now[0] = replace(now[0], text="edited")  # d3 changed
    report = compare_fingerprints(old, fingerprints(now), threshold=0.05)
    assert (report.added, report.changed, report.deleted) == (2, 1, 3)
    assert report.share == pytest.approx(6 / 100) and report.due
    assert set(report.changed_ids) == {"n1", "n2", "d3"}
    assert not compare_fingerprints(old, old, threshold=0.05).due
    assert compare_fingerprints(old, old).share == 0.0


def test_threshold_decides_and_first_run_is_always_due():
    old = fingerprints(docs(100))
    now = fingerprints(docs(104))
    assert compare_fingerprints(old, now, threshold=0.05).due is False
    assert compare_fingerprints(old, now, threshold=0.04).due is True
    first = compare_fingerprints(None, now, threshold=0.9)
    assert first.first_run and first.due and first.share == 1.0 and len(first.changed_ids) == 104
    assert "no adaptation yet" in first.summary()


def test_hash_sees_title_and_text_and_digest_is_order_free():
    d = Document("a", "text", "title")
    assert doc_hash(d) != doc_hash(replace(d, title="other")) != doc_hash(replace(d, text="other"))
    h = fingerprints(docs(5))
    assert snapshot_digest(h) == snapshot_digest(dict(reversed(list(h.items()))))
    assert snapshot_digest(h) != snapshot_digest({**h, "d0": "x"})


def test_count_and_since_drift():
    assert count_drift(100, 110).added == 10 and count_drift(100, 90).deleted == 10
    assert count_drift(100, 104, threshold=0.05).due is False
    assert count_drift(None, 5).first_run
    # 12 documents written since the last run, the index grew by 5: 5 new, 7 edited, none deleted
    r = since_drift("timestamp", 100, 105, 12)
    assert (r.added, r.changed, r.deleted) == (5, 7, 0) and r.share == pytest.approx(0.12)
    # 3 written, the index shrank by 4: 0 new, 3 edited, 4 deleted
    r = since_drift("seqno", 100, 96, 3)
    assert (r.added, r.changed, r.deleted) == (0, 3, 4)


def test_timestamp_drift_on_osmem(osmem):  # noqa: F811
    from opensearchpy import OpenSearch
    from opensearchpy.helpers import bulk

    clone = osmem.clone()
    client = OpenSearch(hosts=[clone.url], timeout=10)
    try:
        client.indices.create(index="docs", body={"mappings": {"properties": {"updated_at": {"type": "date"}}}})
        last_run = 1_700_000_000.0
        actions = [{"_index": "docs", "_id": f"d{i}", "text": "x",
                    "updated_at": int((last_run + (i - 7) * 60) * 1000)} for i in range(10)]
        bulk(client, actions, refresh=True)
        assert written_since_timestamp(client, "docs", "updated_at", last_run) == 2  # i = 8, 9
    finally:
        client.close()
        clone.close()


def test_seqno_drift_counts_per_shard_with_spec_valid_bodies(fake_cluster_seqno):
    client, cluster, spec = fake_cluster_seqno
    assert written_since_seqno(client, "docs", {"docs-v1/0": 10, "docs-v1/1": 4}) == 4 + 15  # seq_no 11..14 and 5..19
    # an index the maxima do not know (a version published since) counts whole
    assert written_since_seqno(client, "docs", {"docs-v1/0": 10}) == 4 + 20
    for method, path, body in cluster:
        if spec is not None and body is not None:
            spec.validate_request(method, path, body)


@pytest.fixture
def fake_cluster_seqno():
    """A fake OpenSearch with two shards: shard 0 holds seq_no 0..14, shard 1 holds 0..19."""
    from opensearchpy import Connection, OpenSearch

    from tests.plugin.spec import OpenSearchSpec, parse_body

    shards = {0: 15, 1: 20}
    sent = []

    class Fake(Connection):
        def perform_request(self, method, url, params=None, body=None, timeout=None, ignore=(), headers=None):
            import json

            path = url.split("?")[0]
            parsed = parse_body(body)
            sent.append((method, path, parsed))
            if path.endswith("/_search_shards"):
                resp = {"nodes": {}, "indices": {"docs-v1": {}}, "shards": [
                    [{"index": "docs-v1", "shard": s, "primary": True, "state": "STARTED", "node": "n"}] for s in shards]}
            elif path.endswith("/_count"):
                pref = (params or {})["preference"]
                shard = int((pref.decode() if isinstance(pref, bytes) else pref).split(":")[1])
                rng = (parsed or {}).get("query", {}).get("range", {}).get("_seq_no")
                n = shards[shard] if rng is None else max(0, shards[shard] - 1 - rng["gt"])
                resp = {"count": n, "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0}}
            else:
                return 400, {}, json.dumps({"error": "unexpected"})
            return 200, {"content-type": "application/json"}, json.dumps(resp)

    try:
        spec = OpenSearchSpec()
    except FileNotFoundError:
        spec = None
    client = OpenSearch(hosts=[{"host": "fake", "port": 9200}], connection_class=Fake)
    yield client, sent, spec
