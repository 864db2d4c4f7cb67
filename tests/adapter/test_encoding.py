import numpy as np
import pytest

from rgpl_adapt.encoding import SentenceTransformerEncoder, encode_texts
from tests.conftest import TEST_DEVICE


@pytest.fixture(scope="module")
def model(tiny_student):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_student), device=TEST_DEVICE)


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored(model, training):
    """The reference GPL code left the student in eval mode after encoding; we must not."""
    model.train(training)
    encode_texts(model, ["a b c", "vitamin d"], batch_size=1)
    assert model.training is training


def test_length_sorted_batches_keep_input_order(model):
    texts = ["short", "a much longer text about vitamin d and bone fractures in the elderly", "mid length text"]
    model.eval()
    expected = model.encode(texts, convert_to_numpy=True)
    got = encode_texts(model, texts, batch_size=2)
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_normalize_gives_unit_vectors(model):
    vecs = SentenceTransformerEncoder(model, normalize=True).encode(["one text", "another one"])
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_bf16_autocast_is_close_to_fp32_and_float32(model):
    """bf16 autocast moves vectors only slightly, returns float32, and restores the mode."""
    import torch

    texts = ["vitamin d and bone fractures in the elderly", "tumor growth", "heart artery blood pressure study"]
    model.train()
    fp32 = encode_texts(model, texts, batch_size=2)
    bf16 = encode_texts(model, texts, batch_size=2, autocast_bf16=True)
    assert model.training and bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert not np.array_equal(bf16, fp32)  # the forward really ran in bfloat16
    cos = np.sum(bf16 * fp32, axis=1) / (np.linalg.norm(bf16, axis=1) * np.linalg.norm(fp32, axis=1))
    assert cos.min() > 0.99
    assert not torch.is_autocast_cpu_enabled() if hasattr(torch, "is_autocast_cpu_enabled") else True
    enc = SentenceTransformerEncoder(model, autocast_bf16=True).encode(texts)
    np.testing.assert_allclose(enc, bf16, atol=1e-6)


def test_max_seq_len_is_capped_at_the_models_positions(tiny_student):
    """--max-seq-len 350 on a model with 128 positions must not crash on long passages."""
    from rgpl_adapt.models import load_sentence_transformer

    model = load_sentence_transformer(str(tiny_student), "cpu", max_seq_len=350)
    assert model.max_seq_length == 128
    vecs = encode_texts(model, ["vitamin bone " * 300])
    assert vecs.shape == (1, 32)


def test_encode_precision_rule(monkeypatch):
    from rgpl_adapt import encoding

    assert encoding.encode_precision("fp32", "cpu") == "fp32"  # an explicit setting always wins
    assert encoding.encode_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(encoding, "cpu_has_bf16", lambda: True)
    assert encoding.encode_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(encoding, "cpu_has_bf16", lambda: False)
    assert encoding.encode_precision("auto", "cpu") == "fp32"


def test_cpu_has_bf16_reads_the_cpu_flags():
    from pathlib import Path

    from rgpl_adapt.encoding import cpu_has_bf16

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this OS; cpu_has_bf16 then returns False, covered by the rule test")
    flags = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    assert cpu_has_bf16() == (" avx512_bf16" in flags or " amx_bf16" in flags)
