"""How a cluster backend reads every document of an index once, as a consistent snapshot, resumably.

From OpenSearch 3.3 (and on Elasticsearch) a Point in Time with ``search_after`` on ``_shard_doc``; below,
a scroll sorted by ``_doc`` (``_doc`` in a PIT sort is a per-shard Lucene id there: ``search_after`` on it
would skip documents of the other shards). A PIT read records where it stands after every hit
(:attr:`cursor`: the PIT id and the hit's sort values), so a read killed mid-way can continue in the same
PIT while it lives (``resume``); when it has expired the read starts over (:attr:`resumed` says which).

:class:`SnapshotReads` is mixed into :class:`rgpl_plugin.opensearch.OpenSearchBackend`; the Elasticsearch
backend overrides how a PIT is opened, searched and closed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

from rgpl_plugin.errors import parse_version

__all__ = ["PIT_SHARD_DOC_SINCE", "SnapshotReads"]

log = logging.getLogger("rgpl_plugin.opensearch")

PIT_SHARD_DOC_SINCE = "3.3.0"
_PIT_UNSUPPORTED = ("no handler found", "unrecognized", "invalid_index_name", "illegal_argument")


class SnapshotReads:
    """The snapshot read of :class:`~rgpl_plugin.opensearch.OpenSearchBackend` (``client``, ``keep_alive``,
    ``slice``, ``version()``, ``_call``, ``_error`` come from it)."""

    cursor: dict[str, Any] | None = None
    resumed: bool = False
    read_with: str | None = None

    def pit_sort_supported(self) -> bool:
        """``sort: ["_shard_doc"]`` with a PIT exists from OpenSearch 3.3. Below, ``_doc`` is a per-shard Lucene
        id (``search_after`` on it skips documents of the other shards), so reads use a scroll sorted by ``_doc``
        instead (a consistent snapshot too)."""
        return parse_version(self.version()) >= parse_version(PIT_SHARD_DOC_SINCE)

    def _iter_hits(
        self, index: str, source: Any, batch_size: int, query: Mapping[str, Any],
        resume: Mapping[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        self.cursor, self.resumed = None, False
        if resume and self.pit_sort_supported():
            first = self._resume_pit(index, source, batch_size, query, resume)
            if first is not None:
                self.read_with, self.resumed = "pit", True
                yield from self._pit_hits(index, source, batch_size, query, resume["pit_id"], first)
                return
        yield from self._fresh_hits(index, source, batch_size, query)

    def _fresh_hits(self, index: str, source: Any, batch_size: int, query: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """A read from the start: in a new PIT sorted by ``_shard_doc``, else a scroll."""
        if not self.pit_sort_supported():
            self.read_with = "scroll"
            yield from self._scroll_hits(index, source, batch_size, query)
            return
        try:
            pit = self.client.create_pit(index=index, params={"keep_alive": self.keep_alive})
        except Exception as exc:
            status = getattr(exc, "status_code", None)
            text = str(exc).lower()
            if status in (400, 404, 405) and "index_not_found" not in text and any(s in text for s in _PIT_UNSUPPORTED):
                log.info("PIT unavailable on %s (%s); reading with scroll", index, status)
                self.read_with = "scroll"
                yield from self._scroll_hits(index, source, batch_size, query)
                return
            raise self._error(exc, "opening a point in time", index) from None
        self.read_with = "pit"
        yield from self._pit_hits(index, source, batch_size, query, pit["pit_id"])

    def _pit_body(
        self, pit_id: str, after: Any, source: Any, batch_size: int, query: Mapping[str, Any]
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "size": batch_size,
            "query": dict(query),
            "_source": source,
            "pit": {"id": pit_id, "keep_alive": self.keep_alive},
            "sort": ["_shard_doc"],  # ascending; a plain name is unambiguous in the spec
        }
        if self.slice:
            body["slice"] = dict(self.slice)
        if after is not None:
            body["search_after"] = after
        return body

    def _pit_search(self, index: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("reading documents with a point in time", self.client.search, body=body)

    def _close_pit(self, index: str, pit_id: str) -> None:
        try:
            self.client.delete_pit(body={"pit_id": [pit_id]})
        except Exception as exc:  # the PIT expires by itself; do not hide the real error
            log.info("could not delete PIT on %s: %s", index, type(exc).__name__)

    def _resume_pit(
        self, index: str, source: Any, batch_size: int, query: Mapping[str, Any], resume: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """The page after ``resume`` in its point in time, or None when that PIT is gone (expired, node restarted)."""
        if not resume.get("pit_id") or resume.get("after") is None:
            return None
        body = self._pit_body(resume["pit_id"], list(resume["after"]), source, batch_size, query)
        try:
            return self._pit_search(index, body)
        except Exception as exc:  # expired or unknown PIT: read from the start (a copy skips what it has)
            log.info("the point in time of the interrupted read on %s is gone (%s); reading from the start",
                     index, type(exc).__name__)
            return None

    def _pit_hits(
        self, index: str, source: Any, batch_size: int, query: Mapping[str, Any], pit_id: str,
        first: dict[str, Any] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Pages of a PIT read (``first``: a page already fetched); deletes the PIT at the end."""
        try:
            after, resp = None, first
            while True:
                if resp is None:
                    resp = self._pit_search(index, self._pit_body(pit_id, after, source, batch_size, query))
                hits = resp["hits"]["hits"]
                if not hits:
                    return
                pit_id = resp.get("pit_id", pit_id)
                for hit in hits:
                    self.cursor = {"pit_id": pit_id, "after": hit["sort"]}
                    yield hit
                after, resp = hits[-1]["sort"], None
        finally:
            self._close_pit(index, pit_id)

    def _scroll_hits(
        self, index: str, source: Any, batch_size: int, query: Mapping[str, Any]
    ) -> Iterator[dict[str, Any]]:
        body: dict[str, Any] = {"size": batch_size, "query": dict(query), "_source": source, "sort": ["_doc"]}
        if self.slice:
            body["slice"] = dict(self.slice)
        resp = self._call(
            "reading documents with scroll", self.client.search, index=index, body=body,
            params={"scroll": self.keep_alive},
        )
        scroll_id = resp.get("_scroll_id")
        try:
            while resp["hits"]["hits"]:
                yield from resp["hits"]["hits"]
                resp = self._call(
                    "reading documents with scroll", self.client.scroll,
                    body={"scroll_id": scroll_id, "scroll": self.keep_alive}, _index=index,
                )
                scroll_id = resp.get("_scroll_id", scroll_id)
        finally:
            if scroll_id:
                try:
                    self.client.clear_scroll(body={"scroll_id": [scroll_id]})
                except Exception as exc:
                    log.info("could not clear scroll on %s: %s", index, type(exc).__name__)
