"""Encoding with an exported ONNX graph: only ``tokenizers`` + ``onnxruntime`` are needed.

Reads the folder written by :func:`rgpl_adapt.export.export_model` (``tokenizer.json``,
``model.onnx`` / ``model_opt.onnx`` / ``model_int8.onnx``, ``rgpl_onnx.json``). Texts are encoded in
length-sorted batches, padded per batch to the longest text, truncated to the model's ``max_seq_len``
exactly as sentence-transformers does, and returned in the caller's order.

Which graph: ``int8=True`` takes ``model_int8.onnx``; otherwise the fused ``model_opt.onnx`` when the
export wrote one (its parity with torch was checked then), else the portable ``model.onnx``.
``encoder.graph_path`` says which ran. Sessions run with every graph optimisation enabled.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rgpl_adapt.devices import require
from rgpl_adapt.progress import ProgressFactory, silent

logger = logging.getLogger(__name__)

META_FILE = "rgpl_onnx.json"


def resolve_onnx_dir(path: str | os.PathLike) -> Path:
    """The folder holding ``rgpl_onnx.json``: ``path`` itself or ``path/onnx``."""
    root = Path(path)
    for candidate in (root, root / "onnx"):
        if (candidate / META_FILE).is_file():
            return candidate
    raise FileNotFoundError(
        f"no {META_FILE} in {root} or {root / 'onnx'}: pass the folder written by export_model "
        "(rgpl-adapt export) or its onnx/ subfolder"
    )


def default_providers() -> list[str]:
    """CUDA when onnxruntime offers it (onnxruntime-gpu), else CPU."""
    ort = require("onnxruntime", extra="gpu")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxEncoder:
    """:class:`rgpl_adapt.encoding.TextEncoder` over an exported ONNX sentence-embedding graph.

    Args:
        path: the export folder or its ``onnx/`` subfolder.
        int8: use ``model_int8.onnx`` (export with ``int8=True``).
        optimized: use the fused ``model_opt.onnx``; ``None`` (default): when the export wrote one.
        providers: onnxruntime execution providers; default CUDA when available, else CPU.
        threads: intra-op threads for onnxruntime (default: onnxruntime's choice).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        int8: bool = False,
        optimized: bool | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        ort = require("onnxruntime")
        tokenizers = require("tokenizers")
        self.onnx_dir = resolve_onnx_dir(path)
        self.meta: dict[str, Any] = json.loads((self.onnx_dir / META_FILE).read_text(encoding="utf-8"))
        fused = self.onnx_dir / "model_opt.onnx"
        if int8:
            graph = self.onnx_dir / "model_int8.onnx"
        elif optimized or (optimized is None and fused.is_file()):
            graph = fused
        else:
            graph = self.onnx_dir / "model.onnx"
        if not graph.is_file():
            hint = " (export with int8 enabled)" if int8 else " (export with optimize enabled)" if optimized else ""
            raise FileNotFoundError(f"{graph} does not exist{hint}")
        self.graph_path = graph

        tok = tokenizers.Tokenizer.from_file(str(self.onnx_dir / "tokenizer.json"))
        tok.enable_truncation(max_length=self.max_seq_len)
        padding = tok.padding or {}
        tok.enable_padding(pad_id=int(padding.get("pad_id", 0)), pad_token=padding.get("pad_token", "[PAD]"))
        self.tokenizer = tok

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        chosen = list(providers) if providers is not None else default_providers()
        self.session = ort.InferenceSession(str(graph), sess_options=options, providers=chosen)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ValueError(f"{graph} has inputs this encoder cannot fill: {sorted(unknown)}")
        logger.info("ONNX encoder %s on %s", graph, self.session.get_providers())

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.meta["dim"])

    @property
    def max_seq_len(self) -> int:
        return int(self.meta["max_seq_len"])

    @property
    def normalize(self) -> bool:
        """Whether the graph L2-normalizes (the model had a Normalize module)."""
        return bool(self.meta["normalize"])

    def _feed(self, texts: list[str]) -> dict[str, np.ndarray]:
        encodings = self.tokenizer.encode_batch(texts)
        fields = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
        return {
            name: np.asarray([getattr(e, fields[name]) for e in encodings], dtype=np.int64)
            for name in self.input_names
        }

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: ProgressFactory = silent) -> np.ndarray:
        """Encode ``texts``; returns float32 (len(texts), dim) in the order given."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        with progress(total=len(texts), desc="encoding (onnx)", unit="text") as bar:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                feed = self._feed([texts[i] for i in idx])
                (emb,) = self.session.run(["sentence_embedding"], feed)
                out[idx] = emb
                bar.update(len(idx))
        return out
