"""Running the two legs of a hybrid query: side by side in two threads, or in sequence, by measurement.

A hybrid query is a BM25 search and a k-NN search. Both native calls (tantivy's, usearch's) release
the GIL, so on a machine with a free core the dense leg can run in a worker thread while the caller
runs the BM25 leg, and the query costs about the slower leg instead of their sum (bench/RESULTS.md:
0.86 against 0.99 ms at 50k documents, BM25 alone 0.66 ms). With no free core the worker waits for
one and the query gets slower instead (20-31 ms p50 on a saturated 2-core machine), so neither
choice is right everywhere. :class:`LegRunner` measures: it keeps the latencies of the last
``WINDOW`` calls in each mode, runs the mode whose median is lower, and every ``PROBE_EVERY``-th call
runs the other one so a change of load (another process taking the cores, or leaving them) is seen.
A machine with one core always runs in sequence.

The dense leg runs in the worker (not BM25) because it is almost all native code: the BM25 leg's
Python (analysis, query building) runs in the caller meanwhile, and the worker needs the GIL only
to start and to return.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal, TypeVar

__all__ = ["LegMode", "LegRunner"]

A = TypeVar("A")
B = TypeVar("B")
LegMode = Literal["auto", "threads", "sequential"]


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class LegRunner:
    """Runs ``first`` in the calling thread and ``second`` either in a worker thread at the same time
    or after ``first``; ``mode="auto"`` picks by the latencies measured here (module docstring).

    Thread-safe: several threads may call :meth:`run` at once (each call gets its own worker slot).
    """

    WINDOW = 16
    PROBE_EVERY = 32
    WARMUP = 4  # calls in each mode before the medians decide

    def __init__(self, mode: LegMode = "auto", *, cpus: int | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        if mode not in ("auto", "threads", "sequential"):
            raise ValueError(f"unknown leg mode {mode!r}; use 'auto', 'threads' or 'sequential'")
        self.cpus = _usable_cpus() if cpus is None else int(cpus)
        self.mode: LegMode = "sequential" if self.cpus < 2 else mode
        self._clock = clock
        self._seen: dict[str, deque[float]] = {"threads": deque(maxlen=self.WINDOW),
                                                "sequential": deque(maxlen=self.WINDOW)}
        self._calls = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    @property
    def preferred(self) -> str:
        """The mode that :meth:`run` uses for a call that is not a probe: ``threads`` or ``sequential``."""
        if self.mode != "auto":
            return self.mode
        threads, sequential = self._seen["threads"], self._seen["sequential"]
        if len(threads) < self.WARMUP or len(sequential) < self.WARMUP:
            return "threads" if len(threads) <= len(sequential) else "sequential"
        return "threads" if statistics.median(threads) <= statistics.median(sequential) else "sequential"

    def _next_mode(self) -> str:
        with self._lock:
            self._calls += 1
            preferred = self.preferred
            if self.mode == "auto" and self._calls % self.PROBE_EVERY == 0:
                return "sequential" if preferred == "threads" else "threads"
            return preferred

    def run(self, first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
        """``(first(), second())``; an exception from either leg is raised after both have ended."""
        mode = self._next_mode()
        start = self._clock()
        if mode == "sequential":
            out = first(), second()
        else:
            future = self._worker().submit(second)
            try:
                a = first()
            finally:
                b = future.result()  # waits for the worker even when first() raised; re-raises its error
            out = a, b
        self._seen[mode].append(self._clock() - start)
        return out

    def _worker(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.cpus - 1), thread_name_prefix="rgpl-leg")
            return self._pool

    def medians_ms(self) -> dict[str, float | None]:
        """Median latency in ms of the recent calls in each mode (``None``: no call yet), for reports."""
        return {m: (1000 * statistics.median(v) if v else None) for m, v in self._seen.items()}

    def close(self) -> None:
        """Stop the worker thread (a later :meth:`run` starts a new one)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
