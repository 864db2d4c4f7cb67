"""One re-adaptation of a target, if its documents drifted: ``rgpl-adapt readapt`` and each tick
of ``rgpl-adapt schedule``.

:meth:`Readapter.run_once`:

1. measure drift against the last finished adaptation (:mod:`rgpl_adapt.readapt_drift`, the
   arithmetic in :mod:`rgpl_adapt.drift`); stop when it is below the threshold (unless forced);
2. take the target's lock (:mod:`rgpl_adapt.state`; a second concurrent run is refused, a
   crashed holder's lease expires); the lease is renewed at every stage event;
3. run the pipeline as a new version: warm-started from the serving model with fewer steps
   (remining included), the previous version's queries reused for unchanged documents
   (:mod:`rgpl_adapt.warmstart`);
4. compare new and serving models on held-out pseudo queries that neither trained on, write the
   rule and both numbers to ``promotion.json`` next to ``report.json``, and promote or not
   (embedded: the ``current`` pointer; cluster: the alias moves only when promoted);
5. prune versions beyond ``keep`` (after the pointer/alias moved), record everything, release.

Layout of an embedded target (``--out runs/docs``)::

    runs/docs/state/             FileStateStore (runs, serving, snapshots, lock)
    runs/docs/versions/v0001/    a complete pipeline run folder per version
    runs/docs/current -> versions/v0002    the serving version
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal


from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.drift import DEFAULT_THRESHOLD, DriftReport, snapshot_digest
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.promotion import GatedPublisher, candidate_ords, encoder_mrr, fair_holdout, model_key
from rgpl_adapt.readapt_drift import DocumentScan, TargetDrift
from rgpl_adapt.records import GeneratedQuery
from rgpl_adapt.state import (
    Clock,
    FileStateStore,
    LockHeldError,
    RunRecord,
    StateStore,
    default_holder,
    hold_lock,
)
from rgpl_adapt.versions import (
    DEFAULT_KEEP,
    DEFAULT_TOLERANCE,
    PromotionDecision,
    decide_promotion,
    next_version,
    promote_embedded,
    prune_cluster_indices,
    prune_embedded,
    version_dir,
)

log = logging.getLogger(__name__)

Action = Literal["skipped", "promoted", "rejected", "failed", "locked"]
EventSink = Callable[[str, dict[str, Any]], None]


def _ignore(event: str, info: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class ReadaptSettings:
    """When to adapt again and how."""

    threshold: float = DEFAULT_THRESHOLD
    drift_mode: str = "fingerprint"  # fingerprint | count | timestamp | seqno (the last two: clusters)
    timestamp_field: str | None = None
    keep: int = DEFAULT_KEEP
    tolerance: float = DEFAULT_TOLERANCE
    warm_start: bool = True
    warm_steps: int | None = None  # None: a fifth of the configured steps
    reuse_queries: bool = True
    lock_ttl_s: float = 6 * 3600.0
    eval_max_docs: int = 20_000  # promotion: exact search over at most this many documents

    def __post_init__(self) -> None:
        if self.drift_mode not in ("fingerprint", "count", "timestamp", "seqno"):
            raise ValueError(f"drift mode must be fingerprint, count, timestamp or seqno, not {self.drift_mode!r}")
        if self.drift_mode == "timestamp" and not self.timestamp_field:
            raise ValueError("drift mode 'timestamp' needs the document field holding the update time (--timestamp-field)")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a share between 0 and 1, got {self.threshold}")
        if self.keep < 1:
            raise ValueError("keep must be at least 1 (the serving version)")


@dataclass(frozen=True)
class Outcome:
    """What one :meth:`Readapter.run_once` did."""

    target: str
    action: Action
    drift: DriftReport | None
    reason: str
    version: int | None = None
    run_dir: str | None = None
    pruned: tuple[str, ...] = ()
    promotion: dict[str, Any] = field(default_factory=dict)


@dataclass
class ClusterTarget:
    """A cluster index to re-adapt: client or settings, the adapt options, and a client for state."""

    client_or_settings: Any
    options: Any  # rgpl_adapt.cluster.ClusterOptions
    client: Any  # an OpenSearch / Elasticsearch client (state, drift counts, pruning)

    @property
    def alias(self) -> str:
        return self.options.alias or self.options.index


# -- the re-adapter ------------------------------------------------------------------------------------


class Readapter(TargetDrift):
    """Re-adapts one target (an embedded corpus, or a cluster index) when it drifted.

    Args:
        cfg: the full adaptation config (the first version uses it as is; later ones warm-start).
        run_root: folder for versions (and, on the embedded backend, the state).
        cluster: a :class:`ClusterTarget`; None adapts ``cfg.corpus.path`` on the embedded backend.
        store: where state lives (default: ``FileStateStore(run_root/state)`` embedded, the
            ``.rgpl-state`` index in the cluster).
    """

    def __init__(
        self,
        cfg: AdaptConfig,
        run_root: str | os.PathLike,
        *,
        settings: ReadaptSettings = ReadaptSettings(),
        cluster: ClusterTarget | None = None,
        store: StateStore | None = None,
        holder: str | None = None,
        clock: Clock = time.time,
        progress: ProgressFactory = silent,
        on_event: EventSink = _ignore,
    ) -> None:
        self.cfg = cfg
        self.root = Path(run_root)
        self.settings = settings
        self.cluster = cluster
        if cluster is None and settings.drift_mode in ("timestamp", "seqno"):
            raise ValueError(f"drift mode {settings.drift_mode!r} needs a cluster index (--index); "
                             "a corpus file has no update times: use fingerprint or count")
        if store is None:
            if cluster is not None:
                from rgpl_adapt.state import IndexStateStore

                store = IndexStateStore(cluster.client, clock=clock)
            else:
                store = FileStateStore(self.root / "state", clock=clock)
        self.store = store
        self.clock = clock
        self.holder = holder or default_holder()
        self.progress = progress
        self.emit = on_event
        self.target = cluster.alias if cluster is not None else self.root.resolve().name

    # -- one run ---------------------------------------------------------------------------------------
    def run_once(self, *, force: bool = False) -> Outcome:
        """Check drift; adapt, evaluate, promote or not, prune. Errors are recorded, not raised."""
        try:
            fingerprint = self.settings.drift_mode == "fingerprint"
            scan = self._scan(hashes=fingerprint) if (fingerprint or self.cluster is None) else None
            drift, hashes = self.measure_drift(scan)
        except (RuntimeError, ValueError, OSError, KeyError) as exc:
            return Outcome(self.target, "failed", None, f"could not measure drift: {exc}")
        if not drift.due and not force:
            return Outcome(self.target, "skipped", drift, drift.summary())
        try:
            with hold_lock(self.store, self.target, holder=self.holder, ttl_s=self.settings.lock_ttl_s) as lease:
                return self._adapt(scan, drift, hashes, lease)
        except LockHeldError as exc:
            return Outcome(self.target, "locked", drift, str(exc))

    def _adapt(self, scan: DocumentScan | None, drift: DriftReport, hashes: dict[str, str] | None,
               lease: Any) -> Outcome:
        runs = self.store.runs(self.target)
        version = next_version(runs)
        run_dir = version_dir(self.root, version)
        serving = self.store.serving(self.target)
        serving_run = next((r for r in runs if serving and r.version == serving.version), None)
        serving_dir = Path(serving_run.run_dir) if serving_run and serving_run.run_dir else None
        if serving_dir is not None and not (serving_dir / "export").is_dir():
            serving_dir = None  # another machine's run folder: no warm start, no comparison
        record = RunRecord(target=self.target, version=version, started_at=self.clock(), run_dir=str(run_dir),
                           drift=drift.to_dict(), warm_start_from=serving.version if serving_dir else None)
        self.store.put_run(record)
        holder = {"lease": lease}

        def sink(event: str, info: dict[str, Any]) -> None:
            holder["lease"] = self.store.renew(holder["lease"], self.settings.lock_ttl_s)
            self.emit(event, info)

        try:
            if scan is None or hashes is None:
                scan = self._scan(hashes=True)
                hashes = scan.hashes
            assert hashes is not None
            cfg = self._config_for(serving_dir)
            (run_dir).mkdir(parents=True, exist_ok=True)
            reuse = self._reusable(hashes, serving_run, serving_dir)
            decision_box: dict[str, PromotionDecision] = {}

            def decide(export_dir: Path) -> PromotionDecision:
                decision_box["d"] = self._evaluate(run_dir, export_dir, serving_dir, version,
                                                   serving.version if serving else None)
                return decision_box["d"]

            result = self._run_pipeline(cfg, run_dir, sink, decide, reuse)
            q_stage = result.report["stages"].get("queries", {})
            reuse_info = {
                "reused": q_stage.get("reused", 0),
                "generated": q_stage.get("queries", 0) - q_stage.get("reused", 0),
                "passages_generated": q_stage.get("passages", 0) - len(reuse),
            }
            decision = decision_box.get("d") or decide(result.run_dir / "export")
            (run_dir / "promotion.json").write_text(json.dumps(decision.to_dict(), indent=2))
            snapshot = {"documents": scan.count, "digest": snapshot_digest(hashes), "queries": reuse_info}
            index_version = None
            if self.cluster is not None:
                info = result.report.get("cluster", {})
                index_version = info.get("index") if info.get("published") else None
            self.store.put_snapshot(self.target, version, hashes)
            if decision.promoted:
                if self.cluster is None:
                    promote_embedded(self.store, self.target, self.root, version)
                else:
                    self._promote_cluster(version, run_dir, index_version, snapshot)
            status = "promoted" if decision.promoted else "rejected"
            record = replace(record, status=status, finished_at=self.clock(), snapshot=snapshot,
                             metrics={"new_mrr": decision.new_mrr, "serving_mrr": decision.serving_mrr,
                                      "tolerance": decision.tolerance, "queries": decision.queries},
                             promoted=decision.promoted, reason=decision.reason, index_version=index_version)
            self.store.put_run(record)
            pruned = self._prune()
        except Exception as exc:  # noqa: BLE001  recorded and reported; the scheduler keeps going
            log.warning("adaptation v%d of %s failed: %s", version, self.target, exc)
            self.store.put_run(replace(record, status="failed", finished_at=self.clock(),
                                       error=f"{type(exc).__name__}: {exc}", reason="failed"))
            return Outcome(self.target, "failed", drift, f"{type(exc).__name__}: {exc}", version, str(run_dir))
        action: Action = "promoted" if decision.promoted else "rejected"
        return Outcome(self.target, action, drift, decision.reason, version, str(run_dir), tuple(pruned),
                       decision.to_dict())

    def _config_for(self, serving_dir: Path | None) -> AdaptConfig:
        if not self.settings.warm_start or serving_dir is None:
            return self.cfg
        from rgpl_adapt.warmstart import warm_config

        return warm_config(self.cfg, str(serving_dir / "export" / "sentence-transformers"), steps=self.settings.warm_steps)

    def _reusable(
        self, hashes: dict[str, str], serving_run: RunRecord | None, serving_dir: Path | None
    ) -> dict[str, list[GeneratedQuery]]:
        """Queries of the serving version whose documents did not change (by content hash)."""
        if not self.settings.reuse_queries or serving_run is None or serving_dir is None:
            return {}
        from rgpl_adapt.warmstart import read_queries, reusable_queries

        return reusable_queries(read_queries(serving_dir), self.store.snapshot(self.target, serving_run.version), hashes)

    def _backend_name(self) -> str:
        from rgpl_adapt.cluster import open_backend

        backend = open_backend(self.cluster.client, self.cluster.options)
        try:
            return backend.name
        finally:
            backend.close()

    def _run_pipeline(self, cfg: AdaptConfig, run_dir: Path, sink: EventSink,
                      decide: Callable[[Path], PromotionDecision],
                      reuse: dict[str, list[GeneratedQuery]] | None = None) -> Any:
        from rgpl_adapt.pipeline import Pipeline

        if self.cluster is None:
            return Pipeline(cfg, run_dir, progress=self.progress, on_event=sink, reuse_queries=reuse).run()
        from rgpl_adapt.cluster import ClusterBackend, ClusterPublisher, default_version, open_backend

        opts = replace(self.cluster.options, version=self.cluster.options.version or default_version())
        source = open_backend(self.cluster.client_or_settings, opts)
        store = None
        if opts.miner == "local":
            from rgpl_plugin.vectors import VectorStore

            store = VectorStore(run_dir / "vectors")
        backend = ClusterBackend(source, store=store, sample=opts.sample, seed=opts.seed)
        inner = ClusterPublisher(backend, opts, run_dir, progress=self.progress)
        try:
            return Pipeline(cfg, run_dir, backend=backend, publisher=GatedPublisher(inner, decide),
                            progress=self.progress, on_event=sink, reuse_queries=reuse).run()
        finally:
            backend.close()

    def _eval_store(self, run_dir: Path) -> Path:
        """The document store of the target's documents for the promotion search: the new run's own (the
        corpus, or the whole index copied), else (an index adapted on a sample) a streamed, resumable copy."""
        if self.cluster is None:
            return run_dir / "index"
        if getattr(self.cluster.options, "sample", None) is None:
            return run_dir / "docs"
        from rgpl_adapt.chunked import copy_documents
        from rgpl_adapt.cluster import open_backend

        backend = open_backend(self.cluster.client, self.cluster.options)
        try:
            copy_documents(backend, run_dir / "promotion" / "docs", key=f"{backend.name}:{backend.count()}")
        finally:
            backend.close()
        return run_dir / "promotion" / "docs"

    def _evaluate(self, run_dir: Path, export_dir: Path, serving_dir: Path | None,
                  version: int, serving_version: int | None) -> PromotionDecision:
        from rgpl_plugin.docstore import DocStore

        from rgpl_adapt.pipeline import load_encoder
        from rgpl_adapt.warmstart import read_queries

        seed = self.cfg.training.seed
        serving_queries = read_queries(serving_dir) if serving_dir else []
        held, how = fair_holdout(read_queries(run_dir), serving_queries, seed)
        if not held:
            if serving_dir is None:
                return PromotionDecision(True, "first version", None, None, self.settings.tolerance, 0,
                                         "no version serves yet", version, None)
            return PromotionDecision(False, "needs held-out pseudo queries", None, None, self.settings.tolerance, 0,
                                     "too few pseudo queries for a held-out set (need 20+): not promoted", version,
                                     serving_version)
        store_dir = self._eval_store(run_dir)
        with DocStore(store_dir) as store:
            cands = candidate_ords(store, held, self.settings.eval_max_docs, seed)
        out = run_dir / "promotion"
        new_mrr = encoder_mrr(load_encoder(export_dir, self.cfg.export.onnx, bulk=True), store_dir, cands, held,
                              out=out / "new", key=model_key(export_dir))
        serving_mrr = None
        if serving_dir is not None:
            serving_export = serving_dir / "export"
            serving_mrr = encoder_mrr(load_encoder(serving_export, self.cfg.export.onnx, bulk=True), store_dir, cands, held,
                                      out=out / "serving", key=model_key(serving_export))
        decision = decide_promotion(round(new_mrr, 6), None if serving_mrr is None else round(serving_mrr, 6),
                                    tolerance=self.settings.tolerance, queries=len(held), new_version=version,
                                    serving_version=serving_version)
        return replace(decision, rule=f"{decision.rule} ({how}; {len(cands)} documents searched)")

    def _promote_cluster(self, version: int, run_dir: Path, index_version: str | None, snapshot: dict[str, Any]) -> None:
        from rgpl_adapt.state import ServingRecord

        old = self.store.serving(self.target)
        self.store.set_serving(ServingRecord(self.target, version, self.clock(), old.version if old else None,
                                             str(run_dir), index_version))
        if self.settings.drift_mode == "seqno":
            from rgpl_adapt.drift import shard_seqno_maxima

            snapshot["seqno"] = shard_seqno_maxima(self.cluster.client, self.cluster.alias)

    def _prune(self) -> list[str]:
        if self.cluster is None:
            return [f"v{v}" for v in prune_embedded(self.store, self.target, self.root, self.settings.keep)]
        serving = self.store.serving(self.target)
        runs = self.store.runs(self.target)
        deleted = prune_cluster_indices(self.cluster.client, self.cluster.alias, runs,
                                        serving.version if serving else None, self.settings.keep)
        for v in prune_embedded(self.store, self.target, self.root, self.settings.keep):
            deleted.append(f"v{v}")
        return deleted

    # -- status ------------------------------------------------------------------------------------------
    def status(self, *, with_drift: bool = True, limit: int = 10) -> dict[str, Any]:
        """Last runs, the serving version, the lock, and the drift now."""
        from dataclasses import asdict

        from rgpl_adapt.versions import versions_table

        serving = self.store.serving(self.target)
        out: dict[str, Any] = {
            "target": self.target,
            "serving": asdict(serving) if serving else None,
            "runs": versions_table(self.store.runs(self.target, limit), serving.version if serving else None),
            "lock": None,
        }
        lease = self.store.current_lease(self.target)
        if lease is not None and not lease.expired(self.clock()):
            out["lock"] = asdict(lease)
        if self.cluster is not None:
            from rgpl_plugin.opensearch_publish import alias_state

            state, indices = alias_state(self.cluster.client, self.cluster.alias)
            out["alias"] = {"state": state, "indices": indices}
        if with_drift:
            try:
                drift, _ = self.measure_drift()
                out["drift"] = {**drift.to_dict(), "summary": drift.summary()}
            except (RuntimeError, ValueError, OSError, KeyError) as exc:
                out["drift"] = {"error": str(exc)}
        return out
