"""The orchestrator: run the stages in order, each recorded in a manifest.

A run folder holds everything::

    runs/NAME/
      config.json                 the AdaptConfig of the run
      index/                      the embedded backend (BM25 + vector spaces)   [embedded only]
      queries/    queries.jsonl   generated pseudo queries (+ parts/ while running)
      negatives/  pools.jsonl     initial hard negatives
      train/      rounds/ checkpoints/ final/ log.jsonl scores.*
      export/     sentence-transformers/ onnx/
      serve/                      manifest of the vectors written back for search
      report.json                 per-stage timings and statistics

A stage is skipped only when its manifest's fingerprint (config of the stage, model ids, the
fingerprint of its inputs) matches; otherwise it is rebuilt, and everything after it too.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rgpl_plugin.base import Backend, Document

from rgpl_adapt.config import AdaptConfig, config_hash
from rgpl_adapt.devices import resolve_device
from rgpl_adapt.distributed import DistInfo, barrier, init_distributed
from rgpl_adapt.manifest import Manifest, invalidate, is_complete, read_manifest, write_manifest
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.records import GeneratedQuery, NegativePool, read_jsonl, write_jsonl

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], None]
DENSE_SPACE = "dense"
HOLDOUT_MIN = 200  # held-out pseudo queries wanted at least ...
HOLDOUT_SHARE = 0.05  # ... or this share of them, whichever is more,
HOLDOUT_MAX = 2000  # bounded,
HOLDOUT_CAP_SHARE = 0.2  # and never more than this share (small corpora)
MIN_DECIDE = 50  # fewer held-out queries than this: the hybrid weight falls back to the default
DEFAULT_HYBRID_WEIGHT = 0.5


def _ignore(event: str, info: dict[str, Any]) -> None:
    pass


class PipelineError(RuntimeError):
    """A run cannot go on; the message says what to change."""


@dataclass(frozen=True)
class AdaptResult:
    run_dir: Path
    model_dir: Path
    onnx_dir: Path | None
    report: dict[str, Any]


def open_embedded(run_dir: str | os.PathLike) -> Backend:
    """The embedded backend of a run folder (reopened, never rebuilt)."""
    from rgpl_plugin.embedded import EmbeddedBackend

    path = Path(run_dir) / "index"
    if not path.exists():
        raise PipelineError(f"{run_dir} has no embedded index: run `rgpl-adapt adapt --corpus ... --out {run_dir}` first")
    return EmbeddedBackend.open(path)


class Publisher(Protocol):
    """The serve stage's second half for a backend that serves from elsewhere (a cluster).

    When a pipeline has one, the serve stage encodes ``documents()`` (every document to serve,
    which may be more than the ones adapted to) into the ``dense`` space of the backend, chooses
    the hybrid weight, then calls ``publish``; its result goes into the serve manifest and
    report.json (``cluster``). See :class:`rgpl_adapt.cluster.ClusterPublisher`.
    """

    def fingerprint(self) -> dict[str, Any]: ...

    def documents(self) -> Iterable[Document]: ...

    def publish(self, export_dir: Path, weights: dict[str, Any]) -> dict[str, Any]: ...

    def describe(self) -> dict[str, Any]: ...


class Pipeline:
    """One adaptation run. ``backend=None`` builds the embedded default from ``cfg.corpus``;
    ``publisher`` (with a cluster backend) publishes the served vectors at the end."""

    def __init__(
        self,
        cfg: AdaptConfig,
        run_dir: str | os.PathLike,
        *,
        backend: Backend | None = None,
        publisher: Publisher | None = None,
        progress: ProgressFactory = silent,
        on_event: EventSink = _ignore,
        eval_data: tuple[dict[str, dict[str, int]], dict[str, str]] | None = None,
        reuse_queries: Mapping[str, Sequence[GeneratedQuery]] | None = None,
    ) -> None:
        """``eval_data`` = (qrels, queries) turns on periodic evaluation every ``training.eval_every`` steps.

        ``reuse_queries`` maps document ids to queries generated earlier (re-adaptation: documents
        whose content did not change keep their queries; only the others get new ones).
        """
        self.reuse_queries = dict(reuse_queries or {})
        reused = sorted((d, [q.qid for q in qs], [q.text for q in qs]) for d, qs in self.reuse_queries.items())
        self._reuse_key = config_hash(reused) if reused else None
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.eval_data = eval_data
        self.backend = backend
        self.publisher = publisher
        self.progress = progress
        self.emit = on_event
        self.device = resolve_device(cfg.device)
        self.report: dict[str, Any] = {"stages": {}}
        self._upstream = ""  # fingerprint chain
        self.dist = DistInfo()

    # ------------------------------------------------------------------ stage plumbing
    def _stage(self, name: str, inputs: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> Manifest:
        stage_dir = self.dir / name
        expected = Manifest.for_inputs(name, upstream=self._upstream, **inputs)
        if is_complete(stage_dir, expected):
            found = read_manifest(stage_dir)
            assert found is not None
            self.emit("stage_skipped", {"stage": name, "reason": "manifest matches", **found.outputs})
            self.report["stages"][name] = {"skipped": True, **found.outputs}
            self._upstream = expected.fingerprint
            return found
        if not self.dist.is_main:
            # Under torchrun only training runs on every rank; rank 0 alone runs and records the rest.
            if name != "train":
                raise PipelineError(f"rank {self.dist.rank}: stage {name!r} was not completed by rank 0")
            build(stage_dir)
            return expected
        if read_manifest(stage_dir) is not None:
            self.emit("stage_stale", {"stage": name, "reason": "settings or inputs changed"})
            invalidate(stage_dir)
        self.emit("stage_started", {"stage": name})
        t0 = time.perf_counter()
        outputs = build(stage_dir)
        outputs["seconds"] = round(time.perf_counter() - t0, 3)
        done = write_manifest(stage_dir, expected, outputs)
        self.emit("stage_done", {"stage": name, **outputs})
        self.report["stages"][name] = outputs
        self._upstream = expected.fingerprint
        return done

    # ------------------------------------------------------------------ stages
    def _stage_index(self) -> list[Document]:
        from rgpl_adapt.corpus import fingerprint, read_corpus

        if self.backend is not None:
            from rgpl_adapt.cluster import docs_fingerprint

            docs = list(self.backend.iter_documents())
            self._upstream = f"{self.backend.name}:{len(docs)}:{docs_fingerprint(docs)}"
            skipped = dict(getattr(getattr(self.backend, "source", self.backend), "skipped", {}) or {})
            self.report["stages"]["corpus"] = {"documents": len(docs), "backend": self.backend.name, "skipped": skipped}
            self.emit("corpus_read", {"summary": f"{len(docs)} documents from {self.backend.name}"
                                      + (f", skipped {skipped}" if skipped else ""), "kept": len(docs), "skipped": skipped})
            return docs
        if not self.cfg.corpus.path:
            raise PipelineError("no corpus: pass --corpus PATH (a BEIR folder or a JSONL file) or --index NAME")
        docs, stats = read_corpus(self.cfg.corpus)
        self.emit("corpus_read", {"summary": stats.summary(), "kept": stats.kept, "skipped": stats.skipped})
        self.report["stages"]["corpus"] = {"documents": stats.kept, "read": stats.read, "skipped": stats.skipped}

        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_plugin.embedded import EmbeddedBackend

            backend = EmbeddedBackend.create(stage_dir, docs, progress=self.progress, overwrite=True)
            backend.close()
            return {"documents": len(docs)}

        self._stage("index", {"corpus": fingerprint(self.cfg.corpus.path, self.cfg.corpus)}, build)
        self.backend = open_embedded(self.dir)
        return docs

    def _stage_queries(self, docs: list[Document]) -> list[GeneratedQuery]:
        gc = self.cfg.generation

        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_adapt.generation import (
                GenerationStats,
                generate_queries,
                load_generator,
                plan_generation,
                query_key,
            )

            selected, qpp = plan_generation(docs, gc, random.Random(gc.seed))
            parts = stage_dir / "parts"
            parts.mkdir(parents=True, exist_ok=True)
            # Parts finished before an interruption are reused, but only for the same settings.
            pending = stage_dir / "pending.json"
            key = Manifest.for_inputs("queries-parts", upstream=self._upstream, gen=gc, reused=self._reuse_key).fingerprint
            if not pending.exists() or json.loads(pending.read_text()).get("key") != key:
                for old in parts.glob("part-*"):
                    old.unlink()
                pending.write_text(json.dumps({"key": key}))
            chunk = max(gc.batch_size * 8, 256)
            generator = None
            reuse = self.reuse_queries
            seen: set[str] = {query_key(q.text) for qs in reuse.values() for q in qs}
            total = GenerationStats()
            with self.progress(total=len(selected), desc="generating queries", unit="passage") as bar:
                for i, start in enumerate(range(0, len(selected), chunk)):
                    part = parts / f"part-{i:05d}.jsonl"
                    part_stats = part.with_suffix(".stats.json")
                    piece = selected[start : start + chunk]
                    if part.exists() and part_stats.exists():
                        seen.update(query_key(q.text) for q in read_jsonl(part, GeneratedQuery))
                        stats = GenerationStats(**json.loads(part_stats.read_text()))
                    else:
                        fresh = [d for d in piece if d.id not in reuse]
                        new: list[GeneratedQuery] = []
                        stats = GenerationStats(passages=len(piece) - len(fresh), passages_used=len(piece) - len(fresh))
                        if fresh:
                            if generator is None:
                                generator = load_generator(gc, self.device)
                            new, fresh_stats = generate_queries(fresh, generator, gc, qpp=qpp, seen=seen)
                            stats = stats.merged(fresh_stats)
                        by_doc: dict[str, list[GeneratedQuery]] = {d.id: list(reuse[d.id]) for d in piece if d.id in reuse}
                        for q in new:
                            by_doc.setdefault(q.doc_id, []).append(q)
                        queries = [q for d in piece for q in by_doc.get(d.id, [])]
                        write_jsonl(part, queries)
                        part_stats.write_text(json.dumps(stats.__dict__))
                    total = total.merged(stats)
                    bar.update(len(piece))
            merged = [q for part in sorted(parts.glob("part-*.jsonl")) for q in read_jsonl(part, GeneratedQuery)]
            if not merged:
                raise PipelineError(
                    f"query generation produced no usable query (dropped: {total.dropped}); check the generator model"
                )
            n = write_jsonl(stage_dir / "queries.jsonl", merged)
            n_reused = sum(len(reuse[d.id]) for d in selected if d.id in reuse)
            style: dict[str, Any] = {}
            if gc.example_queries:  # how the user's example queries steered generation
                style["example_queries"] = len(gc.example_queries)
                if total.style_candidates:  # seq2seq: candidates ranked by style (rgpl_adapt.query_style)
                    style.update(style_candidates=total.style_candidates, style_kept=total.style_kept,
                                 style_dropped=total.dropped.get("style", 0),
                                 style_oversample=gc.style_oversample)
                else:
                    style["style"] = "few-shot prompt of the causal LM"
            return {**style,
                "queries": n,
                "reused": n_reused,
                "passages": len(selected),
                "queries_per_passage": qpp,
                "generated": total.generated,
                "dropped": total.dropped,
                "passages_without_queries": total.passages_without_queries,
            }

        inputs: dict[str, Any] = {"generation": gc}
        if self._reuse_key is not None:  # only then: runs without reuse keep their fingerprints
            inputs["reused"] = self._reuse_key
        self._stage("queries", inputs, build)
        return list(read_jsonl(self.dir / "queries" / "queries.jsonl", GeneratedQuery))

    def _split(self, queries: list[GeneratedQuery]) -> tuple[list[GeneratedQuery], list[GeneratedQuery]]:
        return holdout_split(queries, self.cfg.training.seed)

    def _stage_negatives(self, queries: list[GeneratedQuery]) -> list[NegativePool]:
        mc = self.cfg.mining

        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_adapt.encoding import SentenceTransformerEncoder, encode_precision
            from rgpl_adapt.mining import mine_negatives
            from rgpl_adapt.models import load_sentence_transformer

            bf16 = encode_precision(self.cfg.training.precision, self.device) == "bf16"
            searches: dict[str, dict] = {}  # per retriever: exact or HNSW, and the measured recall
            retrievers = [
                (
                    name,
                    SentenceTransformerEncoder(
                        load_sentence_transformer(name, self.device, mc.max_seq_len),
                        normalize=mc.similarity == "cosine",
                        autocast_bf16=bf16,
                    ),
                )
                for name in mc.retrievers
            ]
            pools = mine_negatives(
                queries,
                self.backend,
                retrievers=retrievers,
                bm25=mc.bm25,
                k=mc.k,
                encode_batch_size=mc.encode_batch_size,
                progress=self.progress,
                exact_budget_s=mc.exact_budget_s,
                search_reports=searches,
            )
            n = write_jsonl(stage_dir / "pools.jsonl", pools)
            empty = sum(1 for p in pools if not p.all_ids())
            return {"pools": n, "empty_pools": empty, "sources": ["bm25"] * mc.bm25 + list(mc.retrievers),
                    "similarity": {name: mc.similarity for name in mc.retrievers}, "search": searches}

        self._stage("negatives", {"mining": mc}, build)
        return list(read_jsonl(self.dir / "negatives" / "pools.jsonl", NegativePool))

    def _stage_train(self, docs, queries, pools, *, resume: bool, restart: bool, stop_after: int | None):
        from rgpl_adapt.labeling import ScoreCache, load_teacher
        from rgpl_adapt.training import Trainer, TrainingData

        tc = self.cfg.training
        train_q, _ = self._split(queries)
        train_ids = {q.qid for q in train_q}
        data = TrainingData(queries=train_q, doc_ids=[d.id for d in docs], doc_texts=[d.full_text() for d in docs])
        pools = [p for p in pools if p.qid in train_ids]

        def build(stage_dir: Path) -> dict[str, Any]:
            import shutil

            if restart and self.dist.is_main:
                for sub in ("checkpoints", "rounds", "final"):
                    shutil.rmtree(stage_dir / sub, ignore_errors=True)
                (stage_dir / "log.jsonl").unlink(missing_ok=True)
            cache_key = Manifest.for_inputs("scores", upstream=self._upstream, labels=self.cfg.labels).fingerprint
            try:
                cache = ScoreCache(stage_dir / "scores.jsonl", key=cache_key)
            except ValueError:  # scores of another teacher or other queries: never mix them in
                if not self.dist.is_main:
                    raise
                (stage_dir / "scores.jsonl").unlink()
                cache = ScoreCache(stage_dir / "scores.jsonl", key=cache_key)
            evaluator = None
            if self.eval_data is not None and tc.eval_every > 0:
                from rgpl_adapt.compare import make_training_evaluator

                qrels, eval_queries = self.eval_data
                evaluator = make_training_evaluator(
                    self.backend, qrels, eval_queries, normalize=tc.similarity == "cosine"
                )
            trainer = Trainer(
                self.cfg,
                stage_dir,
                student_path=tc.student,
                backend=self.backend,
                data=data,
                initial_pools=pools,
                teacher=lambda: load_teacher(self.cfg.labels, self.device),
                cache=cache,
                device=self.device,
                progress=self.progress,
                evaluator=evaluator,
                stop_after=stop_after,
            )
            result = trainer.run(resume=resume)
            return {
                "steps": result.steps,
                "final_loss": result.final_loss,
                "rounds": result.rounds,
                "evals": result.evals,
                "model_dir": str(result.model_dir),
            }

        self._stage("train", {"training": tc, "remine": self.cfg.remine, "labels": self.cfg.labels}, build)
        return self.dir / "train" / "final"

    def _stage_export(self, model_dir: Path, docs: list[Document]) -> Path:
        ec = self.cfg.export

        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_adapt.export import export_model

            rng = random.Random(0)
            samples = [d.full_text() for d in rng.sample(docs, min(32, len(docs)))]
            res = export_model(str(model_dir), stage_dir, ec, sample_texts=samples, progress=self.progress)
            return {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}

        self._stage("export", {"export": ec}, build)
        return self.dir / "export"

    def _stage_serve(self, export_dir: Path, docs: list[Document], queries: list[GeneratedQuery]) -> dict[str, Any]:
        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_plugin.base import batched

            from rgpl_adapt.onnx_encoder import OnnxEncoder

            encoder = load_encoder(export_dir, self.cfg.export.onnx)
            self.backend.drop_vectors(DENSE_SPACE)
            n = 0
            if self.publisher is None:  # every document of the store, in resumable chunks (rgpl_adapt.chunked)
                n = self._encode_store(encoder, stage_dir)
            for chunk in batched(self.publisher.documents() if self.publisher is not None else (), 10_000):
                vecs = encoder.encode([d.full_text() for d in chunk], batch_size=64, progress=self.progress)
                self.backend.put_vectors(DENSE_SPACE, [d.id for d in chunk], vecs)
                n += len(chunk)
            _, held = self._split(queries)
            weights = choose_hybrid_weight(self.backend, encoder, held)
            out = {"vectors": n, "space": DENSE_SPACE, **weights, "onnx": isinstance(encoder, OnnxEncoder)}
            if self.publisher is not None:
                out["cluster"] = self.publisher.publish(export_dir, weights)
            return out

        inputs: dict[str, Any] = {"vectors": DENSE_SPACE}
        if self.publisher is not None:
            inputs["publish"] = self.publisher.fingerprint()
        m = self._stage("serve", inputs, build)
        return m.outputs

    def _encode_store(self, encoder, stage_dir: Path) -> int:
        """Encode the embedded store chunk by chunk into stage_dir/vectors (a kill resumes), then serve them."""
        from rgpl_adapt.chunked import encode_store, put_in_chunks

        dim = int(encoder.encode(["dimension probe"], batch_size=1).shape[1])
        res = encode_store(encoder, self.dir / "index", stage_dir / "vectors", dim=dim, key=self._upstream or "",
                           info=DistInfo(), progress=self.progress)
        return put_in_chunks(self.backend, DENSE_SPACE, self.dir / "index", res.path)

    # ------------------------------------------------------------------ public
    def run(self, *, resume: bool = False, restart: bool = False, stop_after: int | None = None) -> AdaptResult:
        self.dist, self.device = init_distributed(self.device)
        if not self.dist.is_main:
            self.progress, self.emit = silent, _ignore
            barrier(self.dist)  # rank 0 runs the stages before training; the others then read them
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        t0 = time.perf_counter()
        docs = self._stage_index()
        if len(docs) < 2:
            raise PipelineError("the corpus needs at least 2 documents (a positive and a negative)")
        queries = self._stage_queries(docs)
        pools = self._stage_negatives(queries)
        if self.dist.is_main:
            barrier(self.dist)
        model_dir = self._stage_train(docs, queries, pools, resume=resume, restart=restart, stop_after=stop_after)
        if not self.dist.is_main:  # export, serving and publishing are rank 0's
            return AdaptResult(self.dir, model_dir, None, self.report)
        export_dir = self._stage_export(model_dir, docs)
        served = self._stage_serve(export_dir, docs, queries)
        if self.publisher is not None:
            self.report["cluster"] = {**self.publisher.describe(), **served.get("cluster", {})}
        self.report["seconds"] = round(time.perf_counter() - t0, 3)
        self.report["device"] = self.device
        (self.dir / "report.json").write_text(json.dumps(self.report, indent=2, default=str))
        onnx_dir = export_dir / "onnx" if (export_dir / "onnx").exists() else None
        return AdaptResult(self.dir, export_dir / "sentence-transformers", onnx_dir, self.report)


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


def load_encoder(export_dir: str | os.PathLike, prefer_onnx: bool = True):
    """The exported model as a TextEncoder: ONNX when exported, else the torch model."""
    export_dir = Path(export_dir)
    if prefer_onnx and (export_dir / "onnx" / "model.onnx").exists():
        from rgpl_adapt.onnx_encoder import OnnxEncoder

        return OnnxEncoder(export_dir / "onnx")
    from rgpl_adapt.encoding import SentenceTransformerEncoder
    from rgpl_adapt.models import load_sentence_transformer

    return SentenceTransformerEncoder(load_sentence_transformer(str(export_dir / "sentence-transformers")))


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


def read_report(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / "report.json"
    if not path.exists():
        raise PipelineError(f"{run_dir} has no report.json: the adaptation has not finished")
    return json.loads(path.read_text())


def hybrid_weight_of(run_dir: str | os.PathLike) -> float:
    m = read_manifest(Path(run_dir) / "serve")
    if m is None:
        return 0.5
    w = m.outputs.get("hybrid_weight", 0.5)
    return 0.5 if w is None or (isinstance(w, float) and math.isnan(w)) else float(w)
