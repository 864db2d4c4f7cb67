"""State stores and the lease lock: files (atomic, O_EXCL + rename takeover) and the cluster index
(op_type=create + if_seq_no/if_primary_term takeover) on osmem-server, request bodies checked
against the OpenSearch API specification."""

from __future__ import annotations

import json
import threading

import pytest
from rgpl_adapt.state import (
    FileStateStore,
    IndexStateStore,
    LockHeldError,
    RunRecord,
    ServingRecord,
    hold_lock,
)

from tests.plugin.conftest import osmem  # noqa: F401  (session fixture: an osmem-server)
from tests.plugin.spec import OpenSearchSpec, parse_body


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def exercise_records(store) -> None:
    store.put_run(RunRecord("docs", 1, 10.0, status="promoted", promoted=True, snapshot={"documents": 5}))
    store.put_run(RunRecord("docs", 2, 20.0, status="rejected", metrics={"new_mrr": 0.1}))
    store.put_run(RunRecord("other", 1, 30.0))
    runs = store.runs("docs")
    assert [r.version for r in runs] == [2, 1]
    assert runs[1].snapshot == {"documents": 5} and runs[0].metrics == {"new_mrr": 0.1}
    assert [r.version for r in store.runs("docs", limit=1)] == [2]
    store.put_run(RunRecord("docs", 2, 20.0, status="promoted", promoted=True))  # update in place
    assert store.runs("docs")[0].status == "promoted"
    assert store.serving("docs") is None
    store.set_serving(ServingRecord("docs", 2, 25.0, previous=1, run_dir="runs/docs/versions/v0002"))
    assert store.serving("docs").previous == 1 and store.serving("other") is None
    hashes = {f"d{i}": f"{i:016x}" for i in range(12)}
    store.put_snapshot("docs", 2, hashes)
    assert store.snapshot("docs", 2) == hashes and store.snapshot("docs", 1) is None
    store.delete_snapshot("docs", 2)
    assert store.snapshot("docs", 2) is None


def exercise_lock(store, clock: Clock) -> None:
    a = store.acquire("docs", "host-a:1", ttl_s=60)
    assert a is not None and a.holder == "host-a:1" and a.expires_at == clock.t + 60
    assert store.acquire("docs", "host-b:2", ttl_s=60) is None  # contention: refused
    assert store.acquire("other", "host-b:2", ttl_s=60) is not None  # another target is independent
    clock.t += 30
    a = store.renew(a, ttl_s=60)
    clock.t += 45  # would have expired without the renewal
    assert store.acquire("docs", "host-b:2", ttl_s=60) is None
    clock.t += 20  # now expired: host-a crashed; host-b takes over
    b = store.acquire("docs", "host-b:2", ttl_s=60)
    assert b is not None and store.current_lease("docs").token == b.token
    with pytest.raises(LockHeldError, match="lost"):
        store.renew(a, ttl_s=60)
    store.release(a)  # releasing a lost lease must not free the new holder's lock
    assert store.current_lease("docs").holder == "host-b:2"
    store.release(b)
    assert store.current_lease("docs") is None
    with hold_lock(store, "docs", holder="host-c:3", ttl_s=60), pytest.raises(LockHeldError, match="host-c:3"), \
            hold_lock(store, "docs", holder="host-d:4"):
        pass
    assert store.current_lease("docs") is None


def test_file_store_records(tmp_path):
    exercise_records(FileStateStore(tmp_path))


def test_file_store_lock_contention_and_expiry(tmp_path):
    clock = Clock()
    exercise_lock(FileStateStore(tmp_path, clock=clock), clock)


def test_file_lock_has_one_winner_among_concurrent_takeovers(tmp_path):
    clock = Clock()
    store = FileStateStore(tmp_path, clock=clock)
    assert store.acquire("docs", "crashed", ttl_s=10) is not None
    clock.t += 11
    winners, barrier = [], threading.Barrier(8)

    def contend(i: int) -> None:
        barrier.wait()
        lease = FileStateStore(tmp_path, clock=clock).acquire("docs", f"w{i}", ttl_s=60)
        if lease is not None:
            winners.append(lease)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    assert store.current_lease("docs").token == winners[0].token
    assert not list((tmp_path / "docs").glob("*.tmp"))  # no leftovers


def test_file_writes_are_atomic_json(tmp_path):
    store = FileStateStore(tmp_path)
    store.put_run(RunRecord("a/b", 1, 1.0))
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 1 and not files[0].name.endswith(".tmp")
    assert json.loads(files[0].read_text())["target"] == "a/b"


# -- cluster ---------------------------------------------------------------------------------------


@pytest.fixture
def recording_client(osmem):  # noqa: F811
    """An opensearch-py client on a fresh osmem clone that records every request it sends."""
    from opensearchpy import OpenSearch, Urllib3HttpConnection

    sent = []

    class Recording(Urllib3HttpConnection):
        def perform_request(self, method, url, params=None, body=None, **kwargs):
            decoded = {k: v.decode() if isinstance(v, bytes) else str(v) for k, v in (params or {}).items()}
            sent.append((method, url.split("?")[0], decoded, parse_body(body)))
            return super().perform_request(method, url, params, body, **kwargs)

    clone = osmem.clone()
    client = OpenSearch(hosts=[clone.url], timeout=10, connection_class=Recording)
    yield client, sent
    client.close()
    clone.close()


def test_index_store_records_on_osmem(recording_client):
    client, _ = recording_client
    exercise_records(IndexStateStore(client, ".rgpl-state"))
    assert client.indices.exists(index=".rgpl-state")


def test_index_store_lock_on_osmem(recording_client):
    client, sent = recording_client
    clock = Clock()
    exercise_lock(IndexStateStore(client, ".rgpl-state", clock=clock), clock)
    creates = [p for m, path, p, _ in sent if "/_doc/lock" in path and p.get("op_type") == "create"]
    takeovers = [p for m, path, p, _ in sent if "/_doc/lock" in path and "if_seq_no" in p]
    assert creates and takeovers and all("if_primary_term" in p for p in takeovers)


def test_index_store_requests_follow_the_spec(recording_client):
    try:
        spec = OpenSearchSpec()
    except FileNotFoundError as exc:
        pytest.skip(f"the OpenSearch API spec (../shared/opensearch-api-spec) is not beside the repository: {exc}")
    client, sent = recording_client
    clock = Clock()
    store = IndexStateStore(client, ".rgpl-state", clock=clock)
    exercise_records(store)
    exercise_lock(store, clock)
    seen = set()
    for method, path, _, body in sent:
        spec.validate_request(method, path, body)  # raises SpecError on an invalid body
        seen.add(spec.operation_id(method, path).rsplit(".", 1)[0])  # "index.2" -> "index"
    assert {"index", "get", "search", "delete", "indices.create"} <= seen, seen


def test_index_store_two_clients_race_for_an_expired_lease(osmem):  # noqa: F811
    from opensearchpy import OpenSearch

    clone = osmem.clone()
    try:
        clock = Clock()
        a = IndexStateStore(OpenSearch(hosts=[clone.url], timeout=10), clock=clock)
        b = IndexStateStore(OpenSearch(hosts=[clone.url], timeout=10), clock=clock)
        assert a.acquire("docs", "crashed", ttl_s=5) is not None
        clock.t += 6
        stale = a._get("lock:docs")
        assert b.acquire("docs", "host-b", ttl_s=60) is not None  # b takes over first
        # a read the same expired lease before b wrote: its conditional write must lose
        from opensearchpy import ConflictError

        with pytest.raises(ConflictError):
            a.client.index(index=a.index, id="lock:docs", body={"kind": "lock"}, if_seq_no=stale["_seq_no"],
                           if_primary_term=stale["_primary_term"])
        assert a.acquire("docs", "host-a", ttl_s=60) is None
        assert a.current_lease("docs").holder == "host-b"
    finally:
        clone.close()
