"""Exact search on a torch device equals numpy's, and mining/remining hand the pipeline's device to it.

No GPU here: TorchTopk runs on torch's CPU device (the same code path, float32, ties to the lower row);
the wiring test stands a CPU TorchTopk in for the CUDA one that plan_search would build on a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from rgpl_plugin.vectors import exact_topk

import rgpl_adapt.torch_topk as torch_topk
from rgpl_adapt import neighbours
from rgpl_adapt.mining import mine_negatives, remine_pools
from rgpl_adapt.torch_topk import TorchTopk
from tests.adapter.test_neighbours import embedded  # noqa: F401  (the fixture)
from tests.conftest import TEST_DEVICE


@pytest.fixture()
def data():
    rng = np.random.default_rng(4)
    return rng.normal(size=(5000, 16)).astype(np.float32), rng.normal(size=(300, 16)).astype(np.float32)


@pytest.mark.parametrize("resident", [True, False])
def test_equals_the_numpy_search_across_blocks_and_batches(data, monkeypatch, resident):
    """On RGPL_TEST_DEVICE (cpu here; the GPU check runs it on cuda)."""
    matrix, queries = data
    monkeypatch.setattr(torch_topk, "SCORE_BYTES", 4 * 128 * 700)  # row blocks of 700 for a batch of 128
    monkeypatch.setattr(torch_topk, "CPU_SCORE_BYTES", 4 * 128 * 700)
    monkeypatch.setattr(torch_topk, "QUERY_BATCH", 128)
    search = TorchTopk(matrix, TEST_DEVICE)
    search.resident = resident  # False: every call streams the blocks from the host
    rows, scores = search(queries, 17)
    want_rows, want_scores = exact_topk(matrix, queries, 17)
    assert rows.shape == (300, 17) and rows.dtype == np.int64 and scores.dtype == np.float32
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    assert (search._resident is not None) == resident


def test_ties_go_to_the_lower_row_and_k_is_capped():
    matrix = np.ones((10, 4), dtype=np.float32)  # every row scores the same
    rows, scores = TorchTopk(matrix, "cpu")(np.ones((2, 4), dtype=np.float32), 50)
    assert rows.tolist() == [list(range(10))] * 2 and np.all(scores == 4.0)


def test_plan_search_runs_exact_search_on_the_given_device(monkeypatch, data):
    matrix, queries = data
    built = []

    def cpu_stand_in(m, device):
        built.append(device)
        return TorchTopk(m, "cpu")

    monkeypatch.setattr(neighbours, "device_topk", cpu_stand_in)
    ids = [f"d{i}" for i in range(len(matrix))]
    planned = neighbours.plan_search(ids, matrix, queries, 5, budget_s=1e6, device="cuda:1", rate=1e9)
    assert built == ["cuda:1"] and planned.report.method == "exact" and planned.topk is not None
    assert planned.search(queries[:20]) == neighbours.exact_search(ids, matrix, queries[:20], 5)


def test_device_topk_runs_on_the_cpu_off_cuda_and_reads_memory_maps_by_block(tmp_path, data):
    matrix, queries = data
    assert str(neighbours.device_topk(matrix, None).device) == "cpu"
    assert str(neighbours.device_topk(matrix, "cpu").device) == "cpu"
    np.save(tmp_path / "v.npy", matrix)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    search = neighbours.device_topk(mapped, "cpu")
    assert search.resident is False and search.resident is not neighbours.device_topk(matrix, "cpu").resident
    np.testing.assert_array_equal(search(queries, 9)[0], exact_topk(matrix, queries, 9)[0])


def test_probe_rate_on_the_cpu_times_a_block():
    matrix = np.random.default_rng(0).normal(size=(40_000, 8)).astype(np.float32)
    assert neighbours.probe_rate(matrix, matrix[:100], 5) > 0


def test_mining_and_remining_pass_their_device_to_the_search(embedded, monkeypatch):  # noqa: F811
    backend, queries, encoder = embedded
    seen = []
    real = neighbours.plan_search

    def recording(*args, device=None, **kwargs):
        seen.append(device)
        return real(*args, **kwargs)

    monkeypatch.setattr("rgpl_adapt.mining.plan_search", recording)
    mine_negatives(queries[:20], backend, retrievers=[("r", encoder)], bm25=False, k=5, device="cuda:3")
    backend.put_vectors("student", [f"d{i}" for i in range(10)], np.eye(10, 16, dtype=np.float32))
    remine_pools(queries[:4], backend, "student", np.ones((4, 16), np.float32), 3, device="cuda:0")
    assert seen == ["cuda:3", "cuda:0"]
