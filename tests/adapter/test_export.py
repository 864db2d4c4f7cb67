"""ONNX export: parity with torch (mean and CLS+Normalize), truncation, int8, failure, ML Commons zip."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rgpl_adapt.config import ExportConfig
from rgpl_adapt.export import ExportError, export_model, package_for_ml_commons, sha256_file
from rgpl_adapt.onnx_encoder import OnnxEncoder
from tests.conftest import build_tiny_student

MAX_SEQ_LEN = 64  # what build_tiny_student sets


def sample_texts(documents) -> list[str]:
    texts = [d.full_text() for d in documents[:12]]
    long_text = " ".join(d.full_text() for d in documents[:10])  # several hundred tokens
    return texts + [long_text, "short", long_text + " " + long_text]


@pytest.fixture(scope="module")
def mean_export(tmp_path_factory, tiny_student, documents):
    out = tmp_path_factory.mktemp("export-mean")
    result = export_model(tiny_student, out, ExportConfig(int8=True, fp16=True), sample_texts=sample_texts(documents))
    return result


@pytest.fixture(scope="module")
def cls_export(tmp_path_factory, documents):
    model_dir = build_tiny_student(tmp_path_factory.mktemp("cls-model") / "student", documents, pooling="cls", normalize=True)
    out = tmp_path_factory.mktemp("export-cls")
    result = export_model(model_dir, out, ExportConfig(), sample_texts=sample_texts(documents))
    return model_dir, result


def load_st(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu").eval()


def test_layout_metadata_and_result(mean_export):
    r = mean_export
    onnx_dir = Path(r.onnx_dir)
    for name in ("model.onnx", "model_opt.onnx", "model_int8.onnx", "tokenizer.json", "rgpl_onnx.json",
                 "config.json"):
        assert (onnx_dir / name).is_file(), name
    assert (Path(r.st_dir) / "modules.json").is_file()
    meta = json.loads((onnx_dir / "rgpl_onnx.json").read_text())
    assert meta["pooling"] == r.pooling == "mean"
    assert meta["normalize"] is r.normalize is False
    assert meta["dim"] == r.dim == 32
    assert meta["max_seq_len"] == r.max_seq_len == MAX_SEQ_LEN
    assert meta["similarity"] == "dot"
    # TorchScript at opset 17 / IR 8: the portable graph loads in ML Commons' onnxruntime 1.14 and 1.16
    assert (r.exporter, r.opset) == ("torchscript", 17) and r.ir_version <= 8
    assert meta["ir_version"] == r.ir_version
    assert meta["optimized"]["file"] == "model_opt.onnx" and meta["optimized"]["fused"] == r.fused_ops
    assert 0.0 <= r.max_abs_diff <= r.tolerance
    assert r.onnx_sha256 == hashlib.sha256((onnx_dir / "model.onnx").read_bytes()).hexdigest()
    assert r.int8_sha256 == sha256_file(onnx_dir / "model_int8.onnx")


def test_fused_graph_is_served_by_default_and_matches_the_portable_one(mean_export, tiny_student, documents):
    import onnx

    # every attention layer of the 2-layer tiny BERT fused into one onnxruntime Attention node
    assert mean_export.fused_ops.get("Attention") == 2, mean_export.fused_ops
    ops = {n.op_type for n in onnx.load(mean_export.optimized_path).graph.node}
    assert "Attention" in ops and "Softmax" not in ops
    portable_ops = {(n.domain or "ai.onnx") for n in onnx.load(mean_export.onnx_path).graph.node}
    assert portable_ops == {"ai.onnx"}, "model.onnx must use standard ONNX operators only"
    assert mean_export.optimized_max_abs_diff <= mean_export.tolerance
    default = OnnxEncoder(mean_export.out_dir)
    plain = OnnxEncoder(mean_export.out_dir, optimized=False)
    assert default.graph_path.name == "model_opt.onnx" and plain.graph_path.name == "model.onnx"
    # heavy padding (one long text among short ones) and a batch without any padding
    texts = [" ".join(d.full_text() for d in documents[:3])] + ["a", "b c", "vitamin d"]
    ref = load_st(tiny_student).encode(texts, convert_to_numpy=True)
    for batch_size in (4, 1):
        np.testing.assert_allclose(default.encode(texts, batch_size=batch_size), ref, atol=1e-5, rtol=0)
        np.testing.assert_allclose(plain.encode(texts, batch_size=batch_size), ref, atol=1e-5, rtol=0)


def test_export_without_optimize_serves_the_portable_graph(tmp_path, tiny_student, documents):
    r = export_model(tiny_student, tmp_path / "e", ExportConfig(optimize=False), sample_texts=sample_texts(documents))
    assert r.optimized_path is None and r.fused_ops == {}
    assert not (Path(r.onnx_dir) / "model_opt.onnx").exists()
    assert OnnxEncoder(r.out_dir).graph_path.name == "model.onnx"
    with pytest.raises(FileNotFoundError, match="optimize"):
        OnnxEncoder(r.out_dir, optimized=True)


def test_graph_has_dynamic_batch_and_sequence_axes(mean_export):
    import onnx

    graph = onnx.load(mean_export.onnx_path).graph
    assert [i.name for i in graph.input] == list(mean_export.input_names)
    assert [o.name for o in graph.output] == ["token_embeddings", "sentence_embedding"]
    for tensor in graph.input:
        dims = tensor.type.tensor_type.shape.dim
        assert dims[0].dim_param and dims[1].dim_param, f"{tensor.name} has a fixed batch/sequence size"
    out_dims = graph.output[1].type.tensor_type.shape.dim
    assert out_dims[0].dim_param and out_dims[1].dim_value == 32


def test_mean_pooling_parity_with_torch_on_unseen_texts(mean_export, tiny_student, documents):
    texts = [d.full_text() for d in documents[20:45]] + ["a", "vitamin"]
    ref = load_st(tiny_student).encode(texts, convert_to_numpy=True)
    got = OnnxEncoder(mean_export.out_dir).encode(texts, batch_size=8)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_cls_normalize_parity_and_unit_norm(cls_export, documents):
    model_dir, r = cls_export
    assert (r.pooling, r.normalize) == ("cls", True)
    texts = [d.full_text() for d in documents[30:50]]
    model = load_st(model_dir)
    ref = model.encode(texts, convert_to_numpy=True)
    got = OnnxEncoder(r.out_dir).encode(texts, batch_size=6)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # CLS pooling really is the first token: mean pooling of the same tokens gives other vectors
    feats = model.preprocess(texts[:2])
    import torch

    with torch.no_grad():
        tokens = model[0](dict(feats))["token_embeddings"]
    cls = torch.nn.functional.normalize(tokens[:, 0], dim=-1).numpy()
    np.testing.assert_allclose(got[:2], cls, atol=1e-5)


def test_truncation_matches_sentence_transformers(mean_export, tiny_student, documents):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(mean_export.onnx_dir) / "tokenizer.json"))
    assert tok.truncation["max_length"] == MAX_SEQ_LEN
    base = " ".join(d.full_text() for d in documents[:8])
    tok.no_truncation()
    assert len(tok.encode(base, add_special_tokens=False).ids) > 2 * MAX_SEQ_LEN
    texts = [base, base + " tumor cancer cell growth", "short text"]
    ref = load_st(tiny_student).encode(texts, convert_to_numpy=True)
    got = OnnxEncoder(mean_export.out_dir).encode(texts)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    # both long texts share their first 64 tokens, so truncation makes them identical
    np.testing.assert_allclose(got[0], got[1], atol=1e-6)


def test_int8_export_is_reported_and_close(mean_export, documents):
    r = mean_export
    assert r.int8_path is not None and Path(r.int8_path).stat().st_size > 0
    assert 0.95 <= r.int8_cosine <= 1.0 + 1e-6
    assert r.int8_max_abs_diff is not None and r.int8_max_abs_diff > 0.0  # quantization changed something
    texts = [d.full_text() for d in documents[:10]]
    fp32 = OnnxEncoder(r.out_dir).encode(texts)
    int8 = OnnxEncoder(r.out_dir, int8=True).encode(texts)
    assert not np.array_equal(fp32, int8)
    cos = np.sum(fp32 * int8, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    assert cos.min() > 0.95


# The CUDA session falls back to the CPU where onnxruntime has no CUDA provider: its warning is expected here.
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider':UserWarning")
def test_fp16_export_is_checked_recorded_and_chosen_on_cuda_only(mean_export, tiny_student, documents):
    r = mean_export
    assert r.fp16_path is not None and Path(r.fp16_path).name == "model_fp16.onnx"
    assert 0.999 <= r.fp16_cosine <= 1.0 + 1e-6 and 0.0 < r.fp16_max_abs_diff < 0.05
    import onnx

    weights = onnx.load(r.fp16_path).graph.initializer
    assert any(w.data_type == onnx.TensorProto.FLOAT16 for w in weights)  # really float16 inside
    meta = json.loads((Path(r.onnx_dir) / "rgpl_onnx.json").read_text())
    assert meta["fp16"]["file"] == "model_fp16.onnx" and meta["fp16"]["cosine"] == pytest.approx(r.fp16_cosine)
    texts = [d.full_text() for d in documents[10:20]]
    half = OnnxEncoder(r.out_dir, fp16=True, providers=["CPUExecutionProvider"])
    ref = load_st(tiny_student).encode(texts, convert_to_numpy=True)
    got = half.encode(texts)
    assert got.dtype == np.float32  # float32 in and out
    cos = np.sum(ref * got, axis=1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    assert cos.min() > 0.999 and not np.array_equal(ref, got)
    assert OnnxEncoder(r.out_dir, providers=["CPUExecutionProvider"]).graph_path.name == "model_opt.onnx"
    on_cuda = OnnxEncoder(r.out_dir, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert on_cuda.graph_path.name == "model_fp16.onnx"  # picked for CUDA (the session falls back to CPU here)
    with pytest.raises(ValueError, match="one of int8 and fp16"):
        OnnxEncoder(r.out_dir, int8=True, fp16=True)


def test_perturbed_graph_fails_the_parity_check(tmp_path, tiny_student, documents, monkeypatch):
    import onnx
    from onnx import numpy_helper

    import rgpl_adapt.export as export_mod

    real = export_mod._export_graph

    def export_then_perturb(graph, sample, input_names, path, opset):
        used = real(graph, sample, input_names, path, opset)
        model = onnx.load(str(path))
        biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
        arr = numpy_helper.to_array(biggest).copy()
        arr += np.random.default_rng(0).normal(0.0, 0.05, arr.shape).astype(arr.dtype)  # not a constant shift
        biggest.CopyFrom(numpy_helper.from_array(arr, biggest.name))
        onnx.save(model, str(path))
        return used

    monkeypatch.setattr(export_mod, "_export_graph", export_then_perturb)
    with pytest.raises(ExportError, match=r"max abs .* above the tolerance 0\.0001"):
        export_model(tiny_student, tmp_path / "out", ExportConfig(), sample_texts=sample_texts(documents)[:4])


def test_export_needs_sample_texts(tmp_path, tiny_student):
    with pytest.raises(ValueError, match="sample_texts"):
        export_model(tiny_student, tmp_path, ExportConfig(), sample_texts=[])


def test_ml_commons_zip_contents_hash_and_config(mean_export, tmp_path, tiny_student):
    zip_path, digest, cfg = package_for_ml_commons(mean_export.out_dir, tmp_path / "m.zip")
    data = Path(zip_path).read_bytes()
    assert digest == hashlib.sha256(data).hexdigest()
    with zipfile.ZipFile(zip_path) as zf:
        assert sorted(zf.namelist()) == ["model.onnx", "tokenizer.json"]
        assert zf.read("model.onnx") == Path(mean_export.onnx_path).read_bytes()
        zf.extractall(tmp_path / "unzipped")
    assert cfg["model_type"] == "bert"
    assert cfg["embedding_dimension"] == 32
    assert cfg["framework_type"] == "sentence_transformers"
    assert cfg["pooling_mode"] == "mean"
    assert cfg["normalize_result"] is False
    assert cfg["model_max_length"] == MAX_SEQ_LEN
    assert json.loads(cfg["all_config"])["hidden_size"] == 32

    # What ML Commons does with it: one sentence, no padding, output 0 = token embeddings, pooled by it.
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tmp_path / "unzipped" / "tokenizer.json"))
    sess = ort.InferenceSession(str(tmp_path / "unzipped" / "model.onnx"), providers=["CPUExecutionProvider"])
    text = "vitamin d calcium bone fracture in elderly patients"
    enc = tok.encode(text)
    feed = {"input_ids": [enc.ids], "attention_mask": [enc.attention_mask], "token_type_ids": [enc.type_ids]}
    first = sess.run(None, {k: np.asarray(v, dtype=np.int64) for k, v in feed.items()})[0][0]
    pooled = first.mean(axis=0)  # mask is all ones for a single unpadded sentence
    ref = load_st(tiny_student).encode([text], convert_to_numpy=True)[0]
    np.testing.assert_allclose(pooled, ref, atol=1e-5)


def test_ml_commons_rejects_models_it_cannot_pool(mean_export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(mean_export.onnx_dir, copy / "onnx")
    meta_path = copy / "onnx" / "rgpl_onnx.json"
    meta = json.loads(meta_path.read_text())
    meta["modules"] = ["Transformer", "Pooling", "Dense"]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ExportError, match="Dense"):
        package_for_ml_commons(copy, tmp_path / "x.zip")
    with pytest.raises(ExportError, match="not an export folder"):
        package_for_ml_commons(tmp_path / "nowhere", tmp_path / "y.zip")


def test_export_of_an_in_memory_model_leaves_it_alone_and_drops_stale_int8(mean_export, tmp_path, tiny_student, documents):
    import shutil

    model = load_st(tiny_student)
    model.train()
    out = tmp_path / "out"
    (out / "onnx").mkdir(parents=True)
    shutil.copy(mean_export.int8_path, out / "onnx" / "model_int8.onnx")  # left over from an earlier run
    r = export_model(model, out, ExportConfig(int8=False), sample_texts=sample_texts(documents)[:4])
    assert model.training, "the caller's model must keep its mode"
    assert r.int8_path is None and r.int8_cosine is None
    assert not (out / "onnx" / "model_int8.onnx").exists()
    assert r.max_abs_diff <= r.tolerance
