"""EmbeddedBackend: build, reopen, BM25, documents, vector spaces, HNSW and hybrid search."""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from rgpl_plugin.base import Backend, BackendError, Document
from rgpl_plugin.embedded import EmbeddedBackend, is_index
from rgpl_plugin.fusion import fuse


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory, documents) -> Path:
    path = tmp_path_factory.mktemp("embedded") / "index"
    EmbeddedBackend.create(path, documents).close()
    return path


@pytest.fixture()
def backend(index_dir):
    b = EmbeddedBackend.open(index_dir)
    yield b
    b.close()


def brute_force(matrix: np.ndarray, ids: list[str], queries: np.ndarray, k: int) -> list[list[str]]:
    scores = queries @ matrix.T
    return [[ids[j] for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


def clustered(rng: np.random.Generator, n: int, dim: int, clusters: int = 20) -> np.ndarray:
    centers = rng.normal(size=(clusters, dim))
    x = centers[rng.integers(0, clusters, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------- build and open
def test_create_builds_a_complete_index(index_dir, documents, backend):
    assert isinstance(backend, Backend)
    assert backend.name == "embedded"
    assert backend.count() == len(documents)
    meta = json.loads((index_dir / "backend.json").read_text())
    assert meta["format_version"] == 1 and meta["doc_count"] == len(documents)
    assert meta["duplicate_ids"] == 0 and meta["spaces"] == {}
    assert (index_dir / "tantivy").is_dir() and (index_dir / "docs.sqlite").is_file()
    assert not list(index_dir.parent.glob(".index.building-*"))


def test_duplicate_ids_keep_the_first_and_are_counted(tmp_path, documents):
    dupes = [Document(id=d.id, text="replacement text that must not win", title="") for d in documents[:4]]
    with EmbeddedBackend.create(tmp_path / "idx", [*documents, *dupes]) as b:
        assert b.count() == len(documents)
        assert b.duplicate_ids == 4
        assert b.get_documents([documents[0].id]) == [documents[0]]
        assert b.bm25_search(["replacement"], 5) == [[]]


def test_create_refuses_to_overwrite_unless_asked(tmp_path, documents):
    path = tmp_path / "idx"
    EmbeddedBackend.create(path, documents[:10]).close()
    with pytest.raises(BackendError, match="overwrite=True"):
        EmbeddedBackend.create(path, documents)
    with EmbeddedBackend.create(path, documents[:20], overwrite=True) as b:
        assert b.count() == 20
    other = tmp_path / "not-an-index"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(BackendError, match="not an empty folder"):
        EmbeddedBackend.create(other, documents, overwrite=True)
    assert (other / "notes.txt").read_text() == "keep me"


def test_open_does_not_rebuild(index_dir, monkeypatch):
    before = {p: p.stat().st_mtime_ns for p in index_dir.rglob("*") if p.is_file()}

    def no_build(*args, **kwargs):
        raise AssertionError("open() must not rebuild the index")

    monkeypatch.setattr("rgpl_plugin.embedded._build", no_build)
    with EmbeddedBackend.open(index_dir) as b:
        assert b.count() == 60
        assert b.bm25_search(["vitamin"], 3)[0]
        assert len(list(b.iter_documents())) == 60
    after = {p: p.stat().st_mtime_ns for p in index_dir.rglob("*") if p.is_file()}
    assert after == before


def test_open_rejects_a_folder_that_is_not_an_index(tmp_path):
    with pytest.raises(BackendError, match="not an embedded rgpl index"):
        EmbeddedBackend.open(tmp_path)
    (tmp_path / "backend.json").write_text("{not json")
    assert not is_index(tmp_path)
    with pytest.raises(BackendError, match="EmbeddedBackend.create"):
        EmbeddedBackend.open(tmp_path)


def test_create_reports_progress(tmp_path, documents):
    updates: list[int] = []
    seen: dict = {}

    @contextmanager
    def recording(total=None, desc="", unit="it"):
        seen.update(total=total, desc=desc)

        class Bar:
            def update(self, n=1):
                updates.append(n)

            def set_postfix(self, **values):
                pass

        yield Bar()

    EmbeddedBackend.create(tmp_path / "idx", documents, progress=recording).close()
    assert seen["total"] == len(documents) and sum(updates) == len(documents)


# ------------------------------------------------------------------------- BM25
def test_bm25_ranks_topic_documents_first(backend, documents):
    titles = {d.id: d.title for d in documents}
    [hits] = backend.bm25_search(["vitamin calcium bone"], 10)
    assert len(hits) == 10
    assert all(titles[h.doc_id].startswith("vitamin") for h in hits[:5])
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    # English stemming: plural and inflected forms match the indexed words
    assert [h.doc_id for h in backend.bm25_search(["Bones Vitamins"], 5)[0]] == [
        h.doc_id for h in backend.bm25_search(["bone vitamin"], 5)[0]
    ]


NASTY = [
    'vitamin: "bone" AND (calcium) -dose?',
    "vitamin AND OR NOT bone",
    'title:vitamin text:"bone',
    "(((vitamin",
    "vitamin^2 bone~ calc* [a TO z] {b} \\ / ! + - && || ' `",
    "?",
    "",
    "   ",
    ":-)",
    "AND",
    "x" * 500,
    "d\u00e9mence c\u00e9r\u00e9brale \u8111 \U0001f9e0 vitamin",
]


def test_bm25_accepts_any_query_string(backend):
    results = backend.bm25_search(NASTY, 5)
    assert len(results) == len(NASTY)
    plain = [h.doc_id for h in backend.bm25_search(["vitamin bone calcium dose"], 5)[0]]
    assert [h.doc_id for h in results[0]] == plain  # operators and punctuation are plain text
    assert results[1] and results[2] and results[3] and results[4]
    for empty in ("?", "", "   ", ":-)"):
        assert results[NASTY.index(empty)] == []
    assert results[-1], "a query with one known word among unicode must still match"


def test_bm25_validates_arguments(backend):
    with pytest.raises(TypeError, match="sequence of strings"):
        backend.bm25_search("vitamin", 5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="k must be"):
        backend.bm25_search(["vitamin"], 0)


# -------------------------------------------------------------------- documents
def test_get_documents_keeps_request_order_and_raises_on_unknown(backend, documents):
    by_id = {d.id: d for d in documents}
    ids = ["d42", "d3", "d42", "d0"]
    assert backend.get_documents(ids) == [by_id[i] for i in ids]
    assert backend.get_documents([]) == []
    with pytest.raises(KeyError, match="nope"):
        backend.get_documents(["d1", "nope"])


def test_iter_documents_is_stable_and_complete(backend, documents):
    assert list(backend.iter_documents(batch_size=7)) == documents
    assert list(backend.iter_documents(batch_size=1000)) == documents


def test_closed_backend_says_to_reopen(index_dir):
    b = EmbeddedBackend.open(index_dir)
    b.close()
    with pytest.raises(BackendError, match="closed"):
        b.get_documents(["d1"])


# ---------------------------------------------------------------------- vectors
def test_put_vectors_in_batches_and_knn_is_exact(backend, documents):
    rng = np.random.default_rng(0)
    ids = [d.id for d in documents]
    matrix = rng.normal(size=(len(ids), 24)).astype(np.float32)
    for start in range(0, len(ids), 25):
        backend.put_vectors("exact", ids[start : start + 25], matrix[start : start + 25])
    assert backend.has_vectors("exact")
    queries = rng.normal(size=(7, 24)).astype(np.float32)
    hits = backend.knn_search("exact", queries, 10)
    assert [[h.doc_id for h in row] for row in hits] == brute_force(matrix, ids, queries, 10)
    row_of = {i: n for n, i in enumerate(ids)}
    for q, row in zip(queries, hits):
        assert [h.score for h in row] == pytest.approx(
            [float(matrix[row_of[h.doc_id]] @ q) for h in row], rel=1e-5
        )
    assert len(backend.knn_search("exact", queries[:1], 500)[0]) == len(ids)  # k > n: every vector
    meta = json.loads((backend.path / "backend.json").read_text())
    assert meta["spaces"]["exact"] == {"dim": 24}
    backend.drop_vectors("exact")


def test_put_vectors_replaces_by_id(backend):
    base = np.eye(4, dtype=np.float32)
    backend.put_vectors("replace", ["d0", "d1", "d2", "d3"], base)
    assert backend.knn_search("replace", base[1:2], 1)[0][0].doc_id == "d1"
    # move d0 onto d1's axis (and d3 away); repeated id in one call: the last vector wins
    backend.put_vectors(
        "replace", ["d0", "d3", "d3"], np.array([[0, 2, 0, 0], [0, 0, 0, 9], [0, 0, 0, -1]], np.float32)
    )
    top = backend.knn_search("replace", base[1:2], 4)[0]
    assert [h.doc_id for h in top][:2] == ["d0", "d1"] and top[0].score == pytest.approx(2.0)
    assert len(top) == 4  # replaced, not appended
    assert backend.knn_search("replace", base[3:4], 4)[0][-1] == top[-1].__class__("d3", -1.0)
    with EmbeddedBackend.open(backend.path) as reopened:  # replacement persisted
        assert reopened.knn_search("replace", base[1:2], 1)[0][0].doc_id == "d0"
    backend.drop_vectors("replace")


def test_drop_vectors_and_errors(backend):
    backend.put_vectors("tmp", ["d0"], np.ones((1, 3), np.float32))
    backend.drop_vectors("tmp")
    assert not backend.has_vectors("tmp")
    backend.drop_vectors("tmp")  # no-op
    with pytest.raises(KeyError, match="put_vectors"):
        backend.knn_search("tmp", np.ones((1, 3), np.float32), 1)
    backend.put_vectors("dims", ["d0"], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="3-d vectors"):
        backend.put_vectors("dims", ["d1"], np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        backend.knn_search("dims", np.ones((1, 4), np.float32), 1)
    with pytest.raises(ValueError, match="must match"):
        backend.put_vectors("dims", ["d1", "d2"], np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        backend.put_vectors("dims", ["d1"], np.full((1, 3), np.nan, np.float32))
    backend.drop_vectors("dims")
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(ValueError, match="invalid vector space name"):
            backend.put_vectors(bad, ["d0"], np.ones((1, 3), np.float32))


def _usearch_after_onnxruntime():
    """``usearch.index`` loaded as the store loads it (onnxruntime first: the other order segfaults later tests)."""
    from rgpl_adapt.devices import require_usearch

    try:
        return require_usearch()
    except ImportError as exc:
        pytest.skip(f"HNSW needs usearch (pip install 'rgpl-adapt[hnsw]'); the exact path is tested without it: {exc}")


def test_hnsw_agrees_with_exact(tmp_path, documents):
    _usearch_after_onnxruntime()
    rng = np.random.default_rng(1)
    n, dim = 3000, 32
    ids = [f"v{i}" for i in range(n)]
    matrix = clustered(rng, n, dim)
    queries = clustered(rng, 50, dim)
    path = tmp_path / "idx"
    EmbeddedBackend.create(path, documents[:5]).close()
    with EmbeddedBackend.open(path, hnsw_threshold=1000) as b:
        b.put_vectors("big", ids, matrix)
        approx = b.knn_search("big", queries, 10)
    graph = path / "vectors" / "big" / "hnsw.usearch"
    assert graph.is_file()
    exact = brute_force(matrix, ids, queries, 10)
    recall = np.mean([len({h.doc_id for h in a} & set(e)) / 10 for a, e in zip(approx, exact)])
    assert recall >= 0.95
    row_of = {i: n for n, i in enumerate(ids)}
    for q, row in zip(queries, approx):  # HNSW candidates carry exact inner products, best first
        assert [h.score for h in row] == pytest.approx(
            [float(matrix[row_of[h.doc_id]] @ q) for h in row], rel=1e-5
        )
        assert [h.score for h in row] == sorted((h.score for h in row), reverse=True)
    mtime = graph.stat().st_mtime_ns
    with EmbeddedBackend.open(path, hnsw_threshold=1000) as b:  # reuses the saved graph
        assert b.knn_search("big", queries, 10) == approx
        maps = Path("/proc/self/maps")
        if maps.exists():  # Linux: the graph is searched memory-mapped, not read into the process
            assert str(graph.resolve()) in maps.read_text()
    assert graph.stat().st_mtime_ns == mtime
    with EmbeddedBackend.open(path, hnsw_threshold=1000) as b:  # a write invalidates the graph
        b.put_vectors("big", ["v0"], -matrix[:1])
        assert b.knn_search("big", matrix[:1], 3000)[0][-1].doc_id == "v0"


def test_hnsw_falls_back_to_exact_without_usearch(tmp_path, documents, monkeypatch, caplog):
    from rgpl_adapt import devices

    real_require = devices.require

    def fake_require(module, extra=None, package=None):
        if module.startswith("usearch"):
            return real_require("usearch_is_not_installed_here", extra=extra)
        return real_require(module, extra=extra, package=package)

    monkeypatch.setattr(devices, "require", fake_require)
    rng = np.random.default_rng(2)
    matrix = rng.normal(size=(40, 8)).astype(np.float32)
    ids = [f"v{i}" for i in range(40)]
    EmbeddedBackend.create(tmp_path / "idx", documents[:5]).close()
    with caplog.at_level(logging.WARNING), EmbeddedBackend.open(tmp_path / "idx", hnsw_threshold=10) as b:
        b.put_vectors("s", ids, matrix)
        hits = b.knn_search("s", matrix[:3], 5)
    assert [[h.doc_id for h in row] for row in hits] == brute_force(matrix, ids, matrix[:3], 5)
    assert "rgpl-adapt[hnsw]" in caplog.text
    assert not (tmp_path / "idx" / "vectors" / "s" / "hnsw.usearch").exists()


# ----------------------------------------------------------------------- hybrid
def test_hybrid_weight_extremes_follow_each_retriever(backend, documents):
    rng = np.random.default_rng(3)
    ids = [d.id for d in documents]
    matrix = rng.normal(size=(len(ids), 16)).astype(np.float32)
    backend.put_vectors("hyb", ids, matrix)
    texts = ["vitamin calcium bone", "tumor chemotherapy", "zzz unknown"]
    vectors = rng.normal(size=(3, 16)).astype(np.float32)
    k = 8
    bm25 = backend.bm25_search(texts, k)
    dense = backend.knn_search("hyb", vectors, k)
    lexical = backend.hybrid_search("hyb", texts, vectors, k, weight=0.0)
    semantic = backend.hybrid_search("hyb", texts, vectors, k, weight=1.0)
    for b, d, lex, sem in zip(bm25, dense, lexical, semantic):
        assert [h.doc_id for h in lex][: len(b)] == [h.doc_id for h in b]
        assert [h.doc_id for h in sem] == [h.doc_id for h in d]
        assert len(lex) == k
    assert lexical[2] and all(h.score == 0.0 for h in lexical[2])  # no BM25 match: dense docs at 0
    mixed = backend.hybrid_search("hyb", texts, vectors, k, weight=0.3, method="rrf")
    assert mixed == [fuse(b, d, k, method="rrf") for b, d in zip(bm25, dense)]
    with pytest.raises(ValueError, match="must match"):
        backend.hybrid_search("hyb", texts[:2], vectors, k)
    backend.drop_vectors("hyb")


def test_hnsw_search_then_onnxruntime_import_does_not_crash(tmp_path, documents):
    """Importing onnxruntime after usearch segfaults (usearch 2.26, onnxruntime 1.32); the vector store
    loads onnxruntime first, so a process may load an ONNX encoder after an HNSW search."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("usearch") is None or importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("needs usearch and onnxruntime (pip install 'rgpl-adapt[hnsw]'); without usearch the store "
                    "searches exactly and never imports it")
    EmbeddedBackend.create(tmp_path / "idx", documents[:5]).close()
    script = (
        "import numpy as np\n"
        "from rgpl_plugin.embedded import EmbeddedBackend\n"
        f"b = EmbeddedBackend.open({str(tmp_path / 'idx')!r}, hnsw_threshold=10)\n"
        "m = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)\n"
        "b.put_vectors('s', [f'v{i}' for i in range(50)], m)\n"
        "assert len(b.knn_search('s', m[:1], 5)[0]) == 5\n"
        "import onnxruntime\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]



def test_hnsw_graph_saved_with_other_settings_is_rebuilt(tmp_path, documents):
    from rgpl_plugin.vectors import HNSW_DTYPE

    usearch_index = _usearch_after_onnxruntime()
    rng = np.random.default_rng(4)
    matrix = clustered(rng, 300, 16)
    ids = [f"v{i}" for i in range(300)]
    EmbeddedBackend.create(tmp_path / "idx", documents[:5]).close()
    with EmbeddedBackend.open(tmp_path / "idx", hnsw_threshold=100) as b:
        b.put_vectors("s", ids, matrix)
        b.knn_search("s", matrix[:1], 5)  # merges and builds the graph
    graph = tmp_path / "idx" / "vectors" / "s" / "hnsw.usearch"
    old = usearch_index.Index(ndim=16, metric="ip", dtype="f32", connectivity=16)  # an earlier version's graph
    old.add(np.arange(300, dtype=np.uint64), matrix)
    old.save(str(graph))
    with EmbeddedBackend.open(tmp_path / "idx", hnsw_threshold=100) as b:
        hits = b.knn_search("s", matrix[:3], 5)
    assert [row[0].doc_id for row in hits] == ids[:3]
    assert str(usearch_index.Index.restore(str(graph)).dtype).lower().endswith(HNSW_DTYPE)


def test_ids_resolve_through_the_id_table_like_through_sqlite(index_dir, documents):
    from rgpl_plugin.idtable import IDS_BLOB, IDS_OFFSETS

    assert (index_dir / IDS_OFFSETS).is_file() and (index_dir / IDS_BLOB).is_file()
    with EmbeddedBackend.open(index_dir) as b:
        assert b._id_table is not None
        ords = [len(documents) - 1, 0, 3, 3]
        assert b.ids_of_ords(ords) == [documents[o].id for o in ords]


def test_an_index_without_id_table_resolves_ids_in_sqlite(tmp_path, documents):
    from rgpl_plugin.idtable import IDS_BLOB, IDS_OFFSETS

    EmbeddedBackend.create(tmp_path / "idx", documents).close()
    with EmbeddedBackend.open(tmp_path / "idx") as b:
        with_table = b.bm25_search(["vitamin calcium bone", "tumor"], 5)
    (tmp_path / "idx" / IDS_OFFSETS).unlink()
    (tmp_path / "idx" / IDS_BLOB).unlink()
    with EmbeddedBackend.open(tmp_path / "idx") as b:
        assert b._id_table is None
        assert b.bm25_search(["vitamin calcium bone", "tumor"], 5) == with_table
        assert b.ids_of_ords([2, 0]) == [documents[2].id, documents[0].id]


def test_hybrid_legs_in_threads_give_the_sequential_results(tmp_path, documents):
    rng = np.random.default_rng(5)
    EmbeddedBackend.create(tmp_path / "idx", documents).close()
    with EmbeddedBackend.open(tmp_path / "idx") as b:
        b.put_vectors("legs", [d.id for d in documents], rng.normal(size=(len(documents), 16)).astype(np.float32))
    texts = ["vitamin calcium bone", "tumor chemotherapy", "zzz unknown", "insulin"]
    vectors = rng.normal(size=(4, 16)).astype(np.float32)
    results = {}
    for mode in ("sequential", "threads", "auto"):
        with EmbeddedBackend.open(tmp_path / "idx", legs=mode) as b:
            assert b.legs.mode == mode
            results[mode] = [b.hybrid_search("legs", texts, vectors, 6, weight=0.4) for _ in range(12)]
    assert results["threads"] == results["sequential"] == results["auto"]
    assert len(results["threads"][0]) == 4 and all(len(hits) == 6 for hits in results["threads"][0])
