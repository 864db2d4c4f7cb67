"""Device resolution and lazy imports of heavy optional parts."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def require(module: str, extra: str | None = None, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ImportError that says exactly what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - message checked in tests via a fake name
        pip_name = package or module.split(".")[0]
        hint = f"pip install 'rgpl-adapt[{extra}]'" if extra else f"pip install {pip_name}"
        raise ImportError(f"{module} is needed for this feature but is not installed; run: {hint}") from exc


def require_usearch() -> ModuleType:
    """``usearch.index`` (``pip install 'rgpl-adapt[hnsw]'``), with onnxruntime imported first when installed.

    Importing onnxruntime *after* usearch kills the process (a segmentation fault in onnxruntime's import;
    seen with usearch 2.26.6 and onnxruntime 1.32.0), and a run that searched with HNSW exports to ONNX
    later in the same process. The other order works.
    """
    if importlib.util.find_spec("onnxruntime") is not None:
        importlib.import_module("onnxruntime")
    return require("usearch.index", extra="hnsw")


def resolve_device(spec: str = "auto") -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; anything else is kept."""
    if spec != "auto":
        return spec
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"
