"""Where re-adaptation state lives: the run folder (embedded) or a small index in the cluster.

A *target* is what gets adapted again and again: an embedded run root (``runs/docs``) or a
cluster index/alias (``docs``). Its state is

* one :class:`RunRecord` per adaptation (version, times, status, document snapshot summary,
  drift that triggered it, promotion metrics, promoted or not, and why);
* the *serving* version (:class:`ServingRecord`);
* the per-document fingerprints of every version (``put_snapshot``), which drift detection and
  query reuse compare against;
* a :class:`Lease`: the lock that refuses a second concurrent adaptation of the same target.

Two stores implement :class:`StateStore`:

* :class:`FileStateStore` (``<run root>/state/``): JSON files written atomically (temp file +
  ``os.replace``); the lock is a file created with ``O_CREAT|O_EXCL``; an expired one is taken
  over by an atomic rename of our lease over it, inside a short ``flock`` critical section (so of
  several contenders exactly one wins, and a crash never leaves the mutex held);
* :class:`IndexStateStore` (``.rgpl-state`` on OpenSearch/Elasticsearch): one document per
  record keyed by the target name, so any machine that reaches the cluster can pick up the
  schedule. The lock is a document created with ``op_type=create``; an expired lease is taken
  over with optimistic concurrency (``if_seq_no`` + ``if_primary_term``), so two machines never
  both win.

Every time comes from an injectable ``clock`` (seconds since the epoch) so tests drive expiry.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Protocol

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RunStatus = Literal["running", "promoted", "rejected", "failed"]
DEFAULT_STATE_INDEX = ".rgpl-state"


class LockHeldError(RuntimeError):
    """Another adaptation of the same target holds the lock."""


@dataclass(frozen=True)
class RunRecord:
    """One adaptation of a target."""

    target: str
    version: int
    started_at: float
    status: RunStatus = "running"
    finished_at: float | None = None
    run_dir: str = ""
    snapshot: dict[str, Any] = field(default_factory=dict)  # documents, digest, max timestamp ...
    drift: dict[str, Any] = field(default_factory=dict)  # what triggered the run
    metrics: dict[str, Any] = field(default_factory=dict)  # promotion numbers
    promoted: bool = False
    reason: str = ""
    error: str | None = None
    warm_start_from: int | None = None
    index_version: str | None = None  # cluster: <alias>-rgpl-<version>

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunRecord:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ServingRecord:
    """Which version of a target serves, since when, and the one it replaced."""

    target: str
    version: int
    since: float
    previous: int | None = None
    run_dir: str = ""
    index_version: str | None = None


@dataclass(frozen=True)
class Lease:
    """A held lock: who holds it and until when (``token`` identifies this very acquisition)."""

    target: str
    holder: str
    token: str
    acquired_at: float
    expires_at: float

    def expired(self, now: float) -> bool:
        return now >= self.expires_at


class StateStore(Protocol):
    """Records, serving pointer, snapshots and the lock of adapted targets."""

    clock: Clock

    def put_run(self, record: RunRecord) -> None: ...

    def runs(self, target: str, limit: int | None = None) -> list[RunRecord]:
        """Runs of ``target``, newest version first."""
        ...

    def serving(self, target: str) -> ServingRecord | None: ...

    def set_serving(self, record: ServingRecord) -> None: ...

    def put_snapshot(self, target: str, version: int, hashes: Mapping[str, str]) -> None: ...

    def snapshot(self, target: str, version: int) -> dict[str, str] | None: ...

    def delete_snapshot(self, target: str, version: int) -> None: ...

    def acquire(self, target: str, holder: str, ttl_s: float) -> Lease | None:
        """The lease, or None while another holder's unexpired lease exists."""
        ...

    def renew(self, lease: Lease, ttl_s: float) -> Lease:
        """Extend our lease; LockHeldError when it was lost (expired and taken over)."""
        ...

    def release(self, lease: Lease) -> None:
        """Give the lock back (a no-op when it is no longer ours)."""
        ...

    def current_lease(self, target: str) -> Lease | None: ...


def default_holder() -> str:
    """``host:pid`` of this process (shown to whoever finds the lock held)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


@contextmanager
def hold_lock(store: StateStore, target: str, *, holder: str | None = None, ttl_s: float = 6 * 3600) -> Iterator[Lease]:
    """Hold the lock of ``target`` for the ``with`` block; LockHeldError when someone else has it."""
    lease = store.acquire(target, holder or default_holder(), ttl_s)
    if lease is None:
        other = store.current_lease(target)
        who = f"{other.holder} until {_iso(other.expires_at)}" if other else "another process"
        raise LockHeldError(
            f"an adaptation of {target!r} is already running ({who}); wait for it, or, if that process "
            "crashed, for its lock to expire"
        )
    try:
        yield lease
    finally:
        store.release(lease)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# -- files ---------------------------------------------------------------------------------------


def _atomic_write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"


class FileStateStore:
    """State as JSON files under ``root`` (default for the embedded backend: ``<run root>/state``).

    Layout: ``<target>/runs/v0001.json``, ``<target>/serving.json``, ``<target>/snapshots/v0001.json``
    and ``<target>/lock.json``.
    """

    def __init__(self, root: str | os.PathLike, *, clock: Clock = time.time) -> None:
        self.root = Path(root)
        self.clock = clock

    def _dir(self, target: str) -> Path:
        return self.root / _safe(target)

    # records
    def put_run(self, record: RunRecord) -> None:
        _atomic_write(self._dir(record.target) / "runs" / f"v{record.version:04d}.json", record.to_dict())

    def runs(self, target: str, limit: int | None = None) -> list[RunRecord]:
        folder = self._dir(target) / "runs"
        paths = sorted(folder.glob("v*.json"), reverse=True) if folder.exists() else []
        out = [RunRecord.from_dict(json.loads(p.read_text(encoding="utf-8"))) for p in paths[:limit]]
        return sorted(out, key=lambda r: -r.version)

    def serving(self, target: str) -> ServingRecord | None:
        path = self._dir(target) / "serving.json"
        return ServingRecord(**json.loads(path.read_text(encoding="utf-8"))) if path.exists() else None

    def set_serving(self, record: ServingRecord) -> None:
        _atomic_write(self._dir(record.target) / "serving.json", asdict(record))

    def put_snapshot(self, target: str, version: int, hashes: Mapping[str, str]) -> None:
        _atomic_write(self._dir(target) / "snapshots" / f"v{version:04d}.json", dict(hashes))

    def snapshot(self, target: str, version: int) -> dict[str, str] | None:
        path = self._dir(target) / "snapshots" / f"v{version:04d}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def delete_snapshot(self, target: str, version: int) -> None:
        (self._dir(target) / "snapshots" / f"v{version:04d}.json").unlink(missing_ok=True)

    # lock
    def _lock_path(self, target: str) -> Path:
        return self._dir(target) / "lock.json"

    def _read_lock(self, path: Path) -> Lease | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Lease(**data)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            # created (O_EXCL) but not written yet, or garbage: held until its mtime ages a day
            try:
                mtime = path.stat().st_mtime
            except FileNotFoundError:
                return None
            return Lease(target="?", holder="unknown (unreadable lock file)", token="?", acquired_at=mtime,
                         expires_at=mtime + 86400)

    def current_lease(self, target: str) -> Lease | None:
        return self._read_lock(self._lock_path(target))

    def _create(self, path: Path, lease: Lease) -> bool:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(lease), fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    @contextmanager
    def _mutex(self, target: str) -> Iterator[None]:
        """A short critical section (``flock``; released by the kernel if the process dies) for the
        read-check-write steps: taking over an expired lease, renewing, releasing."""
        import fcntl

        path = self._dir(target) / "lock.mutex"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def acquire(self, target: str, holder: str, ttl_s: float) -> Lease | None:
        path = self._lock_path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        now = self.clock()
        lease = Lease(target, holder, uuid.uuid4().hex, now, now + ttl_s)
        if self._create(path, lease):  # the common case: nobody holds it
            return lease
        with self._mutex(target):
            seen = self._read_lock(path)
            if seen is None:  # released in between
                return lease if self._create(path, lease) else None
            if not seen.expired(now):
                return None
            # expired (a crashed holder): replace it by ours with an atomic rename, so the lock
            # file never disappears and no O_EXCL creator can slip in between
            _atomic_write(path, asdict(lease))
        log.warning("lock of %s held by %s expired at %s: taking it over", target, seen.holder, _iso(seen.expires_at))
        return lease

    def renew(self, lease: Lease, ttl_s: float) -> Lease:
        path = self._lock_path(lease.target)
        with self._mutex(lease.target):
            current = self._read_lock(path)
            if current is None or current.token != lease.token:
                raise LockHeldError(f"the lock of {lease.target!r} was lost (expired and taken by another process)")
            renewed = replace(lease, expires_at=self.clock() + ttl_s)
            _atomic_write(path, asdict(renewed))
        return renewed

    def release(self, lease: Lease) -> None:
        path = self._lock_path(lease.target)
        with self._mutex(lease.target):
            current = self._read_lock(path)
            if current is not None and current.token == lease.token:
                path.unlink(missing_ok=True)


# -- cluster ---------------------------------------------------------------------------------------

STATE_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "kind": {"type": "keyword"},
        "target": {"type": "keyword"},
        "version": {"type": "long"},
        "updated_at": {"type": "double"},
        "record": {"type": "object", "enabled": False},
    },
}
SNAPSHOT_CHUNK = 5000


def _status(exc: BaseException) -> int | None:
    code = getattr(exc, "status_code", None)
    if isinstance(code, int):
        return code
    meta = getattr(exc, "meta", None)
    return getattr(meta, "status", None)


def _body(resp: Any) -> Any:
    return getattr(resp, "body", resp)


class IndexStateStore:
    """State as documents of a small index (default ``.rgpl-state``) in the user's cluster.

    Works with opensearch-py and elasticsearch-py clients. Document ids: ``run:<target>:<version>``,
    ``serving:<target>``, ``lock:<target>``, ``snap:<target>:<version>:<chunk>``; each holds the
    record under ``record`` (stored, not indexed) plus ``kind``/``target``/``version`` to query by.
    """

    def __init__(self, client: Any, index: str = DEFAULT_STATE_INDEX, *, clock: Clock = time.time) -> None:
        self.client = client
        self.index = index
        self.clock = clock
        self._ready = False

    def _ensure(self) -> None:
        if self._ready:
            return
        if not self.client.indices.exists(index=self.index):
            try:
                self.client.indices.create(index=self.index, body={
                    "settings": {"index": {"number_of_shards": 1, "auto_expand_replicas": "0-1"}},
                    "mappings": STATE_MAPPING,
                })
            except Exception as exc:  # another machine created it first
                if _status(exc) != 400 or not self.client.indices.exists(index=self.index):
                    raise
        self._ready = True

    def _put(self, doc_id: str, kind: str, target: str, record: Mapping[str, Any], version: int | None = None,
             **params: Any) -> Any:
        self._ensure()
        body = {"kind": kind, "target": target, "version": version, "updated_at": self.clock(), "record": dict(record)}
        return _body(self.client.index(index=self.index, id=doc_id, body=body, refresh="true", **params))

    def _get(self, doc_id: str) -> dict[str, Any] | None:
        self._ensure()
        try:
            return _body(self.client.get(index=self.index, id=doc_id))
        except Exception as exc:
            if _status(exc) == 404:
                return None
            raise

    def _search(self, kind: str, target: str, size: int, version: int | None = None) -> list[dict[str, Any]]:
        self._ensure()
        filters: list[dict[str, Any]] = [{"term": {"kind": kind}}, {"term": {"target": target}}]
        if version is not None:
            filters.append({"term": {"version": version}})
        body = {"size": size, "query": {"bool": {"filter": filters}}}
        hits = _body(self.client.search(index=self.index, body=body))["hits"]["hits"]
        return sorted(hits, key=lambda h: -(h["_source"].get("version") or 0))

    # records
    def put_run(self, record: RunRecord) -> None:
        self._put(f"run:{record.target}:{record.version}", "run", record.target, record.to_dict(), record.version)

    def runs(self, target: str, limit: int | None = None) -> list[RunRecord]:
        hits = self._search("run", target, 10_000)
        return [RunRecord.from_dict(h["_source"]["record"]) for h in hits[:limit]]

    def serving(self, target: str) -> ServingRecord | None:
        doc = self._get(f"serving:{target}")
        return ServingRecord(**doc["_source"]["record"]) if doc and doc.get("found", True) else None

    def set_serving(self, record: ServingRecord) -> None:
        self._put(f"serving:{record.target}", "serving", record.target, asdict(record), record.version)

    def put_snapshot(self, target: str, version: int, hashes: Mapping[str, str]) -> None:
        self.delete_snapshot(target, version)
        items = sorted(hashes.items())
        chunks = [items[i : i + SNAPSHOT_CHUNK] for i in range(0, len(items), SNAPSHOT_CHUNK)] or [[]]
        for n, chunk in enumerate(chunks):
            self._put(f"snap:{target}:{version}:{n}", "snapshot", target, {"hashes": dict(chunk), "chunk": n}, version)

    def snapshot(self, target: str, version: int) -> dict[str, str] | None:
        hits = self._search("snapshot", target, 10_000, version)
        if not hits:
            return None
        out: dict[str, str] = {}
        for hit in hits:
            out.update(hit["_source"]["record"]["hashes"])
        return out

    def delete_snapshot(self, target: str, version: int) -> None:
        for hit in self._search("snapshot", target, 10_000, version):
            self.client.delete(index=self.index, id=hit["_id"], refresh="true")

    # lock
    def _lease_of(self, doc: Mapping[str, Any]) -> Lease:
        return Lease(**doc["_source"]["record"])

    def current_lease(self, target: str) -> Lease | None:
        doc = self._get(f"lock:{target}")
        return self._lease_of(doc) if doc and doc.get("found", True) else None

    def acquire(self, target: str, holder: str, ttl_s: float) -> Lease | None:
        now = self.clock()
        lease = Lease(target, holder, uuid.uuid4().hex, now, now + ttl_s)
        doc_id = f"lock:{target}"
        try:
            self._put(doc_id, "lock", target, asdict(lease), op_type="create")
            return lease
        except Exception as exc:
            if _status(exc) != 409:
                raise
        doc = self._get(doc_id)
        if doc is None:  # released in between: try once more
            try:
                self._put(doc_id, "lock", target, asdict(lease), op_type="create")
                return lease
            except Exception as exc:
                if _status(exc) == 409:
                    return None
                raise
        seen = self._lease_of(doc)
        if not seen.expired(now):
            return None
        try:  # take over the expired lease only if nobody changed it since we read it
            self._put(doc_id, "lock", target, asdict(lease), if_seq_no=doc["_seq_no"], if_primary_term=doc["_primary_term"])
        except Exception as exc:
            if _status(exc) == 409:
                return None
            raise
        log.warning("lock of %s held by %s expired at %s: taking it over", target, seen.holder, _iso(seen.expires_at))
        return lease

    def renew(self, lease: Lease, ttl_s: float) -> Lease:
        doc = self._get(f"lock:{lease.target}")
        if doc is None or self._lease_of(doc).token != lease.token:
            raise LockHeldError(f"the lock of {lease.target!r} was lost (expired and taken by another process)")
        renewed = replace(lease, expires_at=self.clock() + ttl_s)
        try:
            self._put(f"lock:{lease.target}", "lock", lease.target, asdict(renewed),
                      if_seq_no=doc["_seq_no"], if_primary_term=doc["_primary_term"])
        except Exception as exc:
            if _status(exc) == 409:
                raise LockHeldError(f"the lock of {lease.target!r} was lost while renewing it") from None
            raise
        return renewed

    def release(self, lease: Lease) -> None:
        doc = self._get(f"lock:{lease.target}")
        if doc is None or self._lease_of(doc).token != lease.token:
            return
        try:
            self.client.delete(index=self.index, id=f"lock:{lease.target}", refresh="true",
                               if_seq_no=doc["_seq_no"], if_primary_term=doc["_primary_term"])
        except Exception as exc:
            if _status(exc) not in (404, 409):
                raise
