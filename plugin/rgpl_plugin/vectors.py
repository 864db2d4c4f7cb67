"""Named vector spaces on disk: exact inner-product top-k, or a usearch HNSW index when large.

Layout of one space under ``<root>/<space>/``::

    ids.json            the document id of each row of vectors.npy
    vectors.npy         float32 matrix, one row per document
    seg-000001.npy      vectors written by a later put() and not yet merged
    seg-000001.ids.json
    hnsw.usearch        HNSW graph over vectors.npy (only above ``hnsw_threshold`` rows)
    rows.json           instead of ids.json for a space *adopted* from a file whose row i is the
                        document at ord i of the store (:meth:`VectorStore.adopt`): ids are then
                        looked up by ord for the hits only, so no id list of the corpus is held

``put`` only appends a segment (cheap, so the pipeline can write in many batches); the first
search afterwards merges segments into ``vectors.npy`` (a later vector replaces an earlier one
with the same id, in place) and drops a stale HNSW graph.

Search is exact for spaces of at most ``hnsw_threshold`` vectors: a chunked matrix product and
``argpartition``, no Python loop over vectors. Above it a usearch HNSW index (metric ``ip``) is
built once and saved next to the vectors. The graph stores bf16 copies of the vectors (half the
memory traffic of f32 per distance, exact magnitudes unlike usearch's i8, which assumes unit
vectors); it returns ``HNSW_OVERSAMPLE * k`` candidates whose scores are recomputed exactly from the
float32 matrix, so the ranking is exact within the candidates. On 50k clustered 384-d vectors
recall@10 against exact search stayed at 0.998 while the one-query p50 fell from 1.01 ms (f32 graph,
batch call) to 0.39-0.46 ms at a higher machine load (bench/RESULTS.md). One query goes straight to
``Index.search(vector)``, without the batch bookkeeping. A graph saved with other settings (dtype,
connectivity) is rebuilt. The graph code lives in :mod:`rgpl_plugin.hnsw`; its build checkpoints the
partial graph (``hnsw.usearch.partial`` + ``.partial.json``), so a build killed mid-way continues.
The saved graph is searched memory-mapped (``Index.restore(view=True)``): its pages are file cache the
kernel can drop, not process memory (200k x 384-d bf16: 11 MB anonymous against 196 MB when loaded).
When usearch is not installed, search **falls back to exact** with a logged warning (exact is
always correct, just slower) instead of failing a pipeline run; install ``rgpl-adapt[hnsw]``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rgpl_plugin.base import Hit
from rgpl_plugin.hnsw import (
    HNSW_CONNECTIVITY,
    HNSW_OVERSAMPLE,
    CHECKPOINT_EVERY_S,
    CHECKPOINT_MIN_ROWS,
    Checkpoint,
    build_hnsw,
    graph_settings,
    hnsw_search,
    rescore,
    save_atomic,
    vectors_key,
    wanted_settings,
)

logger = logging.getLogger(__name__)

DEFAULT_HNSW_THRESHOLD = 200_000
HNSW_EXPANSION_SEARCH = 128
HNSW_DTYPE = "bf16"
__all__ = ["HNSW_CONNECTIVITY", "HNSW_OVERSAMPLE", "VectorStore", "build_hnsw",
           "exact_topk", "hnsw_search"]
_SPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_CHUNK_ROWS = 32_768
_QUERY_BATCH = 1_024


def check_space_name(space: str) -> str:
    """Return ``space`` if it is a safe folder name, else raise ValueError saying what is allowed."""
    if not isinstance(space, str) or not _SPACE_NAME.match(space) or ".." in space:
        raise ValueError(
            f"invalid vector space name {space!r}: use letters, digits, '.', '_' or '-' "
            "(at most 128 characters, starting with a letter or digit)"
        )
    return space


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def _ids_path(segment: Path) -> Path:
    """``seg-000001.npy`` -> ``seg-000001.ids.json``."""
    return segment.with_name(segment.name[: -len(".npy")] + ".ids.json")


def _atomic_write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def exact_topk(
    matrix: np.ndarray, queries: np.ndarray, k: int, *, chunk_rows: int = _CHUNK_ROWS
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``matrix`` by inner product for each query.

    Returns ``(rows, scores)``, both shaped ``(n_queries, min(k, n_rows))``, best first; ties
    go to the lower row. ``matrix`` may be a memory map: it is read ``chunk_rows`` rows at a time
    and each query batch keeps a running top-k, so memory is bounded by the chunk and the batch
    (``_QUERY_BATCH x (chunk_rows + k)`` scores), whatever the number of rows.
    """
    n = matrix.shape[0]
    kk = min(k, n)
    q_total = queries.shape[0]
    rows_out = np.empty((q_total, kk), dtype=np.int64)
    scores_out = np.empty((q_total, kk), dtype=np.float32)
    for q0 in range(0, q_total, _QUERY_BATCH):
        q = queries[q0 : q0 + _QUERY_BATCH]
        best_rows = np.empty((len(q), 0), dtype=np.int64)
        best_scores = np.empty((len(q), 0), dtype=np.float32)
        for r0 in range(0, n, chunk_rows):
            s = q @ np.asarray(matrix[r0 : r0 + chunk_rows]).T
            if s.shape[1] > kk:
                idx = np.argpartition(s, s.shape[1] - kk, axis=1)[:, -kk:]  # no negated copy
                s = np.take_along_axis(s, idx, axis=1)
            else:
                idx = np.broadcast_to(np.arange(s.shape[1]), s.shape)
            rows = np.concatenate([best_rows, idx + r0], axis=1)
            scores = np.concatenate([best_scores, s.astype(np.float32, copy=False)], axis=1)
            order = np.lexsort((rows, -scores), axis=1)[:, :kk]  # the running top-k, ties to the lower row
            best_rows = np.take_along_axis(rows, order, axis=1)
            best_scores = np.take_along_axis(scores, order, axis=1)
        rows_out[q0 : q0 + len(q)] = best_rows
        scores_out[q0 : q0 + len(q)] = best_scores
    return rows_out, scores_out


class _RowIds:
    """The ids of an adopted space (row i = store ord i): looked up on demand, never held in memory."""

    def __init__(self, count: int, resolve: Callable[[Sequence[int]], list[str]]) -> None:
        self.count = count
        self.many = resolve

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, row: int) -> str:
        return self.many([row])[0]


@dataclass
class _Loaded:
    ids: list[str] | _RowIds
    matrix: np.ndarray
    hnsw: Any = None

    def ids_of(self, rows: Sequence[int]) -> list[str]:
        if isinstance(self.ids, _RowIds):
            return self.ids.many(rows)
        return [self.ids[r] for r in rows]


class VectorStore:
    """All vector spaces of one index folder (``<index>/vectors``)."""

    def __init__(
        self,
        root: Path,
        *,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        resolve_rows: Callable[[Sequence[int]], list[str]] | None = None,
        checkpoint_every_s: float = CHECKPOINT_EVERY_S,
        checkpoint_min_rows: int = CHECKPOINT_MIN_ROWS,
    ) -> None:
        """``resolve_rows`` maps store ords to ids; it enables :meth:`adopt` (the embedded backend passes it).
        ``checkpoint_*``: how often an HNSW build saves its partial graph (:class:`rgpl_plugin.hnsw.Checkpoint`)."""
        self.root = Path(root)
        self.checkpoint_every_s, self.checkpoint_min_rows = checkpoint_every_s, checkpoint_min_rows
        self.hnsw_threshold = hnsw_threshold
        self.resolve_rows = resolve_rows
        self._cache: dict[str, _Loaded] = {}
        self._warned_no_usearch = False

    # ----------------------------------------------------------------- spaces
    def spaces(self) -> list[str]:
        """Names of the existing spaces, sorted."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _SPACE_NAME.match(p.name))

    def has(self, space: str) -> bool:
        return (self.root / check_space_name(space)).is_dir()

    def drop(self, space: str) -> None:
        """Delete a space; a no-op when it does not exist."""
        folder = self.root / check_space_name(space)
        self._cache.pop(space, None)
        if folder.is_dir():
            shutil.rmtree(folder)

    def describe(self, space: str) -> dict[str, int]:
        """``{"dim": ..., "count": ...}`` of a space (merges pending segments)."""
        loaded = self._load(space)
        return {"dim": int(loaded.matrix.shape[1]), "count": len(loaded.ids)}

    def matrix(self, space: str) -> tuple[list[str], np.ndarray]:
        """``(ids, vectors)`` of a space (pending segments merged): row ``i`` of ``vectors`` is ``ids[i]``.

        Large spaces come back as a read-only memory map; callers that search them exactly
        (evaluation, :mod:`rgpl_adapt.neighbours`) read them in chunks. Do not modify either.
        """
        loaded = self._load(space)
        return loaded.ids, loaded.matrix

    # ------------------------------------------------------------------ write
    def put(self, space: str, ids: list[str], vectors: np.ndarray) -> None:
        """Append (or replace, by id) vectors; a later call wins for a repeated id."""
        folder = self.root / check_space_name(space)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be a 2-d array (n, dim), got shape {vectors.shape}")
        if len(ids) != vectors.shape[0]:
            raise ValueError(f"got {len(ids)} ids for {vectors.shape[0]} vectors; they must match")
        if not np.isfinite(vectors).all():
            raise ValueError("vectors contain NaN or infinity; check the encoder output")
        if len(ids) == 0:
            return
        dim = self._dim_on_disk(folder)
        if dim is not None and dim != vectors.shape[1]:
            raise ValueError(
                f"space {space!r} holds {dim}-d vectors, got {vectors.shape[1]}-d; "
                "drop_vectors() it first or use another space name"
            )
        folder.mkdir(parents=True, exist_ok=True)
        n = 1 + max((int(p.name[4:10]) for p in folder.glob("seg-*.npy")), default=0)
        _atomic_write_json(folder / f"seg-{n:06d}.ids.json", [str(i) for i in ids])
        _atomic_save_npy(folder / f"seg-{n:06d}.npy", vectors)
        self._cache.pop(space, None)

    def adopt(self, space: str, vectors_file: str | os.PathLike) -> int:
        """Make a finished ``(n, dim)`` float32 ``.npy`` whose row i is the store's document at ord i the
        whole of ``space`` (replacing it); returns n.

        The file is copied in blocks (memory stays flat; the source may be a memory map still in use)
        and the ids are not written: hits are resolved by ord through ``resolve_rows``.
        """
        if self.resolve_rows is None:
            raise ValueError("this VectorStore cannot adopt: it was opened without resolve_rows (a document store)")
        src = np.load(vectors_file, mmap_mode="r")
        if src.ndim != 2 or src.dtype != np.float32:
            raise ValueError(f"{vectors_file} must hold a 2-d float32 matrix, got {src.dtype} {src.shape}")
        n = int(src.shape[0])
        del src
        self.drop(space)
        folder = self.root / check_space_name(space)
        folder.mkdir(parents=True)
        tmp = folder / "vectors.npy.tmp"
        shutil.copyfile(vectors_file, tmp)
        os.replace(tmp, folder / "vectors.npy")
        _atomic_write_json(folder / "rows.json", {"rows": "ord", "count": n})
        return n

    def _dim_on_disk(self, folder: Path) -> int | None:
        for path in [folder / "vectors.npy", *sorted(folder.glob("seg-*.npy"))]:
            if path.exists():
                return int(np.load(path, mmap_mode="r").shape[1])
        return None

    def _merge(self, folder: Path) -> None:
        """Fold pending segments into ids.json/vectors.npy, replacing rows of repeated ids in place."""
        segments = sorted(folder.glob("seg-*.npy"))
        if not segments:
            return
        if (folder / "vectors.npy").exists():
            ids: list[str] = self._ids_on_disk(folder)
            base = np.load(folder / "vectors.npy", mmap_mode="r")
        else:
            ids, base = [], None
        row_of = {doc_id: i for i, doc_id in enumerate(ids)}
        plan = []  # per segment: (rows of the segment to keep, target rows in the merged matrix)
        for seg in segments:
            last: dict[str, int] = {}
            for j, doc_id in enumerate(json.loads(_ids_path(seg).read_text())):
                last[doc_id] = j  # a repeated id inside one call: the later vector wins
            src, dst = np.empty(len(last), np.int64), np.empty(len(last), np.int64)
            for n, (doc_id, j) in enumerate(last.items()):
                row = row_of.get(doc_id)
                if row is None:
                    row = row_of[doc_id] = len(ids)
                    ids.append(doc_id)
                src[n], dst[n] = j, row
            plan.append((src, dst))
        dim = np.load(segments[0], mmap_mode="r").shape[1]
        matrix = np.empty((len(ids), dim), np.float32)
        if base is not None:
            matrix[: base.shape[0]] = base
        for seg, (src, dst) in zip(segments, plan):
            matrix[dst] = np.load(seg)[src]
        del base
        _atomic_save_npy(folder / "vectors.npy", matrix)
        _atomic_write_json(folder / "ids.json", ids)
        (folder / "rows.json").unlink(missing_ok=True)  # an adopted space written to again: ids are now listed
        for seg in segments:
            seg.unlink()
            _ids_path(seg).unlink()
        (folder / "hnsw.usearch").unlink(missing_ok=True)
        Checkpoint(folder / "hnsw.usearch", "").remove()

    def _ids_on_disk(self, folder: Path) -> list[str]:
        rows = folder / "rows.json"
        if rows.exists() and not (folder / "ids.json").exists():
            if self.resolve_rows is None:
                raise ValueError(f"{folder} is an adopted space: open it with resolve_rows (its document store)")
            return self.resolve_rows(range(json.loads(rows.read_text())["count"]))
        return json.loads((folder / "ids.json").read_text())

    # ----------------------------------------------------------------- search
    def _load(self, space: str) -> _Loaded:
        if space in self._cache:
            return self._cache[space]
        folder = self.root / check_space_name(space)
        if not folder.is_dir():
            raise KeyError(f"vector space {space!r} does not exist; put_vectors() into it first")
        self._merge(folder)
        rows = folder / "rows.json"
        if rows.exists():
            if self.resolve_rows is None:
                raise ValueError(f"{folder} is an adopted space: open it with resolve_rows (its document store)")
            ids: list[str] | _RowIds = _RowIds(json.loads(rows.read_text())["count"], self.resolve_rows)
        else:
            ids = json.loads((folder / "ids.json").read_text())
        # exact spaces are scanned whole on every search: keep them in RAM; HNSW spaces only
        # read candidate rows for rescoring, so a memory map is enough
        mmap_mode = "r" if len(ids) > self.hnsw_threshold else None
        # np.asarray: a plain ndarray view of the map (indexing a np.memmap costs a Python-level wrapper)
        loaded = _Loaded(ids=ids, matrix=np.asarray(np.load(folder / "vectors.npy", mmap_mode=mmap_mode)))
        self._cache[space] = loaded
        return loaded

    def _hnsw(self, space: str, loaded: _Loaded) -> Any:
        """The space's HNSW index (loaded or built and saved), or None to search exactly."""
        if loaded.hnsw is not None:
            return loaded.hnsw
        try:
            from rgpl_adapt.devices import require_usearch

            usearch_index = require_usearch()  # onnxruntime first: the other order segfaults
        except ImportError as exc:
            if not self._warned_no_usearch:
                logger.warning("%s; searching %d vectors exactly instead (slower)", exc, len(loaded.ids))
                self._warned_no_usearch = True
            return None
        path = self.root / space / "hnsw.usearch"
        index = None
        want = wanted_settings(loaded.matrix.shape[1], HNSW_DTYPE)
        if path.exists():
            try:
                index = usearch_index.Index.restore(str(path), view=True)  # memory-mapped, not read into RAM
            except (RuntimeError, ValueError, OSError) as exc:  # a damaged file: rebuild, don't fail
                logger.warning("could not load %s (%s); rebuilding it", path, exc)
                index = None
            if index is not None and graph_settings(index) != (len(loaded.ids), want):
                logger.info("the saved HNSW graph of space %r has other settings; rebuilding it", space)
                index = None
        if index is None:  # resumable: a killed build continues from its last checkpoint (rgpl_plugin.hnsw)
            logger.info("building HNSW index for space %r (%d vectors)", space, len(loaded.ids))
            checkpoint = Checkpoint(path, vectors_key(self.root / space / "vectors.npy", loaded.matrix),
                                    every_s=self.checkpoint_every_s, min_rows=self.checkpoint_min_rows)
            index = build_hnsw(loaded.matrix, dtype=HNSW_DTYPE, expansion_search=HNSW_EXPANSION_SEARCH,
                               usearch_index=usearch_index, checkpoint=checkpoint)
            save_atomic(index, path)
            checkpoint.remove()
            del index  # the built graph's memory goes; serving maps the saved file instead
            index = usearch_index.Index.restore(str(path), view=True)
        index.expansion_search = HNSW_EXPANSION_SEARCH
        loaded.hnsw = index
        return index

    def search(self, space: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` inner-product neighbours in ``space`` for each row of ``queries``."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        loaded = self._load(space)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        dim = loaded.matrix.shape[1]
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(f"queries must have shape (n, {dim}) for space {space!r}, got {queries.shape}")
        if queries.shape[0] == 0 or not loaded.ids:
            return [[] for _ in range(queries.shape[0])]
        index = self._hnsw(space, loaded) if len(loaded.ids) > self.hnsw_threshold else None
        if index is None:
            rows, scores = exact_topk(loaded.matrix, queries, k)
            counts = np.full(len(queries), rows.shape[1])
        elif queries.shape[0] == 1:  # serving: one query, no batch bookkeeping
            kk = min(k, len(loaded.ids))
            keys = index.search(queries[0], HNSW_OVERSAMPLE * kk).keys
            one_rows, one_scores = rescore(loaded.matrix, queries[0], keys, kk)
            return [[Hit(name, s) for name, s in zip(loaded.ids_of(one_rows), one_scores)]]
        else:
            rows, scores, counts = hnsw_search(index, loaded.matrix, queries, min(k, len(loaded.ids)))
        flat = [r for i in range(len(queries)) for r in rows[i, : counts[i]].tolist()]
        names = iter(loaded.ids_of(flat))  # one lookup for every hit of the batch
        return [
            [Hit(next(names), float(s)) for s in scores[i, : counts[i]].tolist()]
            for i in range(len(queries))
        ]
