"""Held-out pseudo queries: the split by passage, and the hybrid weight chosen on them (serve stage)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

from rgpl_plugin.base import Backend

from rgpl_adapt.records import GeneratedQuery
from rgpl_adapt.runfolder import DENSE_SPACE

__all__ = ["DEFAULT_HYBRID_WEIGHT", "MIN_DECIDE", "choose_hybrid_weight", "holdout_split"]

HOLDOUT_MIN = 200  # held-out pseudo queries wanted at least ...
HOLDOUT_SHARE = 0.05  # ... or this share of them, whichever is more,
HOLDOUT_MAX = 2000  # bounded,
HOLDOUT_CAP_SHARE = 0.2  # and never more than this share (small corpora)
MIN_DECIDE = 50  # fewer held-out queries than this: the hybrid weight falls back to the default
DEFAULT_HYBRID_WEIGHT = 0.5


def holdout_split(queries: Sequence[GeneratedQuery], seed: int) -> tuple[list[GeneratedQuery], list[GeneratedQuery]]:
    """Training queries and a held-out set for the hybrid weight and promotion checks, split by passage.

    Every query of a held-out passage is held out, so no held-out positive is ever trained on (a split
    by query leaked: other queries of the same passage trained the student towards it). The target is
    max(HOLDOUT_MIN queries, HOLDOUT_SHARE of them), bounded by HOLDOUT_MAX and by HOLDOUT_CAP_SHARE of
    the queries so that small corpora keep most for training. Deterministic for (queries, seed):
    re-adaptation uses it to compare models on the same queries.
    """
    by_doc: dict[str, list[int]] = {}
    for i, q in enumerate(queries):
        by_doc.setdefault(q.doc_id, []).append(i)
    target = min(max(HOLDOUT_MIN, math.ceil(HOLDOUT_SHARE * len(queries))), HOLDOUT_MAX,
                 int(HOLDOUT_CAP_SHARE * len(queries)))
    docs = sorted(by_doc)
    random.Random(seed).shuffle(docs)
    hold: set[int] = set()
    for doc in docs:
        if len(hold) + len(by_doc[doc]) > target:
            continue  # a passage whose queries would overshoot; a smaller one may still fit
        hold.update(by_doc[doc])
        if len(hold) >= target:
            break
    return [q for i, q in enumerate(queries) if i not in hold], [q for i, q in enumerate(queries) if i in hold]



def choose_hybrid_weight(backend: Backend, encoder, held_out: list[GeneratedQuery], k: int = 10) -> dict[str, Any]:
    """Pick the dense weight of min-max hybrid search by MRR@10 on held-out pseudo queries.

    Each held-out query's positive is the passage it was generated from, never trained on (the split
    is by passage). With fewer than MIN_DECIDE held-out queries the sweep is still reported but the
    weight is the documented default 0.5, and the reason says so. The confidence of a choice is the
    MRR gap between the best weight and the runner-up, with the number of queries it rests on.
    """
    if not held_out:
        return {"hybrid_weight": DEFAULT_HYBRID_WEIGHT, "hybrid_weight_reason": "default (no held-out queries)",
                "hybrid_heldout_queries": 0}
    texts = [q.text for q in held_out]
    vecs = encoder.encode(texts, batch_size=64)
    sweep: dict[str, float] = {}
    for w in [i / 10 for i in range(11)]:
        results = backend.hybrid_search(DENSE_SPACE, texts, vecs, k, weight=w, method="min_max")
        rr = 0.0
        for q, hits in zip(held_out, results):
            for rank, hit in enumerate(hits, 1):
                if hit.doc_id == q.doc_id:
                    rr += 1.0 / rank
                    break
        sweep[f"{w:.1f}"] = round(rr / len(held_out), 4)
    ranked = sorted(sweep, key=lambda key: (sweep[key], -abs(float(key) - 0.5)), reverse=True)
    best, runner_up = ranked[0], ranked[1]
    gap = round(sweep[best] - sweep[runner_up], 4)
    out = {"hybrid_sweep_mrr": sweep, "hybrid_heldout_queries": len(held_out), "hybrid_weight_gap": gap,
           "hybrid_weight_runner_up": float(runner_up)}
    if len(held_out) < MIN_DECIDE:
        out.update(hybrid_weight=DEFAULT_HYBRID_WEIGHT,
                   hybrid_weight_reason=(f"default {DEFAULT_HYBRID_WEIGHT}: only {len(held_out)} held-out pseudo "
                                         f"queries (< {MIN_DECIDE}), too few to choose (the sweep's best was {best})"))
        return out
    out.update(hybrid_weight=float(best),
               hybrid_weight_reason=(f"best MRR@{k} {sweep[best]:.4f} on {len(held_out)} held-out pseudo queries "
                                     f"(runner-up {runner_up}: {gap:+.4f} behind)"))
    return out
