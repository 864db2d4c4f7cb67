import pytest
import torch

from rgpl_adapt.losses import margin_mse, similarity


def test_margin_mse_matches_definition():
    torch.manual_seed(0)
    q, p, n = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    margin = torch.randn(4)
    expected = (((q * p).sum(-1) - (q * n).sum(-1) - margin) ** 2).mean()
    assert torch.allclose(margin_mse(q, p, n, margin), expected)


def test_margin_mse_equals_sentence_transformers_loss():
    """Same number as sentence-transformers' MarginMSELoss (dot product) on the same embeddings."""
    from sentence_transformers.util import pairwise_dot_score

    torch.manual_seed(1)
    q, p, n = torch.randn(5, 6), torch.randn(5, 6), torch.randn(5, 6)
    margin = torch.randn(5)
    st = torch.nn.functional.mse_loss(pairwise_dot_score(q, p) - pairwise_dot_score(q, n), margin)
    assert torch.allclose(margin_mse(q, p, n, margin), st)


def test_cosine_really_normalises():
    a = torch.tensor([[3.0, 0.0]])
    b = torch.tensor([[10.0, 0.0]])
    assert similarity(a, b, "cosine").item() == pytest.approx(1.0)
    assert similarity(a, b, "dot").item() == pytest.approx(30.0)
    with pytest.raises(ValueError):
        similarity(a, b, "l2")
