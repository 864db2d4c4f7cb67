"""Paired bootstrap significance for per-query metrics (used by quality.py).

Two systems evaluated on the same queries give paired per-query scores (e.g. nDCG@10). The paired
bootstrap resamples the *queries* with replacement ``resamples`` times and counts how often the
mean difference ``b - a`` falls on the other side of zero from the observed one; the two-sided
p-value is twice that share (capped at 1), as in Sakai (2006) / the usual IR practice.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def paired_bootstrap(
    a: Mapping[str, float], b: Mapping[str, float], *, resamples: int = 10_000, seed: int = 0
) -> dict[str, float]:
    """Mean difference ``b - a`` over the queries both score, and its two-sided bootstrap p-value.

    A query missing from one side counts 0 there (a system that returns nothing scores 0).
    """
    qids = sorted(set(a) | set(b))
    if not qids:
        raise ValueError("no queries to compare")
    diff = np.array([float(b.get(q, 0.0)) - float(a.get(q, 0.0)) for q in qids])
    observed = float(diff.mean())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(resamples, len(diff)))
    means = diff[idx].mean(axis=1)
    if observed > 0:
        tail = float((means <= 0).mean())
    elif observed < 0:
        tail = float((means >= 0).mean())
    else:
        tail = 0.5
    return {"diff": observed, "p": min(1.0, 2 * tail), "queries": len(qids), "resamples": resamples}
