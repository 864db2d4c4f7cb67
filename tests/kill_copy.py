"""A copy of a cluster index into a document store, killed with SIGKILL mid-way (shared by the osmem and
real-node tests of :func:`rgpl_adapt.chunked.copy_documents`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(chunks):
            assert proc.stdout.readline() == "chunk\n", "the copy ended before it could be killed"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
