"""Device resolution and lazy imports of heavy optional parts."""

from __future__ import annotations

import importlib
from types import ModuleType


def require(module: str, extra: str | None = None, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an ImportError that says exactly what to install."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - message checked in tests via a fake name
        pip_name = package or module.split(".")[0]
        hint = f"pip install 'rgpl-adapt[{extra}]'" if extra else f"pip install {pip_name}"
        raise ImportError(f"{module} is needed for this feature but is not installed; run: {hint}") from exc


def resolve_device(spec: str = "auto") -> str:
    """``auto`` becomes ``cuda`` when a GPU is visible, else ``cpu``; anything else is kept."""
    if spec != "auto":
        return spec
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"
