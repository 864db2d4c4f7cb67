"""Exact vs HNSW dense search: evaluation always exact, mining/remining by a time budget, recall recorded."""

from __future__ import annotations

import numpy as np
import pytest

from rgpl_adapt import neighbours
from rgpl_adapt.mining import mine_negatives, remine_pools
from rgpl_adapt.neighbours import exact_search, plan_search, recall_at_k
from rgpl_adapt.records import GeneratedQuery
from rgpl_plugin.base import Document, Hit
from rgpl_plugin.vectors import exact_topk


def _clustered(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 centres (a cosine space, where HNSW reaches 0.99 recall@10 at ef 128-256)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    vectors = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_running_topk_over_chunks_equals_a_full_sort():
    matrix, queries = _clustered(1000), _clustered(37, seed=1)
    matrix[500] = matrix[3]  # a tie at the top, in another chunk: the lower row comes first
    queries[0] = matrix[3]
    rows, scores = exact_topk(matrix, queries, 15, chunk_rows=64)  # 16 chunks, running top-k
    full = queries @ matrix.T
    for i in range(len(queries)):
        order = np.lexsort((np.arange(len(matrix)), -full[i]))[:15]
        assert rows[i].tolist() == order.tolist()
        np.testing.assert_allclose(scores[i], full[i][order], rtol=1e-5)
    assert rows[0, 0] == 3 and rows[0, 1] == 500


def test_exact_search_reads_a_memory_map(tmp_path):
    matrix = _clustered(300)
    np.save(tmp_path / "v.npy", matrix)
    mapped = np.load(tmp_path / "v.npy", mmap_mode="r")
    ids = [f"d{i}" for i in range(300)]
    hits = exact_search(ids, mapped, matrix[:2], 5)
    assert [h.doc_id for h in hits[0]][0] == "d0" and len(hits[1]) == 5


def test_within_budget_is_exact():
    matrix, queries = _clustered(500), _clustered(50, seed=2)
    planned = plan_search([str(i) for i in range(500)], matrix, queries, 10, budget_s=60, rate=1e9)
    r = planned.report
    assert r.method == "exact" and r.recall_at_k is None and r.estimated_exact_s <= 60
    assert "fits the budget" in r.reason


def test_over_budget_uses_hnsw_with_measured_recall():
    matrix, queries = _clustered(3000, dim=24), _clustered(300, dim=24, seed=3)
    ids = [str(i) for i in range(len(matrix))]
    planned = plan_search(ids, matrix, queries, 10, budget_s=1, rate=1e3)  # exact "takes" ~1000 s
    r = planned.report
    assert r.method == "hnsw" and r.recall_sample == 200 and r.recall_at_k >= 0.99
    assert r.expansion_search in neighbours.EXPANSIONS and "> budget" in r.reason and r.hnsw_seconds > 0
    got = planned.search(queries)
    assert recall_at_k(got, exact_search(ids, matrix, queries, 10)) >= 0.98  # the sample speaks for the rest
    assert all(len(h) == 10 for h in got)


def test_unreachable_recall_falls_back_to_exact_and_says_so(caplog):
    matrix, queries = _clustered(2000), _clustered(40, seed=4)
    planned = plan_search([str(i) for i in range(2000)], matrix, queries, 10, budget_s=0, rate=1e3,
                          recall_target=1.01)
    r = planned.report
    assert r.method == "exact" and "fell back to exact" in r.reason and r.recall_sample == 40
    assert r.reason.count("ef ") == len(neighbours.EXPANSIONS)
    assert "fell back to exact" in caplog.text  # logged as a warning


def test_without_usearch_over_budget_is_exact(monkeypatch):
    def missing(matrix):
        raise ImportError("usearch.index is needed; run: pip install 'rgpl-adapt[hnsw]'")

    monkeypatch.setattr(neighbours, "_build_hnsw", missing)
    planned = plan_search(["a", "b"], np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32), 1, budget_s=0, rate=1.0)
    assert planned.report.method == "exact" and "usearch is not installed" in planned.report.reason
    assert [h[0].doc_id for h in planned.search(np.eye(2, dtype=np.float32))] == ["a", "b"]


def test_probe_rate_is_positive():
    assert neighbours.probe_rate(_clustered(100), _clustered(10), 5) > 0


def test_recall_at_k():
    exact = [[Hit("a", 1), Hit("b", 1)], [Hit("c", 1)]]
    assert recall_at_k([[Hit("a", 1), Hit("x", 1)], [Hit("c", 1)]], exact) == pytest.approx(0.75)


# -- through the embedded backend: the budget decision both ways, recorded --------------------------

class _VectorEncoder:
    """Documents 'dN' map to clustered vectors; queries are their documents' vectors plus noise."""

    def __init__(self, vectors: dict[str, np.ndarray]) -> None:
        self.vectors = vectors

    def encode(self, texts, batch_size=32, progress=None):
        return np.stack([self.vectors[t] for t in texts])


@pytest.fixture()
def embedded(tmp_path):
    from rgpl_plugin.embedded import EmbeddedBackend

    matrix = _clustered(1500)
    docs = [Document(f"d{i}", f"doc{i}") for i in range(len(matrix))]
    vectors = {f"doc{i}": matrix[i] for i in range(len(matrix))}
    queries = [GeneratedQuery(f"q{i}", f"query{i}", f"d{i}") for i in range(0, 1500, 5)]
    rng = np.random.default_rng(9)
    vectors.update({q.text: matrix[int(q.doc_id[1:])] + 0.1 * rng.normal(size=16).astype(np.float32)
                    for q in queries})
    with EmbeddedBackend.create(tmp_path / "idx", docs) as backend:
        yield backend, queries, _VectorEncoder(vectors)


def test_mining_budget_decides_exact_or_hnsw_and_records_it(embedded, monkeypatch):
    backend, queries, encoder = embedded
    exact_reports: dict = {}
    exact = mine_negatives(queries, backend, retrievers=[("r", encoder)], bm25=False, k=10,
                           exact_budget_s=1e6, search_reports=exact_reports)
    assert exact_reports["r"]["method"] == "exact" and exact_reports["r"]["budget_s"] == 1e6
    monkeypatch.setattr(neighbours, "probe_rate", lambda *a: 1e3)  # a slow machine: exact would take minutes
    hnsw_reports: dict = {}
    approx = mine_negatives(queries, backend, retrievers=[("r", encoder)], bm25=False, k=10,
                            exact_budget_s=1.0, search_reports=hnsw_reports)
    r = hnsw_reports["r"]
    assert r["method"] == "hnsw" and r["recall_at_k"] >= 0.99 and r["recall_sample"] == 200
    same = np.mean([len(set(a.negatives["r"]) & set(e.negatives["r"])) / 10 for a, e in zip(approx, exact)])
    assert same >= 0.97
    assert not backend.has_vectors("miner-r")


def test_remining_records_how_it_searched(embedded):
    backend, queries, encoder = embedded
    backend.put_vectors("student-r1", [f"d{i}" for i in range(1500)], encoder.encode([f"doc{i}" for i in range(1500)]))
    reports: dict = {}
    pools = remine_pools(queries, backend, "student-r1", encoder.encode([q.text for q in queries]), 5,
                         exact_budget_s=0.0, search_reports=reports)
    assert reports["student"]["method"] == "hnsw" and reports["student"]["recall_at_k"] >= 0.99
    assert all(q.doc_id not in p.all_ids() for q, p in zip(queries, pools))


def test_training_evaluator_is_exact_above_the_hnsw_threshold(tmp_path, beir_dir, tiny_student, documents,
                                                              monkeypatch):
    """With the embedded backend's HNSW threshold below the corpus size, evaluation still never uses it."""
    from sentence_transformers import SentenceTransformer

    from rgpl_adapt.compare import make_training_evaluator
    from rgpl_adapt.evaluation import load_qrels, load_queries
    from rgpl_plugin.embedded import EmbeddedBackend

    def no_approximate_search(self, *args, **kwargs):
        raise AssertionError("evaluation must not use the backend's (approximate) k-NN")

    monkeypatch.setattr(EmbeddedBackend, "knn_search", no_approximate_search)
    with EmbeddedBackend.create(tmp_path / "idx", documents, hnsw_threshold=5) as backend:
        evaluator = make_training_evaluator(backend, load_qrels(beir_dir / "qrels" / "test.tsv"),
                                            load_queries(beir_dir / "queries.jsonl"))
        metrics = evaluator(SentenceTransformer(str(tiny_student), device="cpu"))
    assert metrics["recall@100"] == pytest.approx(1.0)


def test_eval_vectors_come_from_the_local_space_or_a_memory_mapped_file(tmp_path, documents):
    from contextlib import ExitStack

    from rgpl_adapt.compare import corpus_vectors
    from rgpl_adapt.progress import silent

    class Enc:
        def encode(self, texts, batch_size=64, progress=None):
            return np.array([[len(t), 1.0] for t in texts], dtype=np.float32)

    class Remote:  # a backend whose vectors live elsewhere (no vector_matrix)
        def count(self):
            return len(documents)

        def iter_documents(self, batch_size=1000):
            yield from documents

    with ExitStack() as scratch:
        ids, matrix = corpus_vectors(Remote(), "dense", Enc(), silent, scratch)
        assert isinstance(matrix, np.memmap) and len(ids) == len(documents)  # ids by row, looked up for hits
        assert ids.many(range(len(documents))) == [d.id for d in documents]
        assert matrix[0, 0] == len(documents[0].full_text())
        folder = matrix.filename
    import os

    assert not os.path.exists(folder)


# -- a cluster's own k-NN: recall measured against its exact search on a sample --------------------

class _EngineKnn:
    """A backend whose approximate k-NN misses the true best hit of every ``miss_every``-th query."""

    name = "engine"

    def __init__(self, matrix, miss_every=0, exact_fails=False):
        self.matrix, self.miss_every, self.exact_fails, self.calls = matrix, miss_every, exact_fails, []

    def count(self):
        return len(self.matrix)

    def knn_search(self, space, queries, k, *, exact=None):
        self.calls.append((len(queries), exact))
        if exact and self.exact_fails:
            raise RuntimeError("script_score refused")
        hits = exact_search([f"d{i}" for i in range(len(self.matrix))], self.matrix, queries, k + 1)
        out = []
        for i, hs in enumerate(hits):
            miss = not exact and self.miss_every and i % self.miss_every == 0
            out.append(hs[1:] if miss else hs[:k])
        return out


def test_cluster_recall_is_measured_on_a_sample_and_a_low_one_is_flagged(caplog):
    matrix, queries = _clustered(400), _clustered(300, seed=5)
    good = neighbours.measure_backend(_EngineKnn(matrix), "s", queries, 10)
    assert good.method == "backend" and good.recall_at_k == 1.0 and good.recall_sample == 200
    engine = _EngineKnn(matrix, miss_every=2)
    low = neighbours.measure_backend(engine, "s", queries, 10)
    assert low.recall_at_k == pytest.approx(0.95, abs=0.01) and "--miner local" in low.reason
    assert "below 0.99" in caplog.text
    assert engine.calls == [(200, True), (200, None)]  # only the sample is searched twice
    failed = neighbours.measure_backend(_EngineKnn(matrix, exact_fails=True), "s", queries, 10)
    assert failed.recall_at_k is None and "not measured" in failed.reason


def test_cli_exact_budget_sets_mining_and_remining():
    from rgpl_adapt.cli import _build_config

    cfg = _build_config({"exact_budget_s": 30.0, "scale": "cpu"})
    assert cfg.mining.exact_budget_s == 30.0 and cfg.remine.exact_budget_s == 30.0
    default = _build_config({"scale": "cpu"})
    assert default.mining.exact_budget_s == neighbours.DEFAULT_EXACT_BUDGET_S == default.remine.exact_budget_s
