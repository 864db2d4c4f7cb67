"""kill -9 in tests: a Python subprocess killed with SIGKILL once its work has got far enough.

:func:`kill_when` serves the resumption tests that watch a run's own records (finished chunks,
checkpoints); :func:`kill_copy_after_chunks` the osmem and real-node tests of
:func:`rgpl_adapt.chunked.copy_documents`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path


def python(code: str, *args: str, **popen) -> subprocess.Popen:
    """``python -c code args...`` with this process's import path."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.Popen([sys.executable, "-c", code, *args], env=env, **popen)


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds; fails if ``proc`` ended first (``what`` names it)."""
    deadline = time.time() + timeout_s
    while proc.poll() is None and time.time() < deadline:
        if ready():
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"{what} ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def done_files(folder: Path) -> int:
    """How many chunks a chunked run has recorded as finished (its ``done/`` folder)."""
    return len(list(folder.iterdir())) if folder.exists() else 0


def kill_copy_after_chunks(url: str, index: str, store: Path, *, key: str, chunk_size: int, chunks: int = 3,
                           pause_s: float = 0.3, backend_args: str = "") -> None:
    """Run ``copy_documents`` of ``index`` at ``url`` into ``store`` in a subprocess that pauses after each
    finished chunk, and ``kill -9`` it once ``chunks`` chunks are stored. ``backend_args``: more keyword
    arguments of ``OpenSearchBackend``, as Python source (e.g. ``"text_fields=['text']"``)."""
    code = (
        "import time; from opensearchpy import OpenSearch; from rgpl_plugin.opensearch import OpenSearchBackend; "
        "from rgpl_plugin.docstore import DocStoreWriter; from rgpl_adapt.chunked import copy_documents\n"
        "append = DocStoreWriter.append_chunk\n"
        "def slow(self, chunk, info=None):\n"
        f"    rows = append(self, chunk, info); print('chunk', flush=True); time.sleep({pause_s}); return rows\n"
        "DocStoreWriter.append_chunk = slow\n"
        f"b = OpenSearchBackend(OpenSearch(hosts=[{url!r}]), {index!r}, {backend_args})\n"
        f"copy_documents(b, {str(store)!r}, key={key!r}, chunk_size={chunk_size})"
    )
    proc = python(code, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(chunks):
            assert proc.stdout.readline() == "chunk\n", "the copy ended before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
