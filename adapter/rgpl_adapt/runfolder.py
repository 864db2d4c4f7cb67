"""What every reader of a run folder uses: its layout, the document store, the exported model, the report.

Kept apart from the orchestrator (:mod:`rgpl_adapt.pipeline`) so that the CLI, evaluation and
re-adaptation read a finished run without importing the stages. A run folder::

    runs/NAME/
      config.json                 the AdaptConfig of the run
      index/                      the embedded backend (BM25 + vector spaces + docs.sqlite)  [embedded only]
      docs/       docs.sqlite     the documents of a cluster run, copied once              [cluster only]
      queries/    queries.jsonl   generated pseudo queries (+ parts/ while running)
      negatives/  pools.jsonl     initial hard negatives (+ vectors/ while encoding the corpus)
      train/      rounds/ checkpoints/ final/ log.jsonl scores.*
      export/     sentence-transformers/ onnx/
      serve/                      manifest of the vectors written back for search (+ vectors/)
      report.json                 per-stage timings and statistics
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from rgpl_plugin.base import Backend

from rgpl_adapt.manifest import read_manifest

__all__ = [
    "DENSE_SPACE",
    "PipelineError",
    "hybrid_weight_of",
    "corpus_encoder",
    "load_encoder",
    "open_embedded",
    "read_report",
    "store_dir",
]

DENSE_SPACE = "dense"


class PipelineError(RuntimeError):
    """A run cannot go on; the message says what to change."""


def store_dir(run_dir: str | os.PathLike) -> Path:
    """The folder holding the run's ``docs.sqlite``: ``index/`` (embedded) or ``docs/`` (a cluster run)."""
    run_dir = Path(run_dir)
    for sub in ("index", "docs"):
        if (run_dir / sub / "docs.sqlite").is_file():
            return run_dir / sub
    raise PipelineError(f"{run_dir} has no document store: run `rgpl-adapt adapt --corpus ... --out {run_dir}` first")


def open_embedded(run_dir: str | os.PathLike) -> Backend:
    """The embedded backend of a run folder (reopened, never rebuilt)."""
    from rgpl_plugin.embedded import EmbeddedBackend

    path = Path(run_dir) / "index"
    if not path.exists():
        raise PipelineError(f"{run_dir} has no embedded index: run `rgpl-adapt adapt --corpus ... --out {run_dir}` first")
    return EmbeddedBackend.open(path)


def load_encoder(export_dir: str | os.PathLike, prefer_onnx: bool = True, *, bulk: bool = False,
                 device: str | None = None):
    """The exported model as a TextEncoder: ONNX when exported, else the torch model.

    ``bulk=True`` for encoding a corpus (not serving queries): onnxruntime's idle intra-op threads
    spin-wait between operators, +5% docs/s on a quiet machine (bench/RESULTS.md); a serving process
    keeps them asleep between queries. ``device``: the process's torch device (``cuda:N`` puts a CUDA
    ONNX session, or the torch model, on GPU N; ``None``: onnxruntime's default provider, torch on CPU).
    """
    export_dir = Path(export_dir)
    if prefer_onnx and (export_dir / "onnx" / "model.onnx").exists():
        from rgpl_adapt.onnx_encoder import OnnxEncoder

        return OnnxEncoder(export_dir / "onnx", spin=bulk, device=device)
    from rgpl_adapt.encoding import SentenceTransformerEncoder
    from rgpl_adapt.models import load_sentence_transformer

    torch_device = "cpu" if device in (None, "auto") else device
    return SentenceTransformerEncoder(load_sentence_transformer(str(export_dir / "sentence-transformers"), torch_device))


def corpus_encoder(export_dir: str | os.PathLike, prefer_onnx: bool, precision: str, device: str) -> tuple[Any, str]:
    """The encoder that writes a whole corpus's vectors for serving, and the name of the path it runs.

    The rule (bench/RESULTS.md, MiniLM on a 2-core AVX512-bf16 CPU, paths interleaved): where
    :func:`rgpl_adapt.encoding.encode_precision` says bf16 (a CPU with bf16 units, a GPU that supports
    it, or ``precision="bf16"``), torch bf16 autocast, the fastest path at fp32 quality (1.73-1.85x torch
    fp32 against 1.35-1.44x for the fused ONNX graph; SciFact nDCG@10 0.6457 vs 0.6451; cosine to fp32
    0.99998); elsewhere the exported ONNX graph with spinning threads (:func:`load_encoder` ``bulk=True``),
    or torch fp32 without an ONNX export. Queries are still encoded by the ONNX graph at serving time.
    """
    from rgpl_adapt.encoding import encode_precision

    export_dir = Path(export_dir)
    st_dir = export_dir / "sentence-transformers"
    if encode_precision(precision, device) == "bf16" and st_dir.is_dir():
        from rgpl_adapt.encoding import SentenceTransformerEncoder
        from rgpl_adapt.models import load_sentence_transformer

        model = load_sentence_transformer(str(st_dir), device="cpu" if device == "auto" else device)
        return SentenceTransformerEncoder(model, autocast_bf16=True), "torch bf16 autocast"
    encoder = load_encoder(export_dir, prefer_onnx, bulk=True, device=device)
    graph = getattr(encoder, "graph_path", None)
    return encoder, f"onnx {graph.name}" if graph is not None else "torch fp32"


def read_report(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / "report.json"
    if not path.exists():
        raise PipelineError(f"{run_dir} has no report.json: the adaptation has not finished")
    return json.loads(path.read_text())


def hybrid_weight_of(run_dir: str | os.PathLike) -> float:
    m = read_manifest(Path(run_dir) / "serve")
    if m is None:
        return 0.5
    w = m.outputs.get("hybrid_weight", 0.5)
    return 0.5 if w is None or (isinstance(w, float) and math.isnan(w)) else float(w)
