"""runfolder.corpus_encoder: which path encodes a corpus for serving, by the documented rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from rgpl_adapt.config import ExportConfig
from rgpl_adapt.encoding import SentenceTransformerEncoder
from rgpl_adapt.export import export_model
from rgpl_adapt.onnx_encoder import OnnxEncoder
from rgpl_adapt.runfolder import corpus_encoder


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_student, documents) -> Path:
    out = tmp_path_factory.mktemp("runfolder-export")
    export_model(tiny_student, out, ExportConfig(), sample_texts=[d.full_text() for d in documents[:6]])
    return out


def test_bf16_precision_encodes_the_corpus_with_torch_bf16(export_dir, documents):
    encoder, path = corpus_encoder(export_dir, True, "bf16", "cpu")
    assert path == "torch bf16 autocast"
    assert isinstance(encoder, SentenceTransformerEncoder) and encoder.autocast_bf16
    texts = [d.full_text() for d in documents[:8]]
    ref = OnnxEncoder(export_dir, providers=["CPUExecutionProvider"]).encode(texts)
    got = encoder.encode(texts)
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.99  # the same model, rounded to bf16 inside


def test_fp32_precision_encodes_with_the_onnx_graph_spinning(export_dir):
    encoder, path = corpus_encoder(export_dir, True, "fp32", "cpu")
    assert path == "onnx model_opt.onnx" and isinstance(encoder, OnnxEncoder)
    spin = encoder.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")
    assert spin == "1"


def test_auto_follows_the_cpu(export_dir, monkeypatch):
    import rgpl_adapt.encoding as encoding

    encoding.cpu_has_bf16.cache_clear()
    monkeypatch.setattr(encoding, "cpu_has_bf16", lambda: False)
    assert corpus_encoder(export_dir, True, "auto", "cpu")[1] == "onnx model_opt.onnx"
    monkeypatch.setattr(encoding, "cpu_has_bf16", lambda: True)
    assert corpus_encoder(export_dir, True, "auto", "cpu")[1] == "torch bf16 autocast"
    assert corpus_encoder(export_dir, False, "fp32", "cpu")[1] == "torch fp32"  # no ONNX wanted
