"""MarginMSE as a pure tensor function (the model-free part of the loss).

Hofstätter et al.'s Margin-MSE, as used by GPL: the student's margin
sim(q, pos) - sim(q, neg) regresses onto the teacher's margin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


def similarity(a: torch.Tensor, b: torch.Tensor, kind: str = "dot") -> torch.Tensor:
    """Row-wise similarity of two (batch, dim) tensors. ``cosine`` normalises both sides first."""
    import torch.nn.functional as F

    if kind == "cosine":
        a = F.normalize(a, p=2, dim=-1)
        b = F.normalize(b, p=2, dim=-1)
    elif kind != "dot":
        raise ValueError(f"unknown similarity {kind!r}: use 'dot' or 'cosine'")
    return (a * b).sum(dim=-1)


def margin_mse(
    query: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: torch.Tensor, kind: str = "dot"
) -> torch.Tensor:
    """Mean squared error between the student's margins and the teacher's ``margin``."""
    import torch.nn.functional as F

    student = similarity(query, positive, kind) - similarity(query, negative, kind)
    return F.mse_loss(student.float(), margin.float())
