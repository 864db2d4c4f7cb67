"""Searcher: one query encoding shared by the legs of a hybrid query, the warm encoder, HNSW when serving."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from rgpl_plugin.embedded import EmbeddedBackend

from rgpl_adapt.config import ExportConfig
from rgpl_adapt.export import export_model
from rgpl_adapt.onnx_encoder import OnnxEncoder
from rgpl_adapt.pipeline import DENSE_SPACE, PipelineError
from rgpl_adapt.serving import SERVE_HNSW_THRESHOLD, Searcher


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_student, documents) -> Path:
    """A finished run folder as far as serving reads it: index/ with dense vectors, export/onnx."""
    run = tmp_path_factory.mktemp("serving-run")
    texts = [d.full_text() for d in documents]
    export_model(tiny_student, run / "export", ExportConfig(), sample_texts=texts[:6])
    encoder = OnnxEncoder(run / "export", providers=["CPUExecutionProvider"])
    with EmbeddedBackend.create(run / "index", documents) as backend:
        backend.put_vectors(DENSE_SPACE, [d.id for d in documents], encoder.encode(texts))
    return run


class Counting:
    """Records every text the wrapped OnnxEncoder really encodes (cache hits encode nothing)."""

    def __init__(self, encoder: OnnxEncoder) -> None:
        self.texts: list[str] = []
        real = encoder.encode

        def encode(texts, batch_size=64, progress=None):  # noqa: ANN001
            self.texts.extend(texts)
            return real(texts, batch_size=batch_size)

        encoder.encode = encode


def test_one_encoding_feeds_both_legs_and_repeats(run_dir):
    with Searcher(run_dir) as searcher:
        encoder = searcher.encoder
        assert isinstance(encoder, OnnxEncoder)  # the export's ONNX graph, loaded once and warm
        counting = Counting(encoder)
        hybrid = searcher.search("vitamin bone", 5)
        assert counting.texts == ["vitamin bone"]
        reference = OnnxEncoder(run_dir / "export", providers=["CPUExecutionProvider"]).encode(["vitamin bone"])
        backend = searcher.backend
        assert hybrid == backend.hybrid_search(DENSE_SPACE, ["vitamin bone"], reference, 5, weight=0.5)[0]
        dense = searcher.search("vitamin bone", 5, mode="dense")
        searcher.search("vitamin bone", 5, weight=0.2)
        assert counting.texts == ["vitamin bone"]  # the other mode and weight reused the cached vector
        assert dense == searcher.backend.knn_search(DENSE_SPACE, reference, 5)[0]
        searcher.search("tumor growth", 5)
        searcher.search("tumor growth", 5, mode="bm25")
        assert counting.texts == ["vitamin bone", "tumor growth"]
        assert searcher.encoder is encoder


def test_serving_index_uses_hnsw_above_its_threshold(run_dir, documents):
    if importlib.util.find_spec("usearch") is None:
        pytest.skip("HNSW needs usearch (pip install 'rgpl-adapt[hnsw]')")
    graph = run_dir / "index" / "vectors" / DENSE_SPACE / "hnsw.usearch"
    with Searcher(run_dir) as searcher:
        assert searcher.backend._vectors.hnsw_threshold == SERVE_HNSW_THRESHOLD
        exact = searcher.search("calcium", 5, mode="dense")
    assert not graph.exists()  # 60 vectors: exact
    with Searcher(run_dir, hnsw_threshold=10) as searcher:
        approx = searcher.search("calcium", 5, mode="dense")
    assert graph.is_file()
    assert len({h.doc_id for h in approx} & {h.doc_id for h in exact}) >= 4
    graph.unlink()


def test_errors_say_what_to_do(tmp_path, run_dir, documents):
    with pytest.raises(PipelineError, match="no embedded index"):
        Searcher(tmp_path / "nothing")
    with Searcher(run_dir) as searcher, pytest.raises(ValueError, match="unknown search mode"):
        searcher.search("x", mode="sparse")  # type: ignore[arg-type]
    EmbeddedBackend.create(tmp_path / "bare" / "index", documents[:3]).close()
    with Searcher(tmp_path / "bare") as searcher:
        assert searcher.search(documents[0].title.split()[0], 2, mode="bm25")
        with pytest.raises(PipelineError, match="no dense vectors"):
            searcher.search("vitamin", 2)
    assert np.isclose(Searcher(run_dir).weight, 0.5)  # no serve manifest: the documented default
