"""OnnxEncoder: equality with torch embeddings, order restoration, folders, providers, int8."""

from __future__ import annotations

import random
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from rgpl_adapt.config import ExportConfig
from rgpl_adapt.encoding import SentenceTransformerEncoder, TextEncoder
from rgpl_adapt.export import export_model, quantize_int8
from rgpl_adapt.onnx_encoder import OnnxEncoder, default_providers, resolve_onnx_dir


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, tiny_student, documents) -> Path:
    out = tmp_path_factory.mktemp("onnx-encoder")
    texts = [d.full_text() for d in documents[:6]]
    export_model(tiny_student, out, ExportConfig(), sample_texts=texts)
    return out


@pytest.fixture(scope="module")
def torch_model(tiny_student):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_student), device="cpu").eval()


def mixed_texts(documents) -> list[str]:
    texts = [d.full_text() for d in documents]
    texts += ["x", "", "vitamin d", " ".join(d.text for d in documents[:6])]  # empty and over-long texts
    random.Random(1).shuffle(texts)
    return texts


def test_is_a_text_encoder_with_dim(export_dir):
    import inspect

    enc: TextEncoder = OnnxEncoder(export_dir)
    # TextEncoder is a plain Protocol: check the method shape it declares
    expected = list(inspect.signature(TextEncoder.encode).parameters)[1:]
    assert list(inspect.signature(enc.encode).parameters) == expected
    assert enc.dim == 32 and enc.max_seq_len == 64 and enc.normalize is False


def test_equals_torch_embeddings(export_dir, torch_model, documents):
    texts = mixed_texts(documents)
    ref = SentenceTransformerEncoder(torch_model).encode(texts, batch_size=16)
    got = OnnxEncoder(export_dir).encode(texts, batch_size=16)
    assert got.dtype == np.float32 and got.shape == (len(texts), 32)
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)


def test_order_is_restored_whatever_the_batching(export_dir, documents):
    enc = OnnxEncoder(export_dir)
    texts = mixed_texts(documents)
    one_by_one = np.stack([enc.encode([t])[0] for t in texts])
    for batch_size in (1, 5, 64):
        np.testing.assert_allclose(enc.encode(texts, batch_size=batch_size), one_by_one, atol=1e-5)
    # rows follow the input: encoding the reversed list gives reversed rows
    np.testing.assert_allclose(enc.encode(texts[::-1], batch_size=7), one_by_one[::-1], atol=1e-5)
    # distinct texts give distinct vectors, so a mix-up would be visible
    assert not np.allclose(one_by_one[0], one_by_one[1])


def test_empty_input_and_progress_reports_every_text(export_dir, documents):
    enc = OnnxEncoder(export_dir)
    assert enc.encode([]).shape == (0, 32)
    seen = []

    @contextmanager
    def recording(total=None, desc="", unit="it"):
        class Bar:
            def update(self, n=1):
                seen.append(n)

            def set_postfix(self, **values):
                pass

        seen.append(("total", total))
        yield Bar()

    enc.encode([d.text for d in documents[:10]], batch_size=4, progress=recording)
    assert seen == [("total", 10), 4, 4, 2]
    with pytest.raises(ValueError, match="batch_size"):
        enc.encode(["a"], batch_size=0)


def test_folder_resolution_and_errors(export_dir, tmp_path):
    assert resolve_onnx_dir(export_dir) == export_dir / "onnx"
    assert resolve_onnx_dir(export_dir / "onnx") == export_dir / "onnx"
    direct = OnnxEncoder(export_dir / "onnx").encode(["gene dna"])
    np.testing.assert_array_equal(direct, OnnxEncoder(export_dir).encode(["gene dna"]))
    with pytest.raises(FileNotFoundError, match="rgpl_onnx.json"):
        OnnxEncoder(tmp_path)
    with pytest.raises(FileNotFoundError, match="int8"):
        OnnxEncoder(export_dir, int8=True)


def test_providers_default_and_override(export_dir):
    import onnxruntime as ort

    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() else "CPUExecutionProvider"
    assert default_providers()[0] == expected
    assert OnnxEncoder(export_dir).session.get_providers()[0] == expected
    enc = OnnxEncoder(export_dir, providers=["CPUExecutionProvider"], threads=1)
    assert enc.session.get_providers() == ["CPUExecutionProvider"]


def test_int8_graph(export_dir, tmp_path, documents):
    import shutil

    onnx_dir = tmp_path / "onnx"
    shutil.copytree(export_dir / "onnx", onnx_dir)
    quantize_int8(onnx_dir / "model.onnx", onnx_dir / "model_int8.onnx")
    texts = [d.full_text() for d in documents[:12]]
    fp32 = OnnxEncoder(onnx_dir).encode(texts)
    int8 = OnnxEncoder(onnx_dir, int8=True)
    assert int8.graph_path.name == "model_int8.onnx"
    q = int8.encode(texts)
    cos = np.sum(fp32 * q, axis=1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(q, axis=1))
    assert cos.min() > 0.95 and not np.array_equal(fp32, q)


def test_length_batches_pad_each_batch_to_its_own_longest_text(export_dir, torch_model, documents):
    enc = OnnxEncoder(export_dir, providers=["CPUExecutionProvider"])
    texts = mixed_texts(documents)
    widths = []
    for idx, feed in enc._length_batches(texts, 4):
        lengths = feed["attention_mask"].sum(axis=1)
        assert feed["input_ids"].shape[1] == lengths.max()  # no batch padded past its longest text
        widths.append(int(lengths.max()))
        for row, i in enumerate(idx):  # the same ids as the tokenizer's own padded encoding
            ids = enc.tokenizer.encode(texts[i]).ids
            assert feed["input_ids"][row, : len(ids)].tolist() == ids
    assert widths == sorted(widths, reverse=True)
    ref = torch_model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(enc.encode(texts, batch_size=4), ref, atol=1e-5, rtol=0)


def test_batches_are_capped_by_padded_tokens(export_dir, torch_model, documents):
    texts = mixed_texts(documents)
    enc = OnnxEncoder(export_dir, providers=["CPUExecutionProvider"], max_batch_tokens=64)
    seen = []
    for idx, feed in enc._length_batches(texts, 16):
        rows, width = feed["input_ids"].shape
        assert rows == 1 or rows * width <= 64  # a text longer than the cap still runs, alone
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(texts)))
    uncapped = OnnxEncoder(export_dir, providers=["CPUExecutionProvider"], max_batch_tokens=None)
    assert all(len(i) == 16 for i, _ in list(uncapped._length_batches(texts, 16))[:-1])
    ref = torch_model.encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(enc.encode(texts, batch_size=16), ref, atol=1e-5, rtol=0)


def test_spinning_is_off_unless_asked(export_dir):
    def spinning(enc: OnnxEncoder) -> str:
        return enc.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(OnnxEncoder(export_dir, providers=["CPUExecutionProvider"])) == "0"
    assert spinning(OnnxEncoder(export_dir, providers=["CPUExecutionProvider"], spin=True)) == "1"


def test_corpus_encodes_spin_and_serving_does_not(export_dir):
    """The pipeline's corpus encodes load the export with bulk=True (spinning on); queries without."""
    from rgpl_adapt.runfolder import load_encoder

    def spinning(enc: OnnxEncoder) -> str:
        return enc.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning")

    assert spinning(load_encoder(export_dir, bulk=True)) == "1"
    assert spinning(load_encoder(export_dir)) == "0"


def test_encode_queries_encodes_each_query_once(export_dir):
    enc = OnnxEncoder(export_dir, providers=["CPUExecutionProvider"], query_cache=2)
    runs = []
    real_run = enc._run
    enc._run = lambda feed: runs.append(len(feed["input_ids"])) or real_run(feed)
    first = enc.encode_queries(["vitamin d", "bone", "vitamin d"])
    assert runs == [2]  # one batch of the two distinct queries
    np.testing.assert_allclose(first[0], first[2])
    np.testing.assert_allclose(first, enc.encode(["vitamin d", "bone", "vitamin d"]), atol=1e-6)
    again = enc.encode_queries(["bone", "vitamin d"])
    assert runs[1:] == [3]  # the encode() above; the cached queries cost no run
    np.testing.assert_allclose(again, first[[1, 0]])
    enc.encode_queries(["calcium"])  # a third query evicts the least recently used ("bone")
    assert list(enc._query_cache) == ["vitamin d", "calcium"]


def test_cuda_sessions_use_io_binding(export_dir, monkeypatch):
    """No GPU here: a stand-in session reports CUDA first; the encoder must bind its inputs and only the
    sentence_embedding output, and return what the binding copied back."""
    import onnxruntime as ort

    real = ort.InferenceSession
    calls = []
    dim = OnnxEncoder(export_dir, providers=["CPUExecutionProvider"]).dim

    class Binding:
        def bind_cpu_input(self, name, array):
            calls.append(("input", name, array.shape))

        def bind_output(self, name, device):
            calls.append(("output", name, device))

        def copy_outputs_to_cpu(self):
            return [np.full((self.n, dim), 0.5, dtype=np.float32)]

    class FakeCudaSession:
        def __init__(self, path, sess_options=None, providers=None):
            self.inner = real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])
            self.requested = providers

        def get_providers(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

        def get_inputs(self):
            return self.inner.get_inputs()

        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            binding.n = next(c[2][0] for c in reversed(calls) if c[0] == "input")

    monkeypatch.setattr(ort, "InferenceSession", FakeCudaSession)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    enc = OnnxEncoder(export_dir)
    assert enc.session.requested == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert enc.io_binding
    calls.clear()
    out = enc.encode(["a text", "another text"], batch_size=8)
    np.testing.assert_array_equal(out, np.full((2, dim), 0.5, dtype=np.float32))
    assert ("output", "sentence_embedding", "cpu") in calls
    assert {c[1] for c in calls if c[0] == "input"} == set(enc.input_names)


def test_each_process_runs_its_cuda_session_on_its_own_gpu(export_dir, monkeypatch):
    """No GPU here: onnxruntime pretends to offer CUDA and a stand-in session records what it was given.
    A process on cuda:N (a torchrun rank) asks for GPU N; cpu asks for no CUDA session at all."""
    import onnxruntime as ort

    from rgpl_adapt.runfolder import corpus_encoder, load_encoder

    real = ort.InferenceSession
    requested = []

    def recording_session(path, sess_options=None, providers=None):
        requested.append(providers)
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    cuda1 = [("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert default_providers("cuda:1") == cuda1
    assert default_providers("cuda") == default_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert default_providers("cpu") == ["CPUExecutionProvider"]
    OnnxEncoder(export_dir, device="cuda:1")
    load_encoder(export_dir, device="cuda:2")
    corpus_encoder(export_dir, True, "fp32", "cuda:3")  # fp32: the ONNX graph encodes the corpus
    load_encoder(export_dir, device="cpu")
    assert requested == [cuda1, [("CUDAExecutionProvider", {"device_id": 2}), "CPUExecutionProvider"],
                         [("CUDAExecutionProvider", {"device_id": 3}), "CPUExecutionProvider"],
                         ["CPUExecutionProvider"]]
