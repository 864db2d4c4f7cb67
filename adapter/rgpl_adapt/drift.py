"""Drift: how much of the index changed since the last adaptation, and whether to adapt again.

Four ways to measure it (``DriftMode``):

* ``fingerprint`` (default on the embedded backend, the most exact): a hash of every document's
  id, title and text; new, changed and deleted documents are counted exactly, and the ids of the
  new and changed ones are known (query generation runs only for them). Reads every document.
* ``timestamp`` (clusters): documents whose ``field`` is later than the last run's start, by one
  ``_count`` with a ``range`` query; deletions show only as a lower count.
* ``seqno`` (clusters): documents written since the last run by their ``_seq_no`` (one range
  count per shard, using the per-shard maxima recorded at the last run); needs no field of yours.
* ``count``: only the change in the number of documents (cheapest, blind to edits).

The share is ``(new + changed + deleted) / documents at the last run``; a run is due when it is
at least the threshold (default 0.05). The arithmetic is in pure functions (:func:`compare_fingerprints`,
:func:`count_drift`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from rgpl_plugin.base import Document

DriftMode = Literal["fingerprint", "timestamp", "seqno", "count"]
DRIFT_MODES: tuple[str, ...] = ("fingerprint", "timestamp", "seqno", "count")
DEFAULT_THRESHOLD = 0.05


@dataclass(frozen=True)
class DriftReport:
    """Changes since the last adaptation. ``changed_ids`` are the new and changed documents when
    the mode can tell (fingerprint), else empty."""

    mode: str
    before: int
    now: int
    added: int = 0
    changed: int = 0
    deleted: int = 0
    threshold: float = DEFAULT_THRESHOLD
    first_run: bool = False
    changed_ids: tuple[str, ...] = field(default=(), repr=False)
    detail: str = ""

    @property
    def share(self) -> float:
        """Share of the last run's documents that are new, changed or deleted (1.0 on the first run)."""
        if self.first_run:
            return 1.0
        return (self.added + self.changed + self.deleted) / max(1, self.before)

    @property
    def due(self) -> bool:
        """Whether adapting again is warranted (always on the first run)."""
        return self.first_run or self.share >= self.threshold

    def summary(self) -> str:
        if self.first_run:
            return f"no adaptation yet ({self.now} documents)"
        parts = f"+{self.added} new, ~{self.changed} changed, -{self.deleted} deleted"
        verdict = "due" if self.due else "not due"
        return f"{self.share:.1%} drift ({parts} of {self.before}; {self.mode}), threshold {self.threshold:.1%}: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("changed_ids")
        data.update(share=round(self.share, 6), due=self.due, changed_ids_count=len(self.changed_ids))
        return data


# -- pure ----------------------------------------------------------------------------------------


def doc_hash(doc: Document) -> str:
    """A short content hash of one document (title and text; the id is the key it is stored under)."""
    return hashlib.sha256(json.dumps([doc.title, doc.text], ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


def fingerprints(docs: Iterable[Document]) -> dict[str, str]:
    """``{doc id: content hash}`` of every document."""
    return {d.id: doc_hash(d) for d in docs}


def snapshot_digest(hashes: Mapping[str, str]) -> str:
    """One hash for a whole fingerprint snapshot (equal digests: identical documents)."""
    h = hashlib.sha256()
    for doc_id in sorted(hashes):
        h.update(f"{doc_id}\t{hashes[doc_id]}\n".encode())
    return h.hexdigest()[:16]


def compare_fingerprints(
    old: Mapping[str, str] | None, new: Mapping[str, str], *, threshold: float = DEFAULT_THRESHOLD
) -> DriftReport:
    """Exact new/changed/deleted counts between two snapshots (``old=None``: first run)."""
    if old is None:
        return DriftReport("fingerprint", 0, len(new), added=len(new), threshold=threshold, first_run=True,
                           changed_ids=tuple(new))
    added = [i for i in new if i not in old]
    changed = [i for i, h in new.items() if i in old and old[i] != h]
    deleted = sum(1 for i in old if i not in new)
    return DriftReport("fingerprint", len(old), len(new), added=len(added), changed=len(changed), deleted=deleted,
                       threshold=threshold, changed_ids=tuple(added + changed))


def count_drift(before: int | None, now: int, *, threshold: float = DEFAULT_THRESHOLD) -> DriftReport:
    """Drift from document counts only: growth counts as new, shrinkage as deleted."""
    if before is None:
        return DriftReport("count", 0, now, added=now, threshold=threshold, first_run=True)
    return DriftReport("count", before, now, added=max(0, now - before), deleted=max(0, before - now),
                       threshold=threshold)


def since_drift(mode: str, before: int | None, now: int, written_since: int, *,
                threshold: float = DEFAULT_THRESHOLD, detail: str = "") -> DriftReport:
    """Drift from the number of documents written since the last run (timestamp or seqno).

    Writes are new or changed documents; as many of them as the count grew are new, the rest
    changed; a lower count than before (plus new ones) means deletions."""
    if before is None:
        return DriftReport(mode, 0, now, added=now, threshold=threshold, first_run=True, detail=detail)
    added = max(0, min(written_since, now - before))
    changed = max(0, written_since - added)
    deleted = max(0, before + added - now)
    return DriftReport(mode, before, now, added=added, changed=changed, deleted=deleted, threshold=threshold,
                       detail=detail)


# -- cluster measurements --------------------------------------------------------------------------


def _body(resp: Any) -> Any:
    return getattr(resp, "body", resp)


def count_documents(client: Any, index: str, query: Mapping[str, Any] | None = None, **params: Any) -> int:
    body = {"query": dict(query)} if query else None
    return int(_body(client.count(index=index, body=body, **params))["count"])


def written_since_timestamp(client: Any, index: str, field_name: str, since: float) -> int:
    """Documents whose ``field_name`` is later than ``since`` (epoch seconds)."""
    query = {"range": {field_name: {"gt": int(since * 1000), "format": "epoch_millis"}}}
    return count_documents(client, index, query)


def shard_seqno_maxima(client: Any, index: str) -> dict[str, int]:
    """The highest ``_seq_no`` in each shard of ``index`` (its alias is resolved by the cluster)."""
    shards = _body(client.search_shards(index=index))["shards"]
    out: dict[str, int] = {}
    for group in shards:
        shard = next((c for c in group if c.get("primary")), group[0])
        key = f"{shard['index']}/{shard['shard']}"
        body = {"size": 1, "_source": False, "seq_no_primary_term": True, "sort": [{"_seq_no": "desc"}],
                "query": {"match_all": {}}}
        hits = _body(client.search(index=shard["index"], body=body, preference=f"_shards:{shard['shard']}"))["hits"]["hits"]
        out[key] = int(hits[0]["_seq_no"]) if hits else -1
    return out


def written_since_seqno(client: Any, index: str, maxima: Mapping[str, int]) -> int:
    """Documents written after the recorded per-shard ``_seq_no`` maxima. A shard the maxima do not
    know (an index version published since) counts whole."""
    shards = _body(client.search_shards(index=index))["shards"]
    total = 0
    for group in shards:
        shard = next((c for c in group if c.get("primary")), group[0])
        key = f"{shard['index']}/{shard['shard']}"
        query = {"range": {"_seq_no": {"gt": maxima[key]}}} if key in maxima else None
        total += count_documents(client, shard["index"], query, preference=f"_shards:{shard['shard']}")
    return total
