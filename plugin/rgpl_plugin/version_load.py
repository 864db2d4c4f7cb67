"""Filling a new version index: the documents of the source index, each with its served vector.

Two ways, chosen by :func:`rgpl_plugin.opensearch_publish.publish_version`'s ``write``:

* ``"bulk"`` (default, :func:`load_one_pass`): read the source once (Point-in-Time +
  ``search_after``, or scroll where PIT cannot sort: :meth:`OpenSearchBackend._iter_hits`), look up
  (or compute) the vector of each page, and ``index`` ``_source`` + vector in ONE bulk write per
  document, through a few parallel bulk streams (:func:`rgpl_plugin.bulk.parallel_index`). The count
  check compares the version index with the number of documents this read saw, so writes to the
  source during the load do not fail it (they are simply not in this version).
* ``"reindex"`` (:func:`load_by_reindex`): ``_reindex`` as a task (``slices=auto``, polled on
  ``_tasks``), then a second pass of bulk partial updates adding the vectors: every document is
  written twice. On the test node it was slower (bench/publish_paths.py, bench/RESULTS.md); kept
  selectable for clusters that restrict search but allow ``_reindex``.

Where vectors come from is a :data:`VectorSource`: :func:`space_vectors` reads them from a vector
space's shadow index by ``_id`` (what the serve stage wrote), :func:`encoded_vectors` encodes each
page with a model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from rgpl_adapt.progress import ProgressFactory, silent

from rgpl_plugin import mappings as m
from rgpl_plugin.base import BackendError, batched
from rgpl_plugin.bulk import Doc, parallel_index

log = logging.getLogger(__name__)

WriteMethod = Literal["bulk", "reindex"]
WRITE_METHODS: tuple[str, ...] = ("bulk", "reindex")

#: the hits of one page (``_id``, ``_source``) -> ``{id: vector as a list of floats}``; an id left out
#: gets no vector
VectorSource = Callable[[Sequence[Mapping[str, Any]]], Mapping[str, list[float]]]


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a load did: documents the read saw (the count to verify against), written, and with a vector."""

    read: int
    written: int
    with_vector: int
    seconds: float


def _body(resp: Any) -> Any:
    """The JSON of a response (elasticsearch-py wraps it in an ``ObjectApiResponse``)."""
    return getattr(resp, "body", resp)


def _is_es(client: Any) -> bool:
    """An elasticsearch-py client (its APIs take ``operations=``/keyword bodies)."""
    return type(client).__module__.startswith("elasticsearch")


def space_vectors(backend: Any, space: str) -> VectorSource:
    """Vectors of vector space ``space`` (its shadow index), fetched by ``_id`` per page (``mget``)."""
    shadow = backend.shadow_index(space)
    field = backend.vector_field

    def lookup(hits: Sequence[Mapping[str, Any]]) -> Mapping[str, list[float]]:
        found = backend._fetch_sources(shadow, [str(h["_id"]) for h in hits], [field])
        out = {}
        for doc_id, hit in found.items():
            vec = (hit.get("_source") or {}).get(field)
            if vec is not None:
                out[doc_id] = vec
        return out

    return lookup


def encoded_vectors(backend: Any, encode: Callable[[list[str]], np.ndarray]) -> VectorSource:
    """Vectors computed per page: ``encode(passages)`` of the backend's passage text (title and text
    fields, :meth:`OpenSearchBackend._to_document`); documents without text get no vector."""

    def compute(hits: Sequence[Mapping[str, Any]]) -> Mapping[str, list[float]]:
        docs = [d for d in (backend._to_document(h) for h in hits) if d is not None]
        if not docs:
            return {}
        vecs = np.asarray(encode([d.full_text() for d in docs]), dtype=np.float32)
        if vecs.shape[0] != len(docs):
            raise BackendError(f"the encoder returned {vecs.shape[0]} vectors for {len(docs)} passages")
        return {d.id: m.vector_list(v) for d, v in zip(docs, vecs)}

    return compute


def _send(client: Any) -> Callable[[list[dict[str, Any]]], Mapping[str, Any]]:
    if _is_es(client):
        return lambda lines: _body(client.bulk(operations=lines))
    return lambda lines: client.bulk(body=lines)


def load_one_pass(
    backend: Any,
    source: str,
    target: str,
    vectors: VectorSource,
    *,
    threads: int = 4,
    chunk_size: int | None = None,
    read_batch: int | None = None,
    progress: ProgressFactory = silent,
) -> LoadResult:
    """Read every document of ``source`` once and index ``_source`` + vector into ``target``.

    Hits keep their ``_routing``. Raises :class:`~rgpl_plugin.errors.BulkWriteError` (every
    refused id) or the request error; the caller deletes ``target`` then.
    """
    t0 = time.perf_counter()
    client = backend.client
    field = backend.vector_field
    chunk_size = chunk_size or backend.bulk_chunk_size
    read_batch = read_batch or chunk_size  # a page read, a chunk written
    counts = {"read": 0, "with_vector": 0}
    total = int(_body(client.count(index=source))["count"])

    def chunks() -> Any:
        for page in batched(backend._iter_hits(source, True, read_batch, {"match_all": {}}), chunk_size):
            vecs = vectors(page)
            docs: list[Doc] = []
            for hit in page:
                doc_id = str(hit["_id"])
                body = dict(hit.get("_source") or {})
                # a source that is an earlier version carries that model's vector: never serve it
                # next to this model's
                body.pop(field, None)
                vec = vecs.get(doc_id)
                if vec is not None:
                    body[field] = vec
                    counts["with_vector"] += 1
                docs.append((doc_id, body, hit.get("_routing")))
            counts["read"] += len(docs)
            yield docs

    with progress(total=total, desc=f"documents -> {target}", unit="doc") as bar:
        report = parallel_index(
            _send(client), target, chunks(), threads=threads, max_retries=backend.max_retries,
            initial_backoff=backend.initial_backoff, max_backoff=backend.max_backoff, on_written=bar.update,
        )
    log.info("wrote %d documents into %s in %d bulk requests (%d items and %d requests retried)",
             report.written, target, report.requests, report.retried_items, report.retried_requests)
    return LoadResult(counts["read"], report.written, counts["with_vector"], time.perf_counter() - t0)


def wait_for_task(client: Any, task_id: str, timeout_s: float, what: str, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll ``GET _tasks/<id>`` until the task completes; its ``response`` (or a BackendError)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = _body(client.tasks.get(task_id=task_id))
        if status.get("completed"):
            if status.get("error"):
                raise BackendError(f"{what} failed (task {task_id}): {str(status['error'])[:500]}")
            return dict(status.get("response") or {})
        if time.monotonic() > deadline:
            raise BackendError(f"{what} still runs after {timeout_s:.0f}s (task {task_id}); it continues on the "
                               f"cluster: GET _tasks/{task_id}, cancel with POST _tasks/{task_id}/_cancel")
        time.sleep(min(poll_s * 2, 5.0) if poll_s else 0)
        poll_s = min(poll_s * 2, 5.0)


def load_by_reindex(
    backend: Any,
    source: str,
    target: str,
    space: str,
    *,
    timeout_s: float = 3600.0,
    progress: ProgressFactory = silent,
) -> LoadResult:
    """``_reindex`` ``source`` into ``target`` (a polled task on OpenSearch), then add the vectors of
    ``space`` with bulk partial updates: two writes per document."""
    t0 = time.perf_counter()
    client = backend.client
    shadow = backend.shadow_index(space)
    copy = {"source": {"index": source}, "dest": {"index": target}}
    if _is_es(client):
        resp = _body(client.options(request_timeout=timeout_s).reindex(body=copy, wait_for_completion=True,
                                                                       refresh=True))
    else:
        # a task, polled: a synchronous call that times out would be re-sent whole by retry_on_timeout
        task = client.reindex(body=copy, params={"wait_for_completion": "false", "slices": "auto", "refresh": "true"})
        resp = wait_for_task(client, task["task"], timeout_s, f"reindex into {target}")
    if resp.get("failures"):
        raise BackendError(f"reindex into {target} reported failures: {str(resp['failures'][:3])[:500]}")
    n_vectors = _body(client.count(index=shadow))["count"]
    field = backend.vector_field
    with progress(total=n_vectors, desc=f"vectors -> {target}", unit="doc") as bar:

        def updates() -> Any:
            for chunk in batched(backend._iter_hits(shadow, [field], 1000, {"match_all": {}}), 500):
                for hit in chunk:
                    yield {"_op_type": "update", "_index": target, "_id": hit["_id"], "doc": {field: hit["_source"][field]}}
                bar.update(len(chunk))

        written = backend._bulk(updates(), f"copying vectors into {target}", target)
    # what the reindex copied from its snapshot of the source (the source may take writes meanwhile)
    n_source = int(resp["total"]) if "total" in resp else int(_body(client.count(index=source))["count"])
    return LoadResult(n_source, n_source, written, time.perf_counter() - t0)
