"""Dense top-k on this machine for mining, remining and evaluation: exact, or HNSW with measured recall.

The references search exactly (GPL's miner and R-GPL's remining take the true top-k); an
approximate index is only worth it when exact search does not fit the time available. So:

* **Evaluation is always exact** (:func:`exact_search`): a chunked matrix product over the
  vectors (a memory map for large spaces) with a running top-k per query batch
  (:func:`rgpl_plugin.vectors.exact_topk`), memory bounded whatever the corpus size. Metrics are
  never computed on approximate neighbours.
* **Mining and remining** (:func:`plan_search`) estimate the cost of exact search from a small
  timed probe on the real vectors (query-vector products per second of this machine, as the
  search below runs them) and compare it with a time budget (``MiningConfig.exact_budget_s``,
  ``RemineConfig.exact_budget_s``). Within the budget: exact. Beyond it: a usearch HNSW graph,
  whose recall@k against exact search is measured on a sample of ``RECALL_SAMPLE`` queries; below
  ``RECALL_TARGET`` the search expansion (``ef``) doubles up to ``EXPANSIONS[-1]``, and if the
  target is still missed, or usearch is not installed, the search runs exactly anyway. The choice,
  the estimate and the measured recall are a :class:`SearchReport`, logged and written to the
  stage's manifest (``negatives``: ``search``) and to each remining round's ``info.json``.
  Mining and remining search with torch (:class:`rgpl_adapt.torch_topk.TorchTopk`): on the
  pipeline's CUDA device when it has one, else on the CPU, where torch's top-k is 1.9-4.9x faster
  than numpy's; the probe times that search. Evaluation keeps numpy's :func:`exact_topk`.

Spaces that live in a cluster (``miner="cluster"``) are searched by the engine's own k-NN (method
``backend``): we do not run brute-force scoring of every query on the user's cluster, but
:func:`measure_backend` measures the engine's recall@k against its exact ``script_score`` search on a
sample of ``RECALL_SAMPLE`` queries and records it; below ``RECALL_TARGET`` it warns and names
``--miner local`` (this module's search on the training machine) as the exact alternative.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rgpl_plugin.base import Hit
from rgpl_plugin.vectors import build_hnsw, exact_topk, hnsw_search

log = logging.getLogger(__name__)

DEFAULT_EXACT_BUDGET_S = 600.0  # per search (one retriever's mining, one remining round)
RECALL_TARGET = 0.99
RECALL_SAMPLE = 200
EXPANSIONS = (128, 256, 512, 1024)  # HNSW ef tried in turn until the sample's recall@k reaches the target
PROBE_ROWS = 16_384  # the timed probe: a block as large as a real search's (half a chunk) ...
PROBE_QUERIES = 512  # ... and half a query batch, so that cache effects are the real ones
SEARCH_OVERHEAD = 1.2  # the estimate's margin over the probe (top-k merging, page-cache misses)


@dataclass(frozen=True)
class SearchReport:
    """How one set of queries was searched, and why."""

    method: str  # "exact", "hnsw" or "backend" (the cluster's own k-NN)
    queries: int
    vectors: int
    k: int
    estimated_exact_s: float | None = None
    budget_s: float | None = None
    recall_at_k: float | None = None  # HNSW only: measured against exact search on a sample
    recall_sample: int = 0
    expansion_search: int | None = None
    hnsw_seconds: float | None = None  # building the graph and checking its recall (not in the estimate)
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}

    def summary(self) -> str:
        text = f"{self.method} search of {self.queries} queries in {self.vectors} vectors (k={self.k})"
        if self.recall_at_k is not None:
            text += (f", recall@{self.k} {self.recall_at_k:.4f} on {self.recall_sample} queries"
                     f" (ef {self.expansion_search})")
        return f"{text}: {self.reason}" if self.reason else text


def _hits(
    ids: Sequence[str], rows: np.ndarray, scores: np.ndarray, counts: np.ndarray | None = None
) -> list[list[Hit]]:
    valid = [rows.shape[1] if counts is None else int(counts[i]) for i in range(rows.shape[0])]
    flat = [r for i, n in enumerate(valid) for r in rows[i, :n].tolist()]
    many = getattr(ids, "many", None)  # an adopted space's ids live in the document store: one lookup
    names = iter(many(flat) if many is not None else [ids[r] for r in flat])
    return [[Hit(next(names), float(s)) for s in scores[i, :n].tolist()] for i, n in enumerate(valid)]


TopK = Callable[[np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]
"""``(queries, k) -> (rows, scores)``: an exact top-k over one matrix (numpy's, or a torch device's)."""


def exact_search(
    ids: Sequence[str], matrix: np.ndarray, queries: np.ndarray, k: int, *, topk: TopK | None = None
) -> list[list[Hit]]:
    """Exact top-``k`` inner-product hits of each query row in ``matrix`` (row ``i`` is ``ids[i]``);
    ``topk`` runs the search elsewhere (:class:`rgpl_adapt.torch_topk.TorchTopk`)."""
    if len(ids) != matrix.shape[0]:
        raise ValueError(f"got {len(ids)} ids for {matrix.shape[0]} vectors; they must match")
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if not len(ids) or not len(queries):
        return [[] for _ in range(len(queries))]
    rows, scores = topk(queries, k) if topk is not None else exact_topk(matrix, queries, k)
    return _hits(ids, rows, scores)


def device_topk(matrix: np.ndarray, device: str | None) -> TopK:
    """The exact search of ``matrix`` on ``device``: torch's, on that CUDA device, else on the CPU.

    On the CPU too torch's top-k beats numpy's (``argpartition`` and ``lexsort``): bench/topk_speed.py,
    same neighbours, 4.9x at 200k x 32-d, 2.8x at 50k x 384-d, 3.1x / 1.9x on memory maps of
    1M x 32-d / 200k x 384-d.
    """
    from rgpl_adapt.torch_topk import TorchTopk

    return TorchTopk(matrix, str(device) if device and str(device).startswith("cuda") else "cpu")


def probe_rate(matrix: np.ndarray, queries: np.ndarray, k: int, topk: Any = None) -> float:
    """Query-vector inner products per second of exact search here, timed on the real data.

    A warm-up call first (page faults, thread start-up; on a GPU it moves the vectors there), then
    one timed search of :data:`PROBE_QUERIES` queries: on the CPU over a block of :data:`PROBE_ROWS`
    rows, shaped like a real search step (small blocks fit the CPU caches and overestimate the
    speed); on a GPU over all rows with ``topk``, the search of ``matrix`` that follows (seconds at
    most, and it keeps the vectors it moved there).
    """
    on_gpu = topk is not None and topk.device.type == "cuda"
    rows = int(matrix.shape[0]) if on_gpu else min(PROBE_ROWS, int(matrix.shape[0]))
    if not on_gpu:
        topk = device_topk(np.asarray(matrix[:rows]), None)
    sample = np.ascontiguousarray(queries[:PROBE_QUERIES], dtype=np.float32)
    topk(sample[:32], k)
    t0 = time.perf_counter()
    topk(sample, k)
    return len(sample) * rows / max(time.perf_counter() - t0, 1e-6)


def recall_at_k(approx: Sequence[Sequence[Hit]], exact: Sequence[Sequence[Hit]]) -> float:
    """Mean share of each query's exact top-k ids that the approximate search also returned."""
    shares = [len({h.doc_id for h in a} & {h.doc_id for h in e}) / len(e) for a, e in zip(approx, exact) if e]
    return float(np.mean(shares)) if shares else 1.0


class Neighbours:
    """A prepared search of one vector space: call :meth:`search` with batches of queries."""

    def __init__(
        self, ids: Sequence[str], matrix: np.ndarray, k: int, report: SearchReport, index: Any = None,
        topk: TopK | None = None,
    ) -> None:
        self.ids, self.matrix, self.k, self.report, self._index = ids, matrix, k, report, index
        self.topk = topk

    def search(self, queries: np.ndarray) -> list[list[Hit]]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if self._index is None:
            return exact_search(self.ids, self.matrix, queries, self.k, topk=self.topk)
        k = min(self.k, len(self.ids))
        rows, scores, counts = hnsw_search(self._index, self.matrix, queries, k)
        return _hits(self.ids, rows, scores, counts)


def _build_hnsw(matrix: np.ndarray) -> Any:
    return build_hnsw(matrix, dtype="f32", expansion_search=EXPANSIONS[0])  # f32: recall is measured on it


def plan_search(
    ids: Sequence[str],
    matrix: np.ndarray,
    queries: np.ndarray,
    k: int,
    *,
    budget_s: float = DEFAULT_EXACT_BUDGET_S,
    recall_target: float = RECALL_TARGET,
    sample: int = RECALL_SAMPLE,
    seed: int = 0,
    rate: float | None = None,
    device: str | None = None,
) -> Neighbours:
    """Choose exact or HNSW search of ``queries`` in ``matrix`` for a time budget (module docstring).

    ``rate`` (inner products per second) skips the timed probe; tests pass it to force a decision.
    ``device``: a CUDA device runs (and times) exact search there.
    """
    if budget_s < 0:
        raise ValueError(f"exact_budget_s must be >= 0, got {budget_s}")
    queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    n_q, n_v = len(queries), int(matrix.shape[0])
    base = dict(queries=n_q, vectors=n_v, k=k, budget_s=budget_s)
    if not n_q or not n_v:
        return Neighbours(ids, matrix, k, SearchReport("exact", **base, reason="nothing to search"))
    topk = device_topk(matrix, device)
    on_gpu = topk.device.type == "cuda"
    rate = rate if rate is not None else probe_rate(matrix, queries, k, topk)
    estimate = round(SEARCH_OVERHEAD * n_q * n_v / rate, 3)
    base["estimated_exact_s"] = estimate
    where = f" on {topk.device}" if on_gpu else ""
    if estimate <= budget_s:
        fits = f"exact{where} fits the budget ({estimate:.1f} s <= {budget_s:g} s)"
        report = SearchReport("exact", **base, reason=fits)
        return Neighbours(ids, matrix, k, report, topk=topk)
    over = f"exact{where} estimated at {estimate:.0f} s > budget {budget_s:g} s"
    t0 = time.perf_counter()
    try:
        index = _build_hnsw(matrix)
    except ImportError as exc:
        log.warning("%s; searching exactly although %s", exc, over)
        report = SearchReport("exact", **base, reason=f"{over}, but usearch is not installed")
        return Neighbours(ids, matrix, k, report, topk=topk)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n_q, size=min(sample, n_q), replace=False))
    truth = exact_search(ids, matrix, queries[picked], k, topk=topk)
    hnsw = Neighbours(ids, matrix, k, SearchReport("hnsw", **base), index)
    recall, tried = 0.0, []
    for ef in EXPANSIONS:
        index.expansion_search = ef
        recall = recall_at_k(hnsw.search(queries[picked]), truth)
        tried.append(f"ef {ef}: {recall:.4f}")
        if recall >= recall_target:
            hnsw.report = SearchReport(
                "hnsw", **base, recall_at_k=round(recall, 4), recall_sample=len(picked), expansion_search=ef,
                hnsw_seconds=round(time.perf_counter() - t0, 3), reason=over,
            )
            log.info("%s", hnsw.report.summary())
            return hnsw
    report = SearchReport("exact", **base, recall_at_k=round(recall, 4), recall_sample=len(picked),
                          expansion_search=EXPANSIONS[-1], hnsw_seconds=round(time.perf_counter() - t0, 3),
                          reason=(f"{over}, but HNSW recall@{k} stayed below {recall_target} "
                                  f"({'; '.join(tried)}); fell back to exact"))
    log.warning("%s", report.summary())
    return Neighbours(ids, matrix, k, report, topk=topk)


def measure_backend(
    backend: Any, space: str, queries: np.ndarray, k: int, *, recall_target: float = RECALL_TARGET,
    sample: int = RECALL_SAMPLE, seed: int = 0,
) -> SearchReport:
    """The report of a space searched by the backend's own k-NN, with its recall@k measured on a sample
    against the backend's exact search (``knn_search(..., exact=True)``) where it has one."""
    base = dict(queries=len(queries), vectors=backend.count(), k=k)
    what = f"{getattr(backend, 'name', 'backend')} k-NN (the engine's own index)"
    if not len(queries):
        return SearchReport("backend", **base, reason=what)
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(queries), size=min(sample, len(queries)), replace=False))
    try:
        truth = backend.knn_search(space, queries[picked], k, exact=True)
    except TypeError:  # a backend without exact search
        return SearchReport("backend", **base, reason=f"{what}; recall not measured (no exact search)")
    except RuntimeError as exc:  # BackendError: the engine refused the exact query; mining goes on
        log.warning("could not measure the recall of %s: %s", what, exc)
        return SearchReport("backend", **base, reason=f"{what}; recall not measured ({type(exc).__name__})")
    recall = recall_at_k(backend.knn_search(space, queries[picked], k), truth)
    measured = dict(recall_at_k=round(recall, 4), recall_sample=len(picked))
    report = SearchReport("backend", **base, **measured, reason=what)
    if recall < recall_target:
        low = (f"{what}; recall@{k} below {recall_target}: --miner local searches exactly "
               "(or by HNSW with a recall check) on this machine")
        report = SearchReport("backend", **base, **measured, reason=low)
        log.warning("%s", report.summary())
    else:
        log.info("%s", report.summary())
    return report
