"""The usearch HNSW graph over a vector space: building it (resumably, with checkpoints) and searching it.

:func:`build_hnsw` adds the rows of a (memory-mapped) matrix in blocks, key ``i`` = row ``i``. With a
``checkpoint`` (a :class:`Checkpoint`, which :class:`~rgpl_plugin.vectors.VectorStore` gives for the
serving graph), the partial graph is saved now and then: to a temporary file renamed over
``<graph>.partial`` (atomic), with ``<graph>.partial.json`` recording the ``key`` of the vectors, the
graph settings and how many rows are in it. A build killed (even ``kill -9``) and started again with
the same key restores that graph and adds only the rows after it; another key (the vectors changed)
or other settings start from zero. A 10M-vector bf16 graph is several GB, so a checkpoint is written
at most every ``every_s`` seconds (default 10 minutes) and ``min_rows`` rows (default 262,144): a few
percent of the build time on a fast disk, and never for a graph that builds in less than that.

:func:`hnsw_search` returns ``HNSW_OVERSAMPLE * k`` candidates per query rescored exactly from the
float32 matrix, so the ranking is exact within the candidates.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Checkpoint", "build_hnsw", "graph_settings", "hnsw_search", "rescore", "save_atomic", "vectors_key"]

logger = logging.getLogger(__name__)

HNSW_CONNECTIVITY = 16
HNSW_EXPANSION_ADD = 128
HNSW_OVERSAMPLE = 2
ADD_BLOCK = 65_536
CHECKPOINT_EVERY_S = 600.0
CHECKPOINT_MIN_ROWS = 262_144


@dataclass(frozen=True)
class Checkpoint:
    """Where and how often :func:`build_hnsw` saves its partial graph.

    ``path``: the final graph's path (the checkpoint is ``<path>.partial`` and ``<path>.partial.json``);
    ``key``: names the vectors (see :func:`vectors_key`); a checkpoint of other vectors is ignored.
    """

    path: Path
    key: str
    every_s: float = CHECKPOINT_EVERY_S
    min_rows: int = CHECKPOINT_MIN_ROWS

    @property
    def graph(self) -> Path:
        return self.path.with_name(self.path.name + ".partial")

    @property
    def meta(self) -> Path:
        return self.path.with_name(self.path.name + ".partial.json")

    def remove(self) -> None:
        for p in (self.graph, self.meta, _tmp(self.graph), _tmp(self.meta)):
            p.unlink(missing_ok=True)


def _tmp(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def vectors_key(path: str | os.PathLike, matrix: np.ndarray) -> str:
    """A cheap identity of the vectors in ``path`` (an ``.npy``): shape, file size, mtime, inode and
    a hash of 16 evenly spaced rows, so a rewritten or replaced file gets another key."""
    import hashlib

    st = Path(path).stat()
    n = int(matrix.shape[0])
    rows = np.unique(np.linspace(0, max(0, n - 1), num=min(16, n), dtype=np.int64))
    sample = hashlib.sha256(np.ascontiguousarray(matrix[rows], dtype=np.float32).tobytes()).hexdigest()[:16]
    return f"{n}x{int(matrix.shape[1])}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{sample}"


def wanted_settings(ndim: int, dtype: str) -> dict[str, Any]:
    """The settings a graph of ``ndim``-d vectors stored as ``dtype`` is built with (compared with
    :func:`graph_settings` of a saved one)."""
    return {"ndim": int(ndim), "dtype": dtype, "connectivity": HNSW_CONNECTIVITY}


def graph_settings(index: Any) -> tuple[int, dict[str, Any]]:
    """(size, settings) of a usearch graph, comparable to what :func:`build_hnsw` builds."""
    dtype = str(index.dtype).rsplit(".", 1)[-1].lower()  # ScalarKind.BF16 -> "bf16"
    return len(index), {"ndim": int(index.ndim), "dtype": dtype, "connectivity": int(index.connectivity)}


def save_atomic(index: Any, path: Path) -> None:
    """Save ``index`` to ``path`` through a temporary file and a rename (never a half-written graph)."""
    tmp = _tmp(path)
    index.save(str(tmp))
    os.replace(tmp, path)


def _restore(checkpoint: Checkpoint, want: dict[str, Any], n: int, usearch_index: Any) -> Any:
    """The checkpointed graph when it belongs to these vectors and settings, else None."""
    if not (checkpoint.meta.exists() and checkpoint.graph.exists()):
        return None
    try:
        meta = json.loads(checkpoint.meta.read_text())
        if meta.get("key") != checkpoint.key or meta.get("settings") != want:
            logger.info("the HNSW checkpoint %s is of other vectors or settings; building from zero", checkpoint.graph)
            return None
        index = usearch_index.Index.restore(str(checkpoint.graph))
    except (RuntimeError, ValueError, OSError) as exc:  # a damaged checkpoint: build from zero, don't fail
        logger.warning("could not load the HNSW checkpoint %s (%s); building from zero", checkpoint.graph, exc)
        return None
    if index is None:  # usearch's restore gives None for a file whose metadata it cannot read
        logger.warning("could not load the HNSW checkpoint %s; building from zero", checkpoint.graph)
        return None
    size, settings = graph_settings(index)
    # blocks are added whole before a save, so the graph holds the rows 0..size-1 (size, not the json's
    # count: a kill between the graph's rename and the json's leaves the newer graph with the older json)
    if settings != want or size > n or (size and not index.contains(size - 1)):
        logger.warning("the HNSW checkpoint %s does not match its record; building from zero", checkpoint.graph)
        return None
    return index


def build_hnsw(
    matrix: np.ndarray,
    *,
    dtype: str,
    expansion_search: int,
    usearch_index: Any = None,
    checkpoint: Checkpoint | None = None,
    block: int | None = None,
) -> Any:
    """A usearch inner-product graph over the rows of ``matrix`` (key ``i`` = row ``i``), added in blocks
    so that a memory-mapped matrix is read a block at a time; resumable with a ``checkpoint`` (module
    docstring). ``usearch_index``: the imported ``usearch.index`` module (default:
    :func:`rgpl_adapt.devices.require_usearch`). The caller saves the finished graph, then calls
    :meth:`Checkpoint.remove`.
    """
    if usearch_index is None:
        from rgpl_adapt.devices import require_usearch

        usearch_index = require_usearch()
    n, block = int(matrix.shape[0]), block or ADD_BLOCK
    want = wanted_settings(matrix.shape[1], dtype)
    index = _restore(checkpoint, want, n, usearch_index) if checkpoint is not None else None
    if index is None:
        index = usearch_index.Index(ndim=int(matrix.shape[1]), metric="ip", dtype=dtype,
                                    connectivity=HNSW_CONNECTIVITY, expansion_add=HNSW_EXPANSION_ADD,
                                    expansion_search=expansion_search)
        start = 0
    else:
        index.expansion_add, index.expansion_search = HNSW_EXPANSION_ADD, expansion_search
        start = len(index)
        logger.info("resuming the HNSW build at row %d of %d from %s", start, n, checkpoint.graph)
    saved_at, saved_rows = time.monotonic(), start
    for r0 in range(start, n, block):
        rows = np.ascontiguousarray(matrix[r0 : r0 + block], dtype=np.float32)
        index.add(np.arange(r0, r0 + len(rows), dtype=np.uint64), rows, threads=0)
        done = r0 + len(rows)
        if (
            checkpoint is not None and done < n and done - saved_rows >= checkpoint.min_rows
            and time.monotonic() - saved_at >= checkpoint.every_s
        ):
            save_atomic(index, checkpoint.graph)
            tmp = _tmp(checkpoint.meta)
            tmp.write_text(json.dumps({"key": checkpoint.key, "settings": want, "rows": done}))
            os.replace(tmp, checkpoint.meta)
            saved_at, saved_rows = time.monotonic(), done
            logger.info("HNSW checkpoint: %d of %d rows in %s", done, n, checkpoint.graph)
    return index


def rescore(matrix: np.ndarray, query: np.ndarray, keys: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The best ``k`` of the HNSW candidate rows ``keys`` by their exact float32 inner product with
    ``query``, best first, ties to the lower row."""
    rows = np.sort(np.asarray(keys, dtype=np.int64))  # ascending: ordered reads of a memory map
    if rows.size == 0:
        return [], []
    scores = np.asarray(matrix[rows] @ query, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")[:k]  # rows ascending, so stable ties go to the lower row
    return rows[order].tolist(), scores[order].tolist()


def hnsw_search(
    index: Any, matrix: np.ndarray, queries: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` of a usearch index for each query (``HNSW_OVERSAMPLE * k`` candidates rescored exactly
    from ``matrix``): ``(rows, scores, counts)``, padded to ``k`` columns (``counts[i]`` valid), best first,
    ties to the lower row."""
    # one thread per query, at most the cores: a single query gains nothing from a pool of threads
    # (usearch starts its threads on every call), and idle ones slow the BM25 leg of a hybrid query
    matches = index.search(queries, HNSW_OVERSAMPLE * k, threads=min(len(queries), os.cpu_count() or 1))
    if hasattr(matches, "counts"):  # BatchMatches: padded (n, k) arrays
        rows = np.asarray(matches.keys, dtype=np.int64).reshape(len(queries), -1)
        counts = np.asarray(matches.counts).reshape(-1)
    else:  # a single query gives Matches with only the valid keys
        rows = np.asarray(matches.keys, dtype=np.int64).reshape(1, -1)
        counts = np.array([rows.shape[1]])
    valid = np.arange(rows.shape[1])[None, :] < counts[:, None]
    rows = np.where(valid, rows, 0)
    candidates = np.asarray(matrix[rows.ravel()]).reshape(*rows.shape, -1)
    scores = np.einsum("qkd,qd->qk", candidates, queries)  # exact scores for the candidates
    scores = np.where(valid, scores, -np.inf).astype(np.float32)
    order = np.lexsort((rows, -scores), axis=1)
    order = order[:, :k]  # the HNSW_OVERSAMPLE * k candidates, rescored, cut to k
    counts = np.minimum(counts, k)
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1), counts
