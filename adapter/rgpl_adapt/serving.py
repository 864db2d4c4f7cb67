"""Searching a run folder: one warm encoder, one query encoding shared by every leg.

:class:`Searcher` opens the run's embedded index and loads the exported encoder once (an ONNX
session runs a warm-up batch when it is created), so a process that answers many queries pays for
neither per query. Each query is encoded once, through :meth:`OnnxEncoder.encode_queries
<rgpl_adapt.onnx_encoder.OnnxEncoder.encode_queries>`'s LRU cache when the encoder has one, and that
vector feeds the dense leg of a hybrid query; a repeated query (another mode, another weight) is not
encoded again.

Serving opens the index with :data:`SERVE_HNSW_THRESHOLD`: above 20,000 vectors one query at a time
goes through the HNSW graph (built once and saved next to the vectors on the first dense query, which
is logged), because an exact scan of a 50k x 384 matrix costs 5-10 ms a query against ~0.2-0.3 ms for
the graph (bench/RESULTS.md). The pipeline's batched mining and evaluation keep exact search up to
:data:`rgpl_plugin.vectors.DEFAULT_HNSW_THRESHOLD`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rgpl_plugin.base import Hit

from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.pipeline import DENSE_SPACE, PipelineError, hybrid_weight_of, load_encoder

SERVE_HNSW_THRESHOLD = 20_000
"""Vectors above which :class:`Searcher` answers dense queries from the HNSW graph."""

SearchMode = Literal["hybrid", "dense", "bm25"]


class Searcher:
    """Hybrid, dense or BM25 search over a finished run folder with its adapted model.

    Args:
        run_dir: the run folder (``index/``, ``export/``, ``config.json``).
        encoder: a :class:`rgpl_adapt.encoding.TextEncoder` to use instead of loading the export
            (tests, or a caller that already holds one).
        backend: an opened backend to use instead of the run's embedded index.
        hnsw_threshold: vectors above which dense search uses the HNSW graph.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        encoder: Any = None,
        backend: Any = None,
        hnsw_threshold: int = SERVE_HNSW_THRESHOLD,
    ) -> None:
        from rgpl_plugin.embedded import EmbeddedBackend

        self.run_dir = Path(run_dir)
        if backend is None:
            index = self.run_dir / "index"
            if not index.exists():
                raise PipelineError(f"{run_dir} has no embedded index: run "
                                    f"`rgpl-adapt adapt --corpus ... --out {run_dir}` first")
            backend = EmbeddedBackend.open(index, hnsw_threshold=hnsw_threshold)
        self.backend = backend
        self._encoder = encoder
        self._weight: float | None = None

    @property
    def encoder(self) -> Any:
        """The run's exported encoder (ONNX when exported), loaded and warmed up on first use."""
        if self._encoder is None:
            config = self.run_dir / "config.json"
            prefer_onnx = True
            if config.exists():
                prefer_onnx = AdaptConfig.from_dict(json.loads(config.read_text())).export.onnx
            self._encoder = load_encoder(self.run_dir / "export", prefer_onnx)
        return self._encoder

    @property
    def weight(self) -> float:
        """The dense weight chosen during adaptation (0.5 when none was recorded)."""
        if self._weight is None:
            self._weight = hybrid_weight_of(self.run_dir)
        return self._weight

    def encode(self, queries: Sequence[str]) -> np.ndarray:
        """Query vectors, through the encoder's query cache when it has one."""
        encoder = self.encoder
        cached = getattr(encoder, "encode_queries", None)
        return cached(list(queries)) if cached is not None else encoder.encode(list(queries))

    def search(
        self, query: str, k: int = 10, *, mode: SearchMode = "hybrid", weight: float | None = None
    ) -> list[Hit]:
        """The top ``k`` hits of ``query``; ``weight``: the dense share of hybrid (default: the run's)."""
        if mode == "bm25":
            return self.backend.bm25_search([query], k)[0]
        if mode not in ("hybrid", "dense"):
            raise ValueError(f"unknown search mode {mode!r}; use 'hybrid', 'dense' or 'bm25'")
        if not self.backend.has_vectors(DENSE_SPACE):
            raise PipelineError(f"{self.run_dir} has no dense vectors yet: let `rgpl-adapt adapt` finish")
        vector = self.encode([query])  # one encoding, shared by the dense leg and any repeat of the query
        if mode == "dense":
            return self.backend.knn_search(DENSE_SPACE, vector, k)[0]
        w = self.weight if weight is None else weight
        return self.backend.hybrid_search(DENSE_SPACE, [query], vector, k, weight=w)[0]

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
