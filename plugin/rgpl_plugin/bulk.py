"""Parallel bulk indexing: a few bulk streams, bounded in flight, 429s retried, every item error kept.

:func:`parallel_index` sends chunks of ``(id, source, routing)`` documents as ``index`` operations
(create or overwrite by ``_id``) from a small thread pool. The caller's iterator (reading, encoding)
runs on the calling thread while the workers send, and at most ``max_in_flight`` chunks wait or
travel at any time, so memory stays bounded whatever the size of the input.

* an item rejected with 429 (a full write queue) is re-sent with exponential backoff, alone with
  the other rejected items of its chunk; so is a whole request answered 429 or lost to a connection
  error or timeout: ``index`` by ``_id`` is idempotent, re-sending it cannot duplicate a document;
* every other item error is kept with its id (:class:`ItemError`); after the first failing chunk no
  new chunk is started, the ones in flight finish, and :class:`~rgpl_plugin.errors.BulkWriteError`
  lists what failed: a failure never passes as a partial success.

opensearch-py's ``parallel_bulk`` has the threads but retries nothing; its ``streaming_bulk``
retries but is one stream. This is both, for both clients (``send`` hides the client's call).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from rgpl_plugin.errors import BulkWriteError, _is_connection_error, _status

log = logging.getLogger(__name__)

#: ``(id, _source, routing or None)``
Doc = tuple[str, Mapping[str, Any], "str | None"]
#: sends NDJSON lines (a list of dicts) as one ``_bulk`` request; returns the response body
Send = Callable[[list[dict[str, Any]]], Mapping[str, Any]]


@dataclass(frozen=True, slots=True)
class ItemError:
    """One document the cluster refused."""

    id: str
    status: int
    error: str

    def __str__(self) -> str:
        return f"{self.id}: {self.status} {self.error}"


@dataclass(slots=True)
class BulkReport:
    """What :func:`parallel_index` did."""

    written: int = 0
    requests: int = 0
    retried_items: int = 0
    retried_requests: int = 0
    errors: list[ItemError] = field(default_factory=list)


def _error_text(error: Any) -> str:
    if isinstance(error, Mapping):
        text = f"{error.get('type', '')}: {error.get('reason', '')}"
        cause = error.get("caused_by")
        if isinstance(cause, Mapping):
            text += f" (caused by {cause.get('type', '')}: {cause.get('reason', '')})"
        return text[:500]
    return str(error)[:500]


def _retryable(exc: BaseException) -> bool:
    """A 429 answer, or a connection error or timeout (the request may not have been applied); not TLS."""
    if _status(exc) == 429 or isinstance(exc, TimeoutError):
        return True
    return _is_connection_error(exc) and "SSLError" not in {cls.__name__ for cls in type(exc).__mro__}


def bulk_lines(index: str, docs: Sequence[Doc]) -> list[dict[str, Any]]:
    """The NDJSON lines of ``index`` operations for ``docs``."""
    lines: list[dict[str, Any]] = []
    for doc_id, source, routing in docs:
        meta: dict[str, Any] = {"_index": index, "_id": doc_id}
        if routing is not None:
            meta["routing"] = routing
        lines += [{"index": meta}, dict(source)]
    return lines


@dataclass
class _Writer:
    send: Send
    index: str
    max_retries: int
    initial_backoff: float
    max_backoff: float
    sleep: Callable[[float], None]
    report: BulkReport = field(default_factory=BulkReport)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _backoff(self, attempt: int) -> float:
        return min(self.max_backoff, self.initial_backoff * 2 ** (attempt - 1))

    def write(self, docs: Sequence[Doc]) -> int:
        """Send one chunk until every item is written or failed; returns the number of failures."""
        pending = list(docs)
        attempt = 0
        errors: list[ItemError] = []
        written = requests = retried_items = retried_requests = 0
        while pending:
            if attempt:
                self.sleep(self._backoff(attempt))
            try:
                requests += 1
                resp = self.send(bulk_lines(self.index, pending))
            except Exception as exc:
                if attempt < self.max_retries and _retryable(exc):
                    attempt += 1
                    retried_requests += 1
                    log.info("bulk request into %s: %s; retry %d in %.1fs", self.index, type(exc).__name__,
                             attempt, self._backoff(attempt))
                    continue
                raise
            items = resp.get("items") or []
            if len(items) != len(pending):
                raise BulkWriteError(
                    f"bulk response into {self.index} has {len(items)} items for {len(pending)} documents", [])
            again = []
            for doc, item in zip(pending, items):
                result = next(iter(item.values()))
                status = int(result.get("status", 500))
                if 200 <= status < 300:
                    written += 1
                elif status == 429 and attempt < self.max_retries:
                    again.append(doc)
                else:
                    doc_id = str(result.get("_id", doc[0]))
                    errors.append(ItemError(doc_id, status, _error_text(result.get("error"))))
            if again:
                attempt += 1
                retried_items += len(again)
            pending = again
        with self.lock:
            r = self.report
            r.written += written
            r.requests += requests
            r.retried_items += retried_items
            r.retried_requests += retried_requests
            r.errors += errors
        return len(errors)


def parallel_index(
    send: Send,
    index: str,
    chunks: Iterable[Sequence[Doc]],
    *,
    threads: int = 4,
    max_in_flight: int | None = None,
    max_retries: int = 5,
    initial_backoff: float = 2.0,
    max_backoff: float = 60.0,
    on_written: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> BulkReport:
    """Index every chunk of ``chunks`` into ``index`` through ``threads`` bulk streams.

    At most ``max_in_flight`` chunks (default ``2 * threads``) are queued or sent at a time; the
    iterator is advanced only when one finishes. ``on_written(n)`` is called (on this thread) with
    the size of each finished chunk. Raises :class:`BulkWriteError` with every failed item (id,
    status, error) when any item failed, or the first request error that retrying did not cure.
    """
    if threads < 1:
        raise ValueError("threads must be at least 1")
    limit = max_in_flight or 2 * threads
    if limit < 1:
        raise ValueError("max_in_flight must be at least 1")
    writer = _Writer(send, index, max_retries, initial_backoff, max_backoff, sleep)
    in_flight: dict[Future[int], int] = {}
    failed: BaseException | None = None
    stop = False

    def settle(done: set[Future[int]]) -> None:
        nonlocal failed, stop
        for fut in done:
            size = in_flight.pop(fut)
            exc = fut.exception()
            if exc is not None:
                failed = failed or exc
                stop = True
            elif fut.result():
                stop = True
            elif on_written is not None:
                on_written(size)

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="rgpl-bulk") as pool:
        try:
            for chunk in chunks:
                if not chunk:
                    continue
                while len(in_flight) >= limit:
                    done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    settle(done)
                if stop:
                    break
                in_flight[pool.submit(writer.write, list(chunk))] = len(chunk)
        finally:  # an error of the caller's iterator still lets the chunks in flight finish
            while in_flight:
                done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                settle(done)
    if failed is not None:
        raise failed
    report = writer.report
    if report.errors:
        first = report.errors[0]
        listed = ", ".join(e.id for e in report.errors[:20]) + (" ..." if len(report.errors) > 20 else "")
        raise BulkWriteError(
            f"{len(report.errors)} documents were refused while writing {index} (ids: {listed}); "
            f"first: {first}. Writing stopped after the first failing chunk.",
            [{"index": {"_id": e.id, "status": e.status, "error": e.error}} for e in report.errors],
        )
    return report
