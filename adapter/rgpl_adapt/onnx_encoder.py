"""Encoding with an exported ONNX graph: only ``tokenizers`` + ``onnxruntime`` are needed.

Reads the folder written by :func:`rgpl_adapt.export.export_model` (``tokenizer.json``,
``model.onnx`` / ``model_opt.onnx`` / ``model_int8.onnx``, ``rgpl_onnx.json``). Texts are encoded in
length-sorted batches, padded per batch to the longest text, truncated to the model's ``max_seq_len``
exactly as sentence-transformers does, and returned in the caller's order.

Which graph: ``int8=True`` takes ``model_int8.onnx``; on CUDA ``model_fp16.onnx`` when the export
wrote one (``fp16=True`` forces it, ``False`` refuses it); otherwise the fused ``model_opt.onnx`` when the
export wrote one (its parity with torch was checked then), else the portable ``model.onnx``.
``encoder.graph_path`` says which ran. Sessions run with every graph optimisation enabled.

Speed. All texts of a call are tokenized at once (the Rust tokenizer, without padding), sorted by
token count and cut into batches padded only to their own longest text, so a batch of similar
lengths wastes little on padding. A batch holds at most ``max_batch_tokens`` (2048) padded tokens:
long texts run 16 at a time and their activations stay in cache (1.44x torch fp32 against 1.33x at
batch 64 on 130-token texts, bench/RESULTS.md). Idle intra-op threads do not spin-wait by default
(``spin=False``: a serving process sleeps between queries, and on shared cores spinning takes time
slices from the threads doing the work); the pipeline's corpus encodes turn spinning on
(``load_encoder(..., bulk=True)``), +5% docs/s on a quiet machine.
Only ``sentence_embedding`` is fetched (not the per-token output).
The session runs one dummy batch when it is created, so the first real query does not pay for
onnxruntime's lazy initialisation. :meth:`OnnxEncoder.encode_queries` keeps an LRU cache of query
vectors: a query served by several legs (BM25 + dense, several weights) or repeated is encoded once.

Providers. ``CUDAExecutionProvider`` when onnxruntime-gpu offers it (the ``gpu`` extra), else CPU;
``device="cuda:N"`` puts the session on GPU N (``device_id``), so each torchrun rank uses its own GPU;
on CUDA the inputs and the one output are bound with IO binding (no token-embedding copy back to the
host). Not measured here: no GPU was available when this was written (bench/RESULTS.md).
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rgpl_adapt.devices import require
from rgpl_adapt.progress import ProgressFactory, silent

logger = logging.getLogger(__name__)

META_FILE = "rgpl_onnx.json"
MAX_BATCH_TOKENS = 2048
"""Default cap on texts x padded length per onnxruntime batch (16 texts of 128 tokens)."""


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


def default_providers(device: str | None = None) -> list[str | tuple[str, dict[str, Any]]]:
    """CUDA when onnxruntime offers it (onnxruntime-gpu), else CPU.

    ``device``: the process's torch device. ``cuda:N`` puts the CUDA session on GPU N (under torchrun each
    rank on its own GPU); ``cpu`` keeps the session on the CPU; ``None``, ``auto`` or ``cuda``:
    onnxruntime's default GPU (0).
    """
    ort = require("onnxruntime", extra="gpu")
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available or (device or "auto").startswith("cpu"):
        return ["CPUExecutionProvider"]
    index = device.partition(":")[2] if device else ""
    cuda: str | tuple[str, dict[str, Any]] = (
        ("CUDAExecutionProvider", {"device_id": int(index)}) if index else "CUDAExecutionProvider"
    )
    return [cuda, "CPUExecutionProvider"]


def _provider_name(provider: str | tuple[str, dict[str, Any]]) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxEncoder:
    """:class:`rgpl_adapt.encoding.TextEncoder` over an exported ONNX sentence-embedding graph.

    Args:
        path: the export folder or its ``onnx/`` subfolder.
        int8: use ``model_int8.onnx`` (export with ``int8=True``).
        fp16: use ``model_fp16.onnx`` (export with ``fp16=True``); ``None`` (default): when the export
            wrote one and the session runs on CUDA (on CPU float16 is slower than float32).
        optimized: use the fused ``model_opt.onnx``; ``None`` (default): when the export wrote one.
        providers: onnxruntime execution providers (names or ``(name, options)`` pairs); default CUDA when
            available, else CPU (:func:`default_providers`).
        device: the torch device of the process, for the default providers: ``cuda:N`` runs the session
            on GPU N, ``cpu`` on the CPU.
        threads: intra-op threads for onnxruntime (default: onnxruntime's choice).
        query_cache: how many query vectors :meth:`encode_queries` keeps (0: no cache).
        spin: let onnxruntime's idle intra-op threads spin-wait (``session.intra_op.allow_spinning``).
            Off by default: spinning buys microseconds on an idle machine and costs whole time
            slices when the cores are shared (bench/RESULTS.md).
        max_batch_tokens: cap on a batch's padded size (texts x longest text): long texts run in
            smaller batches whose activations stay in cache (bench/RESULTS.md); ``None``: no cap.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        int8: bool = False,
        fp16: bool | None = None,
        optimized: bool | None = None,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        device: str | None = None,
        threads: int | None = None,
        query_cache: int = 1024,
        spin: bool = False,
        max_batch_tokens: int | None = MAX_BATCH_TOKENS,
    ) -> None:
        ort = require("onnxruntime")
        tokenizers = require("tokenizers")
        self.onnx_dir = resolve_onnx_dir(path)
        self.meta: dict[str, Any] = json.loads((self.onnx_dir / META_FILE).read_text(encoding="utf-8"))
        fused = self.onnx_dir / "model_opt.onnx"
        if int8 and fp16:
            raise ValueError("choose one of int8 and fp16")
        chosen = list(providers) if providers is not None else default_providers(device)
        if fp16 is None:
            fp16 = _provider_name(chosen[0]) == "CUDAExecutionProvider" and "fp16" in self.meta and not int8
        if fp16:
            graph = self.onnx_dir / "model_fp16.onnx"
        elif int8:
            graph = self.onnx_dir / "model_int8.onnx"
        elif optimized or (optimized is None and fused.is_file()):
            graph = fused
        else:
            graph = self.onnx_dir / "model.onnx"
        if not graph.is_file():
            hint = (" (export with int8 enabled)" if int8 else " (export with fp16 enabled)" if fp16
                    else " (export with optimize enabled)" if optimized else "")
            raise FileNotFoundError(f"{graph} does not exist{hint}")
        self.graph_path = graph

        tok = tokenizers.Tokenizer.from_file(str(self.onnx_dir / "tokenizer.json"))
        tok.enable_truncation(max_length=self.max_seq_len)
        padding = tok.padding or {}
        tok.enable_padding(pad_id=int(padding.get("pad_id", 0)), pad_token=padding.get("pad_token", "[PAD]"))
        self.tokenizer = tok
        self._pad_id = int(padding.get("pad_id", 0))
        self._unpadded = tokenizers.Tokenizer.from_str(tok.to_str())
        self._unpadded.no_padding()

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.max_batch_tokens = max_batch_tokens
        self.session = ort.InferenceSession(str(graph), sess_options=options, providers=chosen)
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        unknown = set(self.input_names) - {"input_ids", "attention_mask", "token_type_ids"}
        if unknown:
            raise ValueError(f"{graph} has inputs this encoder cannot fill: {sorted(unknown)}")
        self.io_binding = self.session.get_providers()[0] == "CUDAExecutionProvider"
        self._query_cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._query_cache_size = max(0, int(query_cache))
        self._run(self._feed(["warm up"]))  # onnxruntime initialises lazily: pay it now, not on a query
        logger.info("ONNX encoder %s on %s%s", graph, self.session.get_providers(),
                    " (IO binding)" if self.io_binding else "")

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

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """sentence_embedding for one batch; IO binding on CUDA."""
        if not self.io_binding:
            return self.session.run(["sentence_embedding"], feed)[0]
        binding = self.session.io_binding()
        for name, array in feed.items():
            binding.bind_cpu_input(name, array)
        binding.bind_output("sentence_embedding", "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0]

    def _length_batches(self, texts: Sequence[str], batch_size: int):
        """(indices, feed) per batch: texts sorted by token count, each batch padded to its own longest."""
        encodings = self._unpadded.encode_batch(list(texts))
        lengths = np.fromiter((len(e.ids) for e in encodings), dtype=np.int64, count=len(encodings))
        order = np.argsort(-lengths, kind="stable")
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])  # the longest text of the batch: sorted descending
            size = batch_size
            if self.max_batch_tokens:
                size = max(1, min(batch_size, self.max_batch_tokens // max(width, 1)))
            idx = order[start : start + size]
            start += size
            ids = np.full((len(idx), width), self._pad_id, dtype=np.int64)
            mask = np.zeros((len(idx), width), dtype=np.int64)
            types = np.zeros((len(idx), width), dtype=np.int64)
            for row, i in enumerate(idx):
                e, n = encodings[i], int(lengths[i])
                ids[row, :n], mask[row, :n], types[row, :n] = e.ids, 1, e.type_ids
            arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            yield idx, {name: arrays[name] for name in self.input_names}

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: ProgressFactory = silent) -> np.ndarray:
        """Encode ``texts``; returns float32 (len(texts), dim) in the order given."""
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with progress(total=len(texts), desc="encoding (onnx)", unit="text") as bar:
            if len(texts):
                for idx, feed in self._length_batches(texts, batch_size):
                    out[idx] = self._run(feed)
                    bar.update(len(idx))
        return out

    def encode_queries(self, queries: Sequence[str]) -> np.ndarray:
        """Encode query texts through an LRU cache; float32 (len(queries), dim) in the order given.

        Serving calls this once per query and hands the vector to every leg that needs it (the dense
        leg of a hybrid query, other weights, a repeated query) instead of encoding again.
        """
        missing = list(dict.fromkeys(q for q in queries if q not in self._query_cache))
        fresh = dict(zip(missing, self.encode(missing, batch_size=64))) if missing else {}
        out = np.empty((len(queries), self.dim), dtype=np.float32)
        for i, q in enumerate(queries):
            vec = fresh.get(q)
            if vec is None:
                vec = self._query_cache[q]
                self._query_cache.move_to_end(q)
            elif self._query_cache_size:
                self._query_cache[q] = vec
            out[i] = vec
        while len(self._query_cache) > self._query_cache_size:
            self._query_cache.popitem(last=False)
        return out
