"""Stage manifests: a stage is skipped only when its recorded inputs match the current ones.

Each stage writes ``<run>/<stage>/manifest.json`` *after* its outputs are complete, holding a
fingerprint of everything that determines the outputs (config hash, model ids, the input
fingerprint of the previous stage). A rerun compares fingerprints, never file existence.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rgpl_adapt.config import config_hash

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    stage: str
    fingerprint: str
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0

    @classmethod
    def for_inputs(cls, stage: str, **inputs: Any) -> Manifest:
        """A manifest whose fingerprint is the hash of ``inputs`` (configs, model ids, upstream fingerprints)."""
        return cls(stage=stage, fingerprint=config_hash(stage, inputs), inputs=_jsonable(inputs))


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda o: getattr(o, "__dict__", str(o))))


def read_manifest(stage_dir: str | os.PathLike) -> Manifest | None:
    path = Path(stage_dir) / MANIFEST
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return Manifest(**data)


def write_manifest(stage_dir: str | os.PathLike, manifest: Manifest, outputs: dict[str, Any]) -> Manifest:
    """Record a completed stage (atomic write). Call only once all outputs are on disk."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    done = Manifest(
        stage=manifest.stage,
        fingerprint=manifest.fingerprint,
        inputs=manifest.inputs,
        outputs=_jsonable(outputs),
        created_at=time.time(),
    )
    tmp = stage_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(done.__dict__, indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, stage_dir / MANIFEST)
    return done


def is_complete(stage_dir: str | os.PathLike, expected: Manifest) -> bool:
    """True when the stage ran to completion with exactly these inputs."""
    found = read_manifest(stage_dir)
    return found is not None and found.fingerprint == expected.fingerprint


def invalidate(stage_dir: str | os.PathLike) -> None:
    """Forget a stage's completion (its outputs will be rebuilt)."""
    path = Path(stage_dir) / MANIFEST
    if path.exists():
        path.unlink()
