"""Warm start of a re-adaptation: from the serving model, fewer steps, old documents' queries reused.

* :func:`warm_config`: the run's config with ``training.student`` = the serving model and fewer
  steps; ``remine.every`` shrinks so at least one remining round still happens;
* :func:`reusable_queries`: the previous version's queries of documents whose content did not
  change, handed to ``Pipeline(reuse_queries=...)`` so only new and changed documents get new
  queries.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.records import GeneratedQuery, read_jsonl

log = logging.getLogger(__name__)



def warm_config(cfg: AdaptConfig, serving_model: str, *, steps: int | None = None) -> AdaptConfig:
    """Continue from ``serving_model`` with ``steps`` (default: a fifth of ``cfg``'s) training steps.

    Warm-up and checkpoints are scaled down with the steps; remining stays on (every half of the
    steps at most) unless ``cfg`` is plain GPL (``remine.every == 0``)."""
    tc = cfg.training
    n = steps if steps is not None else max(1, tc.steps // 5)
    if n < 1:
        raise ValueError("warm-start steps must be at least 1")
    every = cfg.remine.every
    if every:
        every = min(every, max(1, n // 2))
    return replace(
        cfg,
        training=replace(tc, student=str(serving_model), steps=n, warmup_steps=min(tc.warmup_steps, n // 10),
                         checkpoint_every=min(tc.checkpoint_every, n)),
        remine=replace(cfg.remine, every=every),
    )


def read_queries(run_dir: str | Path) -> list[GeneratedQuery]:
    """The pseudo queries of a finished run ([] when it has none)."""
    path = Path(run_dir) / "queries" / "queries.jsonl"
    return list(read_jsonl(path, GeneratedQuery)) if path.exists() else []


def reusable_queries(
    previous: Sequence[GeneratedQuery], old_hashes: Mapping[str, str] | None, new_hashes: Mapping[str, str]
) -> dict[str, list[GeneratedQuery]]:
    """The previous run's queries of documents whose content did not change, by document id."""
    if not old_hashes:
        return {}
    out: dict[str, list[GeneratedQuery]] = {}
    for q in previous:
        if q.doc_id in new_hashes and old_hashes.get(q.doc_id) == new_hashes[q.doc_id]:
            out.setdefault(q.doc_id, []).append(q)
    return out


