"""Warm start of a re-adaptation: from the serving model, fewer steps, old documents' queries reused.

Nothing here changes :mod:`rgpl_adapt.pipeline`; it prepares what the pipeline reads:

* :func:`warm_config`: the run's config with ``training.student`` = the serving model and fewer
  steps; ``remine.every`` shrinks so at least one remining round still happens;
* :func:`seed_queries`: pre-fills the new run folder's ``queries/parts/`` the way the queries
  stage leaves them after an interruption (``pending.json`` key + ``part-*.jsonl`` with their
  ``.stats.json``), holding the previous version's queries for unchanged documents and freshly
  generated ones for new and changed documents. The stage then reuses the parts and generates
  nothing. :func:`queries_upstream` computes the stage's upstream fingerprint exactly as the
  pipeline does (it must match, or the stage discards the parts: then it simply regenerates all).
* :func:`holdout_split` (from :mod:`rgpl_adapt.pipeline`): the train / held-out split of the pseudo queries.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.manifest import Manifest
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.records import Document, GeneratedQuery, read_jsonl, write_jsonl

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


def queries_upstream(cfg: AdaptConfig, docs: Sequence[Document] | None = None, backend_name: str | None = None) -> str:
    """The fingerprint the queries stage sees as upstream: the embedded index stage's (from the
    corpus file), or, for a cluster backend, ``name:count:docs fingerprint``."""
    if backend_name is not None:
        from rgpl_adapt.cluster import docs_fingerprint

        assert docs is not None
        return f"{backend_name}:{len(docs)}:{docs_fingerprint(docs)}"
    from rgpl_adapt.corpus import fingerprint

    return Manifest.for_inputs("index", upstream="", corpus=fingerprint(cfg.corpus.path, cfg.corpus)).fingerprint


def seed_queries(
    run_dir: str | Path,
    cfg: AdaptConfig,
    docs: Sequence[Document],
    reuse: Mapping[str, Sequence[GeneratedQuery]],
    upstream: str,
    *,
    device: str = "cpu",
    progress: ProgressFactory = silent,
) -> dict[str, Any]:
    """Pre-fill ``<run_dir>/queries/parts`` with reused + newly generated queries.

    Returns ``{"reused": n, "generated": n, "passages_generated": n}``."""
    from rgpl_adapt.generation import (
        GenerationStats,
        generate_queries,
        load_generator,
        plan_generation,
        query_key,
    )

    gc = cfg.generation
    selected, qpp = plan_generation(list(docs), gc, random.Random(gc.seed))
    fresh = [d for d in selected if d.id not in reuse]
    reused = {d.id: list(reuse[d.id]) for d in selected if d.id in reuse}
    seen = {query_key(q.text) for qs in reused.values() for q in qs}
    generated: list[GeneratedQuery] = []
    stats = GenerationStats(passages=len(selected), passages_used=len(selected) - len(fresh), queries_per_passage=qpp,
                            kept=sum(len(v) for v in reused.values()))
    if fresh:
        generator = load_generator(gc, device)
        generated, new_stats = generate_queries(fresh, generator, gc, qpp=qpp, seen=seen, progress=progress)
        stats = stats.merged(replace(new_stats, passages=0))
    by_doc: dict[str, list[GeneratedQuery]] = dict(reused)
    for q in generated:
        by_doc.setdefault(q.doc_id, []).append(q)
    ordered = [q for d in selected for q in by_doc.get(d.id, [])]

    parts = Path(run_dir) / "queries" / "parts"
    parts.mkdir(parents=True, exist_ok=True)
    for old in parts.glob("part-*"):
        old.unlink()
    key = Manifest.for_inputs("queries-parts", upstream=upstream, gen=gc).fingerprint
    (parts.parent / "pending.json").write_text(json.dumps({"key": key}))
    chunk = max(gc.batch_size * 8, 256)
    n_parts = max(1, math.ceil(len(selected) / chunk))
    for i in range(n_parts):  # everything in the first part; the stage concatenates the parts
        part = parts / f"part-{i:05d}.jsonl"
        write_jsonl(part, ordered if i == 0 else [])
        part_stats = stats if i == 0 else GenerationStats()
        part.with_suffix(".stats.json").write_text(json.dumps(part_stats.__dict__))
    n_reused = sum(len(v) for v in reused.values())
    log.info("queries: %d reused from the previous version, %d generated for %d new/changed passages",
             n_reused, len(generated), len(fresh))
    return {"reused": n_reused, "generated": len(generated), "passages_generated": len(fresh)}
