"""Exact top-k by inner product with torch: mining and remining search on the GPU that encoded, or the CPU.

:func:`rgpl_plugin.vectors.exact_topk` runs numpy on the CPU. On a GPU machine the training process
already holds a GPU, and exact search is a matrix product: the H200 check (bench/gpu_check.sh) spent
its whole mining budget on the CPU's estimated 174 s for 24k queries in 1M x 32-d vectors, after the
GPU had encoded the million passages. :class:`TorchTopk` gives :func:`rgpl_adapt.neighbours.plan_search`
the same search on a torch device, and on the CPU, where torch's top-k beats numpy's ``argpartition``
and ``lexsort`` by 1.9-4.9x (bench/topk_speed.py):

* on a GPU the vectors are copied there once and kept when they take at most ``RESIDENT_SHARE`` of
  its free memory; otherwise each call streams them in blocks from the host (the memory map). On
  the CPU an array in memory is shared, and a memory map is read a block at a time, never whole;
* each query batch's scores are computed a block of rows at a time (``SCORE_BYTES`` of scores at
  most; ``CPU_SCORE_BYTES`` on the CPU) with a running top-k, exactly like ``exact_topk``, float32 throughout (no TF32), ties to the
  lower row. The result is the CPU's up to float rounding: the two libraries sum the products in
  different orders, so two rows within ~1e-6 of each other can swap (bench/topk_speed.py reports the
  overlap; tests/adapter/test_torch_topk.py compares them where no such near-ties exist).
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

RESIDENT_SHARE = 0.5  # keep the vectors on the device when they need at most this share of its free memory
SCORE_BYTES = 1 << 30  # scores of one (query batch x row block) product on a GPU
CPU_SCORE_BYTES = 1 << 27  # on the CPU: numpy's search holds as much (1,024 queries x 32,768 rows)
QUERY_BATCH = 4096


def _torch() -> Any:
    from rgpl_adapt.devices import require

    return require("torch")


class TorchTopk:
    """Exact top-``k`` rows of ``matrix`` (numpy, possibly a memory map) for query batches, on ``device``."""

    def __init__(self, matrix: np.ndarray, device: str) -> None:
        torch = _torch()
        self.matrix = matrix
        self.device = torch.device(device)
        self.n, self.dim = int(matrix.shape[0]), int(matrix.shape[1])
        self._resident: Any = None
        nbytes = self.n * self.dim * 4
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            self.resident = nbytes <= RESIDENT_SHARE * free
        else:  # the CPU: share an array in memory; read a memory map block by block, never whole
            self.resident = not isinstance(matrix, np.memmap)
        log.info("exact search on %s: %d x %d vectors %s", self.device, self.n, self.dim,
                 "held on the device" if self.resident else "streamed from the host in blocks")

    def _rows(self, start: int, stop: int) -> Any:
        if self.resident:
            if self._resident is None:
                self._resident = self._to_device(0, self.n)
            return self._resident[start:stop]
        return self._to_device(start, stop)

    def _to_device(self, start: int, stop: int) -> Any:
        torch = _torch()
        block = np.ascontiguousarray(self.matrix[start:stop], dtype=np.float32)  # no copy when it already is
        with warnings.catch_warnings():  # a read-only memory map: the search only reads it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(block).to(self.device)

    def __call__(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, scores)`` shaped ``(n_queries, min(k, n))``, best first, ties to the lower row."""
        torch = _torch()
        kk = min(k, self.n)
        rows_out = np.empty((len(queries), kk), dtype=np.int64)
        scores_out = np.empty((len(queries), kk), dtype=np.float32)
        if not len(queries) or not kk:
            return rows_out, scores_out
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # exact float32 products, as the CPU search
        try:
            with torch.inference_mode():
                for q0 in range(0, len(queries), QUERY_BATCH):
                    q = torch.from_numpy(np.ascontiguousarray(queries[q0 : q0 + QUERY_BATCH], dtype=np.float32))
                    rows, scores = self._batch(q.to(self.device), kk)
                    rows_out[q0 : q0 + len(q)] = rows.cpu().numpy()
                    scores_out[q0 : q0 + len(q)] = scores.cpu().numpy()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
        return rows_out, scores_out

    def _batch(self, q: Any, kk: int) -> tuple[Any, Any]:
        torch = _torch()
        budget = SCORE_BYTES if self.device.type == "cuda" else CPU_SCORE_BYTES
        block_rows = max(kk, budget // (4 * len(q)))
        best_rows = torch.empty((len(q), 0), dtype=torch.int64, device=self.device)
        best_scores = torch.empty((len(q), 0), dtype=torch.float32, device=self.device)
        for r0 in range(0, self.n, block_rows):
            s = q @ self._rows(r0, min(self.n, r0 + block_rows)).T
            top = min(kk, s.shape[1])
            s, idx = torch.topk(s, top, dim=1, sorted=False)
            rows = torch.cat([best_rows, idx + r0], dim=1)
            scores = torch.cat([best_scores, s], dim=1)
            # the running top-k, ties to the lower row: by row, then stably by score
            by_row = torch.argsort(rows, dim=1)
            rows, scores = torch.gather(rows, 1, by_row), torch.gather(scores, 1, by_row)
            order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :kk]
            best_rows, best_scores = torch.gather(rows, 1, order), torch.gather(scores, 1, order)
        return best_rows, best_scores
