"""The HNSW graph build is resumable: checkpoints of the partial graph, a kill -9 mid-build, the rest added."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rgpl_plugin import hnsw
from rgpl_plugin.hnsw import Checkpoint, build_hnsw, hnsw_search
from rgpl_plugin.vectors import VectorStore, exact_topk

from tests.kill9 import kill_when, python

N, DIM = 4000, 24


def _usearch():
    from rgpl_adapt.devices import require_usearch

    try:
        return require_usearch()  # onnxruntime first: the other order segfaults later tests
    except ImportError as exc:
        pytest.skip(f"HNSW needs usearch (pip install 'rgpl-adapt[hnsw]'): {exc}")


def _data(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, DIM)).astype(np.float32)
    matrix = centres[rng.integers(0, 20, N)] + 0.3 * rng.standard_normal((N, DIM)).astype(np.float32)
    queries = centres[rng.integers(0, 20, 60)] + 0.3 * rng.standard_normal((60, DIM)).astype(np.float32)
    return matrix.astype(np.float32), queries.astype(np.float32)


def _recall(rows: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(rows.tolist(), exact.tolist())]))


@pytest.fixture
def added_rows(monkeypatch):
    """How many rows each ``Index.add`` call of this process adds."""
    module = _usearch()
    calls: list[int] = []
    add = module.Index.add

    def counting(self, keys, vectors, *args, **kwargs):
        calls.append(len(keys))
        return add(self, keys, vectors, *args, **kwargs)

    monkeypatch.setattr(module.Index, "add", counting)
    return calls


def test_an_interrupted_build_continues_from_its_checkpoint(tmp_path, added_rows, monkeypatch):
    matrix, queries = _data()
    ckpt = Checkpoint(tmp_path / "g.usearch", key="v1", every_s=0, min_rows=1000)
    module = _usearch()

    class Killed(Exception):
        pass

    counting = module.Index.add  # the fixture's counter

    def dies_after_5_blocks(self, keys, vectors, *args, **kwargs):
        if len(added_rows) == 5:
            raise Killed  # the sixth block never lands
        return counting(self, keys, vectors, *args, **kwargs)

    monkeypatch.setattr(module.Index, "add", dies_after_5_blocks)
    with pytest.raises(Killed):
        build_hnsw(matrix, dtype="bf16", expansion_search=128, checkpoint=ckpt, block=500)
    assert json.loads(ckpt.meta.read_text())["rows"] == 2000  # saved after 1000 and 2000 rows, not after 2500
    monkeypatch.setattr(module.Index, "add", counting)
    added_rows.clear()
    index = build_hnsw(matrix, dtype="bf16", expansion_search=128, checkpoint=ckpt, block=500)
    assert sum(added_rows) == N - 2000 and len(index) == N  # resumed, not from zero
    exact, _ = exact_topk(matrix, queries, 10)
    rows, _, _ = hnsw_search(index, matrix, queries, 10)
    assert _recall(rows, exact) >= 0.95
    other = Checkpoint(ckpt.path, key="v2", every_s=0, min_rows=1000)  # other vectors: from zero
    added_rows.clear()
    build_hnsw(matrix, dtype="bf16", expansion_search=128, checkpoint=other, block=500)
    assert sum(added_rows) == N


def test_checkpoints_are_rare_by_default_and_never_for_the_last_block(tmp_path):
    _usearch()
    matrix, _ = _data()
    ckpt = Checkpoint(tmp_path / "g.usearch", key="v1")  # 10 minutes and 262,144 rows
    build_hnsw(matrix, dtype="bf16", expansion_search=128, checkpoint=ckpt, block=500)
    assert not ckpt.meta.exists() and not ckpt.graph.exists()
    every = Checkpoint(tmp_path / "h.usearch", key="v1", every_s=0, min_rows=1)
    build_hnsw(matrix, dtype="bf16", expansion_search=128, checkpoint=every, block=1000)
    assert json.loads(every.meta.read_text())["rows"] == 3000


def test_kill_9_mid_serving_graph_build_resumes_from_the_checkpoint(tmp_path, added_rows):
    """The serving store's graph build, killed with SIGKILL in a subprocess after some checkpoints: the
    rerun restores the checkpoint, adds only the rest, and answers like an uninterrupted build."""
    matrix, queries = _data()
    ids = [f"v{i}" for i in range(N)]
    for root in (tmp_path / "killed", tmp_path / "whole"):
        VectorStore(root, hnsw_threshold=100).put("s", ids, matrix)
    root = tmp_path / "killed"
    code = (
        "import sys, time\n"
        "from rgpl_adapt.devices import require_usearch\n"
        "from rgpl_plugin import hnsw\n"
        "from rgpl_plugin.vectors import VectorStore\n"
        "module = require_usearch(); add = module.Index.add\n"
        "def slow(self, *a, **kw):\n"
        "    time.sleep(0.4); return add(self, *a, **kw)\n"
        "module.Index.add = slow; hnsw.ADD_BLOCK = 250\n"
        f"store = VectorStore({str(root)!r}, hnsw_threshold=100, checkpoint_every_s=0, checkpoint_min_rows=500)\n"
        "store.search('s', store.matrix('s')[1][:1], 10)\n"
    )
    meta = root / "s" / "hnsw.usearch.partial.json"
    kill_when(python(code), lambda: meta.exists() and json.loads(meta.read_text())["rows"] >= 1500, "the build")
    saved = json.loads(meta.read_text())["rows"]
    assert 1500 <= saved < N and not (root / "s" / "hnsw.usearch").exists()
    store = VectorStore(root, hnsw_threshold=100)
    resumed = store.search("s", queries, 10)
    assert sum(added_rows) == N - saved  # only the rows after the checkpoint were added
    assert (root / "s" / "hnsw.usearch").is_file() and not meta.exists() and not (root / "s" / "hnsw.usearch.partial").exists()
    whole = VectorStore(tmp_path / "whole", hnsw_threshold=100).search("s", queries, 10)
    exact, _ = exact_topk(matrix, queries, 10)
    exact_ids = [[ids[r] for r in row] for row in exact.tolist()]
    for got in (resumed, whole):
        assert np.mean([len({h.doc_id for h in a} & set(e)) / 10 for a, e in zip(got, exact_ids)]) >= 0.95
    same = np.mean([len({h.doc_id for h in a} & {h.doc_id for h in b}) / 10 for a, b in zip(resumed, whole)])
    assert same >= 0.95
    assert len(store._cache["s"].hnsw) == N and Path(root / "s" / "hnsw.usearch").stat().st_size > 0
    assert hnsw.CHECKPOINT_EVERY_S >= 60  # the serving default: not every block
