"""The orchestrator: run the stages in order, each recorded in a manifest.

The run folder's layout is described in :mod:`rgpl_adapt.runfolder`. A stage is skipped only when
its manifest's fingerprint (config of the stage, model ids, the fingerprint of its inputs) matches;
otherwise it is rebuilt, and everything after it too.

No stage holds the corpus in memory. The corpus is read once, as a stream, into the document store
(``docs.sqlite``: the embedded index's, or a copy of a cluster's documents), in resumable chunks;
later stages read from it by id or by chunk (:class:`rgpl_plugin.docstore.DocStore`): generation
reads its seeded sample of passages, mining, remining and serving encode the store chunk by chunk
into memory-mapped vectors (:mod:`rgpl_adapt.chunked`, resumable per chunk), training loads the
texts of its triples only. ``chunk_size`` sets the chunk of the store build and of encoding.

Under torchrun rank 0 builds the store and the queries, then every rank runs the stages in
:data:`EVERY_RANK`: each encodes its chunks of the corpus for mining and serving (and for each
remining round), while rank 0 alone searches, labels, exports and records the stages.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rgpl_plugin.base import Backend, Document
from rgpl_plugin.docstore import DocStore

from rgpl_adapt.chunked import DEFAULT_CHUNK, ChunkedResult
from rgpl_adapt.config import AdaptConfig, config_hash
from rgpl_adapt.devices import resolve_device
from rgpl_adapt.distributed import DistInfo, barrier, from_main, init_distributed
from rgpl_adapt.heldout import (  # noqa: F401 (re-exported: the names' old home)
    DEFAULT_HYBRID_WEIGHT,
    MIN_DECIDE,
    choose_hybrid_weight,
    holdout_split,
)
from rgpl_adapt.manifest import Manifest, invalidate, is_complete, read_manifest, write_manifest
from rgpl_adapt.progress import ProgressFactory, into, silent
from rgpl_adapt.records import GeneratedQuery, NegativePool, read_jsonl, write_jsonl
from rgpl_adapt.runfolder import (  # noqa: F401 (re-exported: the names' old home)
    DENSE_SPACE,
    PipelineError,
    corpus_encoder,
    hybrid_weight_of,
    load_encoder,
    open_embedded,
    read_report,
)

log = logging.getLogger(__name__)

EventSink = Callable[[str, dict[str, Any]], None]
EVERY_RANK = ("negatives", "train", "serve")  # stages built by every torchrun rank (rank 0 records them)


def _ignore(event: str, info: dict[str, Any]) -> None:
    pass


@dataclass(frozen=True)
class AdaptResult:
    run_dir: Path
    model_dir: Path
    onnx_dir: Path | None
    report: dict[str, Any]


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
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        """``eval_data`` = (qrels, queries) turns on periodic evaluation every ``training.eval_every`` steps.

        ``reuse_queries`` maps document ids to queries generated earlier (re-adaptation: documents
        whose content did not change keep their queries; only the others get new ones).
        ``chunk_size``: documents per resumable chunk of the store build and of corpus encoding
        (memory holds one chunk; a killed run redoes at most the chunk it was in).
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
        self.chunk_size = chunk_size
        self.store: DocStore | None = None  # the documents, once the index stage has run
        self.store_dir: Path = self.dir / "index"

    # ------------------------------------------------------------------ stage plumbing
    def _stage(self, name: str, inputs: dict[str, Any], build: Callable[[Path], dict[str, Any]]) -> Manifest:
        stage_dir = self.dir / name
        every_rank = name in EVERY_RANK
        if every_rank:  # rank 0's fingerprint chain and decision: every rank takes the same branch
            self._upstream = from_main(self.dist, self._upstream)
        expected = Manifest.for_inputs(name, upstream=self._upstream, **inputs)
        complete = is_complete(stage_dir, expected)
        if from_main(self.dist, complete) if every_rank else complete:
            found = read_manifest(stage_dir)
            assert found is not None
            self.emit("stage_skipped", {"stage": name, "reason": "manifest matches", **found.outputs})
            self.report["stages"][name] = {"skipped": True, **found.outputs}
            self._upstream = expected.fingerprint
            return found
        if not self.dist.is_main:
            # Under torchrun rank 0 alone runs and records the other stages; here this rank does its share.
            if not every_rank:
                raise PipelineError(f"rank {self.dist.rank}: stage {name!r} was not completed by rank 0")
            build(stage_dir)
            self._upstream = expected.fingerprint
            barrier(self.dist)  # rank 0 finishes and records the stage
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
        if every_rank:
            barrier(self.dist)  # the others read the stage's outputs after this
        return done

    # ------------------------------------------------------------------ stages
    def _stage_index(self) -> DocStore:
        """Stream the corpus once into the document store (resumable by chunk); return it."""
        from rgpl_adapt.corpus import CorpusError, fingerprint, iter_corpus

        if self.backend is not None:
            return self._copy_documents()
        if not self.cfg.corpus.path:
            raise PipelineError("no corpus: pass --corpus PATH (a BEIR folder or a JSONL file) or --index NAME")
        corpus_fp = fingerprint(self.cfg.corpus.path, self.cfg.corpus)

        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_plugin.embedded import EmbeddedBackend

            counts: Counter[str] = Counter()
            backend = EmbeddedBackend.create(
                stage_dir, iter_corpus(self.cfg.corpus, counts, dedup=False), progress=self.progress, overwrite=True,
                resume_key=corpus_fp, chunk_size=self.chunk_size,
            )
            n, duplicates, chunks = backend.count(), backend.duplicate_ids, dict(backend.meta.get("build", {}))
            backend.close()
            read = counts.pop("read", 0)
            skipped = {k: v for k, v in counts.items() if v} | ({"duplicate_id": duplicates} if duplicates else {})
            if not n:
                raise CorpusError(
                    f"no usable documents in {self.cfg.corpus.path} (read {read} records; skipped: {skipped or 'none'}). "
                    f"Check --text-field (now {self.cfg.corpus.text_field!r}) and --id-field (now {self.cfg.corpus.id_field!r})."
                )
            return {"documents": n, "read": read, "skipped": skipped, "chunks": chunks}

        m = self._stage("index", {"corpus": corpus_fp}, build)
        kept, skipped = m.outputs["documents"], dict(m.outputs.get("skipped", {}))
        why = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(skipped.items()))
        summary = f"{kept} documents" + (f" ({sum(skipped.values())} skipped: {why})" if skipped else "")
        self.emit("corpus_read", {"summary": summary, "kept": kept, "skipped": skipped})
        self.report["stages"]["corpus"] = {"documents": kept, "read": m.outputs.get("read", kept), "skipped": skipped}
        self.backend = open_embedded(self.dir)
        self.store_dir = self.dir / "index"
        self.store = DocStore(self.store_dir)
        return self.store

    def _copy_documents(self) -> DocStore:
        """A given backend (a cluster): its documents streamed once into ``docs/docs.sqlite``.

        The copy is what later stages read texts from (by id, by chunk) instead of holding the
        index's documents in memory; the fingerprint of the documents is computed on the way.
        """
        from rgpl_adapt.chunked import copy_documents

        assert self.backend is not None
        self.store_dir = self.dir / "docs"
        if self.dist.is_main:  # resumable: a killed copy of the same index (name and size) continues
            copy_documents(self.backend, self.store_dir, key=f"{self.backend.name}:{self.backend.count()}",
                           chunk_size=self.chunk_size)
        found = json.loads((self.store_dir / "fingerprint.json").read_text())
        n = found["count"]
        self._upstream = f"{self.backend.name}:{n}:{found['sha']}"
        skipped = dict(getattr(getattr(self.backend, "source", self.backend), "skipped", {}) or {})
        self.report["stages"]["corpus"] = {"documents": n, "backend": self.backend.name, "skipped": skipped}
        self.emit("corpus_read", {"summary": f"{n} documents from {self.backend.name}"
                                  + (f", skipped {skipped}" if skipped else ""), "kept": n, "skipped": skipped})
        self.store = DocStore(self.store_dir)
        return self.store

    def _stage_queries(self, store: DocStore) -> list[GeneratedQuery]:
        gc = self.cfg.generation

        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_adapt.generation import GenerationStats, generate_queries, plan_sample, query_key
            from rgpl_adapt.generators import load_generator

            n_docs = store.count()
            sample, qpp = plan_sample(n_docs, gc, random.Random(gc.seed))  # positions only: read per chunk
            n_selected = n_docs if sample is None else len(sample)
            parts = stage_dir / "parts"
            parts.mkdir(parents=True, exist_ok=True)
            # Parts finished before an interruption are reused, but only for the same settings.
            pending = stage_dir / "pending.json"
            # passages per part: a few generation batches, at most the pipeline's chunk (and part of the key)
            chunk = max(gc.batch_size, min(max(gc.batch_size * 8, 256), self.chunk_size))
            key = Manifest.for_inputs("queries-parts", upstream=self._upstream, gen=gc, reused=self._reuse_key,
                                      **({"chunk": chunk} if chunk != max(gc.batch_size * 8, 256) else {})).fingerprint
            if not pending.exists() or json.loads(pending.read_text()).get("key") != key:
                for old in parts.glob("part-*"):
                    old.unlink()
                pending.write_text(json.dumps({"key": key}))
            generator = None
            reuse = self.reuse_queries
            seen: set[str] = {query_key(q.text) for qs in reuse.values() for q in qs}
            total = GenerationStats()
            n_reused = 0
            with self.progress(total=n_selected, desc="generating queries", unit="passage") as bar:
                for i, start in enumerate(range(0, n_selected, chunk)):
                    part = parts / f"part-{i:05d}.jsonl"
                    part_stats = part.with_suffix(".stats.json")
                    stop = min(n_selected, start + chunk)
                    piece = store.documents(start, stop) if sample is None else store.by_ords(sample[start:stop])
                    n_reused += sum(len(reuse[d.id]) for d in piece if d.id in reuse)
                    if part.exists() and part_stats.exists():
                        seen.update(query_key(q.text) for q in read_jsonl(part, GeneratedQuery))
                        stats = GenerationStats(**json.loads(part_stats.read_text()))
                        bar.update(len(piece))  # done before an interruption
                    else:
                        fresh = [d for d in piece if d.id not in reuse]
                        new: list[GeneratedQuery] = []
                        stats = GenerationStats(passages=len(piece) - len(fresh), passages_used=len(piece) - len(fresh))
                        if fresh:
                            if generator is None:
                                generator = load_generator(gc, self.device)
                            # the bar moves per generation batch (a part of a slow LM takes minutes)
                            new, fresh_stats = generate_queries(fresh, generator, gc, qpp=qpp, seen=seen,
                                                                progress=into(bar))
                            stats = stats.merged(fresh_stats)
                        by_doc: dict[str, list[GeneratedQuery]] = {d.id: list(reuse[d.id]) for d in piece if d.id in reuse}
                        for q in new:
                            by_doc.setdefault(q.doc_id, []).append(q)
                        queries = [q for d in piece for q in by_doc.get(d.id, [])]
                        write_jsonl(part, queries)
                        part_stats.write_text(json.dumps(stats.__dict__))
                        log.info("generated queries part %d (%d passages)", i, len(piece))
                        bar.update(len(piece) - len(fresh))  # the reused ones; the fresh ones ticked per batch
                    total = total.merged(stats)
            merged = [q for part in sorted(parts.glob("part-*.jsonl")) for q in read_jsonl(part, GeneratedQuery)]
            if not merged:
                raise PipelineError(
                    f"query generation produced no usable query (dropped: {total.dropped}); check the generator model"
                )
            n = write_jsonl(stage_dir / "queries.jsonl", merged)
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
                "passages": n_selected,
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
            from rgpl_adapt.chunked import put_in_chunks
            from rgpl_adapt.encoding import SentenceTransformerEncoder, encode_precision
            from rgpl_adapt.mining import mine_negatives, space_name
            from rgpl_adapt.models import load_sentence_transformer

            bf16 = encode_precision(self.cfg.training.precision, self.device) == "bf16"
            searches: dict[str, dict] = {}  # per retriever: exact or HNSW, and the measured recall

            def encoder_of(name: str) -> SentenceTransformerEncoder:
                model = load_sentence_transformer(name, self.device, mc.max_seq_len)
                cosine = mc.similarity == "cosine"
                return SentenceTransformerEncoder(model, normalize=cosine, autocast_bf16=bf16)

            def encode_corpus(space: str, name: str, encoder: Any) -> ChunkedResult:
                # every document of the store, in resumable chunks into a memory map (each rank its chunks)
                key = f"{self._upstream}:{name}:{config_hash(mc)}"
                return self._encode_vectors(encoder, stage_dir / "vectors" / space, key=key,
                                            batch_size=mc.encode_batch_size)

            if not self.dist.is_main:  # under torchrun: this rank's chunks of each miner's corpus vectors
                for name in mc.retrievers:  # in rank 0's order (mine_negatives)
                    encode_corpus(space_name(name), name, encoder_of(name))
                return {}
            retrievers = [(name, encoder_of(name)) for name in mc.retrievers]

            def write_corpus(backend: Backend, space: str, name: str, encoder: Any) -> int:
                return put_in_chunks(backend, space, self.store_dir, encode_corpus(space, name, encoder).path)

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
                write_corpus=write_corpus,
                device=self.device,
            )
            shutil.rmtree(stage_dir / "vectors", ignore_errors=True)  # the spaces are dropped; free the disk
            n = write_jsonl(stage_dir / "pools.jsonl", pools)
            empty = sum(1 for p in pools if not p.all_ids())
            return {"pools": n, "empty_pools": empty, "sources": ["bm25"] * mc.bm25 + list(mc.retrievers),
                    "similarity": {name: mc.similarity for name in mc.retrievers}, "search": searches,
                    "encode": {"device": self.device, "precision": "bf16" if bf16 else "fp32"}}

        self._stage("negatives", {"mining": mc}, build)
        return list(read_jsonl(self.dir / "negatives" / "pools.jsonl", NegativePool))

    def _stage_train(self, queries, pools, *, resume: bool, restart: bool, stop_after: int | None):
        from rgpl_adapt.labeling import ScoreCache, load_teacher
        from rgpl_adapt.training import Trainer, TrainingData

        tc = self.cfg.training
        train_q, _ = self._split(queries)
        train_ids = {q.qid for q in train_q}
        data = TrainingData(queries=train_q, store=self.store_dir, chunk_size=self.chunk_size)  # texts read by id
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
                    self.backend, qrels, eval_queries, normalize=tc.similarity == "cosine", store=self.store_dir
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
                "precision": result.precision,  # what the steps ran at, and where
                "device": result.device,
                "rounds": result.rounds,
                "evals": result.evals,
                "model_dir": str(result.model_dir),
            }

        self._stage("train", {"training": tc, "remine": self.cfg.remine, "labels": self.cfg.labels}, build)
        return self.dir / "train" / "final"

    def _stage_export(self, model_dir: Path, store: DocStore) -> Path:
        ec = self.cfg.export

        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_adapt.export import export_model

            samples = [d.full_text() for d in store.by_ords(store.sample_ords(32, random.Random(0)))]
            res = export_model(str(model_dir), stage_dir, ec, sample_texts=samples, progress=self.progress)
            return {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}

        self._stage("export", {"export": ec}, build)
        return self.dir / "export"

    def _stage_serve(self, export_dir: Path, queries: list[GeneratedQuery]) -> dict[str, Any]:
        def build(stage_dir: Path) -> dict[str, Any]:
            from rgpl_plugin.base import batched

            from rgpl_adapt.onnx_encoder import OnnxEncoder

            if not self.dist.is_main and self.publisher is not None:
                return {}  # under torchrun with a cluster: rank 0 writes the vectors, the others load nothing
            # documents: the fastest fp32-quality path here (runfolder.corpus_encoder); queries: what serving runs
            docs_encoder, docs_path = corpus_encoder(export_dir, self.cfg.export.onnx, self.cfg.training.precision,
                                                     self.device)
            if not self.dist.is_main:  # under torchrun: this rank's chunks of the store; rank 0 serves them
                self._encode_vectors(docs_encoder, stage_dir / "vectors", key=self._serve_key(docs_path))
                return {}
            log.info("serve: encoding the corpus with %s", docs_path)
            self.backend.drop_vectors(DENSE_SPACE)
            n = 0
            if self.publisher is None:  # every document of the store, in resumable chunks (rgpl_adapt.chunked)
                n = self._encode_store(docs_encoder, stage_dir, path=docs_path)
            for chunk in batched(self.publisher.documents() if self.publisher is not None else (), 10_000):
                vecs = docs_encoder.encode([d.full_text() for d in chunk], batch_size=64, progress=self.progress)
                self.backend.put_vectors(DENSE_SPACE, [d.id for d in chunk], vecs)
                n += len(chunk)
            # the serving encoder for the held-out queries: the corpus one unless that was torch bf16 (no second load)
            encoder = (load_encoder(export_dir, self.cfg.export.onnx, device=self.device)
                       if getattr(docs_encoder, "autocast_bf16", False) else docs_encoder)
            _, held = self._split(queries)
            weights = choose_hybrid_weight(self.backend, encoder, held)
            out = {"vectors": n, "space": DENSE_SPACE, **weights, "onnx": isinstance(encoder, OnnxEncoder),
                   "corpus_encoder": docs_path}
            if self.publisher is not None:
                out["cluster"] = self.publisher.publish(export_dir, weights)
            return out

        inputs: dict[str, Any] = {"vectors": DENSE_SPACE}
        if self.publisher is not None:
            inputs["publish"] = self.publisher.fingerprint()
        m = self._stage("serve", inputs, build)
        return m.outputs

    def _serve_key(self, path: str) -> str:
        """What the serving vectors are of: the run's upstream stages and the encoding path (a resumed encode
        never mixes two paths' vectors)."""
        return f"{self._upstream or ''}:{path}"

    def _encode_store(self, encoder, stage_dir: Path, *, path: str = "") -> int:
        """Encode the store chunk by chunk into stage_dir/vectors (a kill resumes), then serve them."""
        from rgpl_adapt.chunked import put_in_chunks

        res = self._encode_vectors(encoder, stage_dir / "vectors", key=self._serve_key(path))
        return put_in_chunks(self.backend, DENSE_SPACE, self.store_dir, res.path)

    def _encode_vectors(self, encoder, out: Path, *, key: str, batch_size: int = 64) -> ChunkedResult:
        """Every document of the store encoded in resumable chunks into ``out`` (a memory map).

        Under torchrun every rank calls it and encodes its share of the chunks
        (:func:`rgpl_adapt.chunked.encode_store_all_ranks`); rank 0 then reads the whole file.
        """
        from rgpl_adapt.chunked import encode_store_all_ranks

        dim = int(encoder.encode(["dimension probe"], batch_size=1).shape[1])
        return encode_store_all_ranks(encoder, self.store_dir, out, dim=dim, key=key, info=self.dist,
                                      progress=self.progress, chunk_size=self.chunk_size,
                                      batch_size=batch_size)

    # ------------------------------------------------------------------ public
    def run(self, *, resume: bool = False, restart: bool = False, stop_after: int | None = None) -> AdaptResult:
        self.dist, self.device = init_distributed(self.device)
        if not self.dist.is_main:
            self.progress, self.emit = silent, _ignore
            barrier(self.dist)  # rank 0 builds the store and the queries; the others then read them
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2))
        t0 = time.perf_counter()
        store = self._stage_index()
        if store.count() < 2:
            raise PipelineError("the corpus needs at least 2 documents (a positive and a negative)")
        queries = self._stage_queries(store)
        if self.dist.is_main:
            barrier(self.dist)
        pools = self._stage_negatives(queries)  # this and the stages below: every rank (EVERY_RANK)
        model_dir = self._stage_train(queries, pools, resume=resume, restart=restart, stop_after=stop_after)
        export_dir = self._stage_export(model_dir, store) if self.dist.is_main else self.dir / "export"
        barrier(self.dist)  # rank 0 has exported: every rank loads the export to encode its serving chunks
        served = self._stage_serve(export_dir, queries)
        if not self.dist.is_main:  # publishing and the report are rank 0's
            return AdaptResult(self.dir, model_dir, None, self.report)
        if self.publisher is not None:
            self.report["cluster"] = {**self.publisher.describe(), **served.get("cluster", {})}
        self.report["seconds"] = round(time.perf_counter() - t0, 3)
        self.report["device"] = self.device
        (self.dir / "report.json").write_text(json.dumps(self.report, indent=2, default=str))
        onnx_dir = export_dir / "onnx" if (export_dir / "onnx").exists() else None
        return AdaptResult(self.dir, export_dir / "sentence-transformers", onnx_dir, self.report)
