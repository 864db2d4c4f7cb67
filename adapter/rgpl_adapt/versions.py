"""Model (and index) versions of a re-adapted target: promotion, retention, rollback.

Each adaptation is a new version ``N`` (1, 2, ...). On the embedded backend its run folder is
``<run root>/versions/vNNNN`` and the serving version is the symlink ``<run root>/current``
(swapped atomically, so ``rgpl-adapt search --run <run root>/current`` always finds a complete
version) plus the store's :class:`~rgpl_adapt.state.ServingRecord`. On a cluster it is also the
index ``<alias>-rgpl-<version name>`` behind the alias (:mod:`rgpl_plugin.opensearch_publish`).

* :func:`decide_promotion`: a new version is promoted only if it is not worse than the serving
  one on held-out pseudo queries: ``MRR@10(new) >= MRR@10(serving) - tolerance``.
* :func:`plan_retention`: which versions to delete so that the last ``keep`` promoted versions
  (the serving one included) remain; never the serving one, so deleting happens only after the
  pointer/alias moved.
* :func:`rollback_embedded`: serve the previous kept version again.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rgpl_adapt.state import RunRecord, ServingRecord, StateStore

log = logging.getLogger(__name__)

DEFAULT_KEEP = 2
DEFAULT_TOLERANCE = 0.01
CURRENT = "current"


@dataclass(frozen=True)
class PromotionDecision:
    """The promotion rule, both numbers, and the verdict (written to the run's promotion.json)."""

    promoted: bool
    rule: str
    new_mrr: float | None
    serving_mrr: float | None
    tolerance: float
    queries: int
    reason: str
    new_version: int | None = None
    serving_version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decide_promotion(
    new_mrr: float, serving_mrr: float | None, *, tolerance: float = DEFAULT_TOLERANCE, queries: int = 0,
    new_version: int | None = None, serving_version: int | None = None,
) -> PromotionDecision:
    """Promote when nothing serves yet, or when ``new_mrr >= serving_mrr - tolerance``."""
    rule = f"promote if MRR@10(new) >= MRR@10(serving) - {tolerance:g} on held-out pseudo queries"
    common: dict[str, Any] = {"rule": rule, "new_mrr": new_mrr, "serving_mrr": serving_mrr, "tolerance": tolerance,
                              "queries": queries, "new_version": new_version, "serving_version": serving_version}
    if serving_mrr is None:
        return PromotionDecision(True, reason="no version serves yet", **common)
    if new_mrr >= serving_mrr - tolerance:
        return PromotionDecision(
            True, reason=f"MRR@10 {new_mrr:.4f} >= {serving_mrr:.4f} - {tolerance:g} (serving v{serving_version})",
            **common)
    return PromotionDecision(
        False, reason=f"MRR@10 {new_mrr:.4f} < {serving_mrr:.4f} - {tolerance:g}: v{serving_version} keeps serving",
        **common)


def mrr_at_k(rankings: Sequence[Sequence[str]], positives: Sequence[str], k: int = 10) -> float:
    """Mean reciprocal rank of each query's positive within its top ``k`` ids."""
    if not rankings:
        return 0.0
    total = 0.0
    for ranked, pos in zip(rankings, positives):
        for rank, doc_id in enumerate(ranked[:k], 1):
            if doc_id == pos:
                total += 1.0 / rank
                break
    return total / len(rankings)


def next_version(runs: Sequence[RunRecord]) -> int:
    return max((r.version for r in runs), default=0) + 1


def plan_retention(runs: Sequence[RunRecord], serving: int | None, keep: int = DEFAULT_KEEP) -> list[int]:
    """Versions whose artefacts can go: all but the serving version and the newest ``keep - 1``
    other promoted versions (the rollback targets). Running versions are never listed."""
    if keep < 1:
        raise ValueError("keep must be at least 1 (the serving version)")
    promoted = sorted((r.version for r in runs if r.promoted and r.version != serving), reverse=True)
    kept = set(promoted[: keep - 1])
    if serving is not None:
        kept.add(serving)
    return sorted(r.version for r in runs if r.version not in kept and r.status != "running")


# -- embedded --------------------------------------------------------------------------------------


def version_dir(run_root: str | os.PathLike, version: int) -> Path:
    return Path(run_root) / "versions" / f"v{version:04d}"


def point_current(run_root: str | os.PathLike, version: int) -> Path:
    """Atomically point ``<run root>/current`` at version ``version`` (a relative symlink)."""
    root = Path(run_root)
    link = root / CURRENT
    tmp = root / f".{CURRENT}.tmp"
    tmp.unlink(missing_ok=True)
    os.symlink(Path("versions") / f"v{version:04d}", tmp)
    os.replace(tmp, link)
    return link


def current_version_dir(run_root: str | os.PathLike) -> Path | None:
    link = Path(run_root) / CURRENT
    return link.resolve() if link.exists() else None


def promote_embedded(store: StateStore, target: str, run_root: str | os.PathLike, version: int,
                     *, index_version: str | None = None) -> ServingRecord:
    """Serve ``version``: swap the pointer, then record it (the previous version is remembered)."""
    old = store.serving(target)
    point_current(run_root, version)
    record = ServingRecord(target=target, version=version, since=store.clock(), previous=old.version if old else None,
                           run_dir=str(version_dir(run_root, version)), index_version=index_version)
    store.set_serving(record)
    return record


def rollback_target(store: StateStore, target: str) -> RunRecord:
    """The version to go back to: the newest promoted version older than the serving one whose
    artefacts still exist (run folder present, or an index version recorded)."""
    serving = store.serving(target)
    if serving is None:
        raise ValueError(f"{target!r} has no serving version; nothing to roll back")
    for run in store.runs(target):
        if run.version < serving.version and run.promoted and (run.index_version or Path(run.run_dir).is_dir()):
            return run
    raise ValueError(
        f"{target!r} serves v{serving.version} and no older promoted version is kept (raise --keep to keep more)"
    )


def rollback_embedded(store: StateStore, target: str, run_root: str | os.PathLike) -> ServingRecord:
    """Serve the previous kept version again; the version rolled back from stays on disk."""
    back = rollback_target(store, target)
    serving = store.serving(target)
    point_current(run_root, back.version)
    record = ServingRecord(target=target, version=back.version, since=store.clock(),
                           previous=serving.version if serving else None, run_dir=back.run_dir,
                           index_version=back.index_version)
    store.set_serving(record)
    log.info("%s: rolled back to v%d", target, back.version)
    return record


def prune_embedded(store: StateStore, target: str, run_root: str | os.PathLike, keep: int = DEFAULT_KEEP) -> list[int]:
    """Delete run folders (and snapshots) of versions outside the retention; returns them."""
    serving = store.serving(target)
    removed = []
    for version in plan_retention(store.runs(target), serving.version if serving else None, keep):
        folder = version_dir(run_root, version)
        if folder.exists():
            shutil.rmtree(folder)
            removed.append(version)
        store.delete_snapshot(target, version)
    return removed


def prune_cluster_indices(client: Any, alias: str, runs: Sequence[RunRecord], serving: int | None,
                          keep: int = DEFAULT_KEEP) -> list[str]:
    """Delete the index versions outside the retention, never one the alias points at now
    (checked live, so this only deletes after the alias moved)."""
    from rgpl_plugin.opensearch_publish import alias_state

    _, live = alias_state(client, alias)
    doomed = set(plan_retention(runs, serving, keep))
    deleted = []
    for run in runs:
        name = run.index_version
        if run.version in doomed and name and name not in live and client.indices.exists(index=name):
            client.indices.delete(index=name)
            deleted.append(name)
    return deleted


def versions_table(runs: Sequence[RunRecord], serving: int | None) -> list[Mapping[str, Any]]:
    """Rows for ``status``: version, status, promoted, MRRs, reason, serving marker."""
    return [
        {
            "version": r.version,
            "serving": r.version == serving,
            "status": r.status,
            "started_at": r.started_at,
            "finished_at": r.finished_at,
            "documents": r.snapshot.get("documents"),
            "drift": r.drift.get("share"),
            "new_mrr": r.metrics.get("new_mrr"),
            "serving_mrr": r.metrics.get("serving_mrr"),
            "reason": r.reason or (r.error or ""),
        }
        for r in runs
    ]
