"""Encoding texts with a bi-encoder: batched by length, train/eval mode restored.

The reference GPL code left the student in eval mode after encoding the corpus for remining,
which silently disables dropout for the rest of training. :func:`encode_texts` always puts the
model back in the mode it found it in.

``autocast_bf16=True`` runs the forward pass under bfloat16 autocast (vectors are returned as
float32). On CPUs with AVX512-bf16/AMX it encodes about 1.5x faster (bench/encode_speed.py); the
vectors move slightly (cosine to fp32 about 0.999), so top-k neighbours can change at the margin:
bench/remine_cost.py measures the overlap of bf16 and fp32 remined negatives.

Which precision encodes (:func:`encode_precision`, a documented rule rather than a timing at run time,
so two runs of the same config encode alike): an explicit ``fp32``/``bf16``/``fp16`` setting wins;
``auto`` picks bf16 on a CUDA GPU that supports it and on a CPU that has bf16 units (``avx512_bf16``
or ``amx_bf16`` in /proc/cpuinfo), fp32 otherwise. Measured on such a CPU (bench/RESULTS.md): torch
bf16 autocast encodes about 1.9x faster than fp32, cosine to fp32 about 0.999, SciFact nDCG@10 within
the noise. Each call logs which path ran.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from rgpl_adapt.progress import ProgressFactory, silent

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer


logger = logging.getLogger(__name__)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 units (``avx512_bf16`` or ``amx_bf16``; Linux /proc/cpuinfo)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    flags = next((ln.split(":", 1)[-1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def encode_precision(precision: str, device: str) -> str:
    """The precision to *encode* with (mining, remining, torch serving); see the module docstring."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device == "cpu" and cpu_has_bf16() else "fp32"


class TextEncoder(Protocol):
    """Anything that turns texts into float32 vectors (torch model, ONNX session, ...)."""

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: ProgressFactory = silent) -> np.ndarray: ...


def features(model: SentenceTransformer, texts: Sequence[str]) -> dict:
    """Tokenized model inputs on the model's device (``preprocess`` in sentence-transformers >= 6)."""
    prep = model.preprocess if hasattr(model, "preprocess") else model.tokenize
    out = prep(list(texts))
    return {k: v.to(model.device) if hasattr(v, "to") else v for k, v in out.items()}


def embedding_dim(model: SentenceTransformer) -> int:
    if hasattr(model, "get_embedding_dimension"):
        return int(model.get_embedding_dimension())
    return int(model.get_sentence_embedding_dimension())


def encode_texts(
    model: SentenceTransformer,
    texts: Sequence[str],
    batch_size: int = 64,
    *,
    normalize: bool = False,
    progress: ProgressFactory = silent,
    desc: str = "encoding",
    autocast_bf16: bool = False,
) -> np.ndarray:
    """Encode ``texts`` with ``model`` in length-sorted batches; returns float32 (len(texts), dim).

    The model's training mode is restored afterwards, whatever it was. ``autocast_bf16`` runs the
    forward pass under bfloat16 autocast on the model's device (faster on CPUs with bf16 units).
    """
    import torch

    was_training = model.training
    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), embedding_dim(model)), dtype=np.float32)
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=autocast_bf16)
    model.eval()
    logger.info("%s: %d texts with torch %s on %s", desc, len(texts), "bf16 autocast" if autocast_bf16 else "fp32",
                model.device)
    try:
        with progress(total=len(texts), desc=desc, unit="text") as bar, torch.inference_mode(), autocast:
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                emb = model(features(model, [texts[i] for i in idx]))["sentence_embedding"]
                if normalize:
                    emb = torch.nn.functional.normalize(emb, p=2, dim=-1)
                out[idx] = emb.float().cpu().numpy()
                bar.update(len(idx))
    finally:
        model.train(was_training)
    return out


class SentenceTransformerEncoder:
    """:class:`TextEncoder` over a sentence-transformers model (torch)."""

    def __init__(self, model: SentenceTransformer, *, normalize: bool = False, autocast_bf16: bool = False) -> None:
        self.model = model
        self.normalize = normalize
        self.autocast_bf16 = autocast_bf16

    def encode(self, texts: Sequence[str], batch_size: int = 64, progress: ProgressFactory = silent) -> np.ndarray:
        return encode_texts(
            self.model, texts, batch_size, normalize=self.normalize, progress=progress, autocast_bf16=self.autocast_bf16
        )
