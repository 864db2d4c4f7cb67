"""Parallel bulk indexing against a scripted ``_bulk``: retries, bounded in-flight chunks, refused ids."""

from __future__ import annotations

import threading
import time

import pytest
from rgpl_plugin.bulk import bulk_lines, parallel_index
from rgpl_plugin.errors import BulkWriteError


def docs(n: int, start: int = 0):
    return [(f"d{i}", {"text": f"t{i}", "v": [float(i)]}, None) for i in range(start, start + n)]


def chunked(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


class ScriptedBulk:
    """Answers ``_bulk`` like the cluster: ``status(id, attempt)`` decides each item (default 201)."""

    def __init__(self, status=lambda doc_id, attempt: 201, request_error=None):
        self.status = status
        self.request_error = request_error
        self.attempts: dict[str, int] = {}
        self.stored: dict[str, dict] = {}
        self.requests = 0
        self.lock = threading.Lock()

    def __call__(self, lines):
        with self.lock:
            self.requests += 1
            if self.request_error is not None:
                exc = self.request_error(self.requests)
                if exc is not None:
                    raise exc
            items = []
            for meta, source in zip(lines[::2], lines[1::2]):
                doc_id = meta["index"]["_id"]
                attempt = self.attempts[doc_id] = self.attempts.get(doc_id, 0) + 1
                status = self.status(doc_id, attempt)
                item = {"_id": doc_id, "status": status}
                if status < 300:
                    self.stored[doc_id] = source
                else:
                    item["error"] = {"type": "mapper_parsing_exception" if status == 400 else "rejected",
                                     "reason": f"refused {doc_id}"}
                items.append({"index": item})
            return {"errors": any(i["index"]["status"] >= 300 for i in items), "items": items}


def test_every_document_is_written_once_over_several_streams():
    send = ScriptedBulk()
    written = []
    report = parallel_index(send, "v1", chunked(docs(1000), 100), threads=4, on_written=written.append)
    assert report.written == 1000 and sorted(written) == [100] * 10
    assert set(send.stored) == {f"d{i}" for i in range(1000)} and set(send.attempts.values()) == {1}
    assert send.stored["d7"] == {"text": "t7", "v": [7.0]}


def test_429_items_are_resent_alone_with_backoff():
    # d3 and d5 are rejected twice (a full write queue), then accepted
    send = ScriptedBulk(status=lambda doc_id, attempt: 429 if doc_id in ("d3", "d5") and attempt <= 2
                        else 201)
    sleeps = []
    report = parallel_index(send, "v1", [docs(10)], threads=1, initial_backoff=0.5, max_backoff=0.75,
                            sleep=sleeps.append)
    assert report.written == 10 and report.retried_items == 4 and report.requests == 3
    assert sleeps == [0.5, 0.75]  # doubled, capped at max_backoff
    assert send.attempts["d3"] == 3 and send.attempts["d0"] == 1


def test_429_that_outlasts_the_retries_is_a_failure_naming_the_id():
    send = ScriptedBulk(status=lambda doc_id, attempt: 429 if doc_id == "d2" else 201)
    with pytest.raises(BulkWriteError, match="d2") as info:
        parallel_index(send, "v1", [docs(4)], threads=1, max_retries=2, sleep=lambda s: None)
    assert info.value.failures == [{"index": {"_id": "d2", "status": 429, "error": "rejected: refused d2"}}]
    assert send.attempts["d2"] == 3


def test_a_whole_request_answered_429_or_lost_is_resent():
    class Rejected(Exception):
        status_code = 429

    errors = {1: Rejected("too many requests"), 2: ConnectionResetError("reset")}
    send = ScriptedBulk(request_error=lambda n: errors.get(n))
    report = parallel_index(send, "v1", [docs(5)], threads=1, sleep=lambda s: None)
    assert report.written == 5 and report.retried_requests == 2 and send.requests == 3


def test_any_other_request_error_is_raised_after_the_chunks_in_flight_finish():
    class Forbidden(Exception):
        status_code = 403

    send = ScriptedBulk(request_error=lambda n: Forbidden("no write privilege") if n == 2 else None)
    with pytest.raises(Forbidden):
        parallel_index(send, "v1", chunked(docs(100), 10), threads=1, max_in_flight=1, sleep=lambda s: None)
    assert send.requests == 2  # no chunk started after the failure


def test_refused_items_are_all_reported_and_no_new_chunk_starts():
    send = ScriptedBulk(status=lambda doc_id, attempt: 400 if doc_id in ("d12", "d15") else 201)
    with pytest.raises(BulkWriteError, match=r"2 documents were refused .*d12, d15.*mapper_parsing"):
        parallel_index(send, "v1", chunked(docs(100), 10), threads=1, max_in_flight=1, sleep=lambda s: None)
    assert send.requests == 2  # the chunk with refused items was the last one sent


def test_in_flight_chunks_are_bounded_while_the_input_is_read_lazily():
    inner = ScriptedBulk()
    active, peak = [0], [0]
    lock = threading.Lock()

    def slow_send(lines):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return inner(lines)

    finished, ahead = [], []

    def source():
        for i, chunk in enumerate(chunked(docs(60), 5)):
            ahead.append(i - len(finished))  # chunks taken from the input and not yet finished
            yield chunk

    report = parallel_index(slow_send, "v1", source(), threads=2, max_in_flight=3, on_written=finished.append)
    assert report.written == 60 and len(finished) == 12
    assert max(ahead) == 3 and peak[0] == 2  # never more than max_in_flight taken, two streams busy


def test_routing_travels_with_the_document():
    lines = bulk_lines("v1", [("a", {"x": 1}, "r7"), ("b", {"x": 2}, None)])
    assert lines == [{"index": {"_index": "v1", "_id": "a", "routing": "r7"}}, {"x": 1},
                     {"index": {"_index": "v1", "_id": "b"}}, {"x": 2}]
