"""Stage 5: MarginMSE training of the student, with R-GPL remining rounds and resumable checkpoints.

Training is split into *rounds* of ``remine.every`` steps (one round when remining is off,
which is plain GPL). Each round has its own negative pool and its own labelled triples,
``steps_in_round * batch_size`` of them, sampled GPL-style (query, positive, a random negative
of its pool) and labelled by the teacher. Round 0 uses the initial mined pools; round r > 0
first re-mines with the current student (:mod:`rgpl_adapt.remining`). One linear warm-up /
decay schedule spans all rounds.

Under torchrun every rank encodes its chunks of the store for a remining round; rank 0 searches and labels.

Everything needed to resume is on disk: ``checkpoints/step-N/`` holds the student, the
optimizer, the scheduler, the step and the RNG states; ``rounds/rK/`` holds the round's pools
and labelled triples (the data position is the step within the round).
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rgpl_adapt.config import AdaptConfig, config_hash
from rgpl_adapt.distributed import barrier, dist_info, from_main, shard
from rgpl_adapt.encoding import encode_precision, features
from rgpl_adapt.labeling import ScoreCache, Teacher, label_triples, margin_stats, sample_triples
from rgpl_adapt.losses import margin_mse
from rgpl_adapt.manifest import Manifest, is_complete, write_manifest
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.records import GeneratedQuery, LabeledTriple, NegativePool, read_jsonl, write_jsonl
from rgpl_adapt.remining import encode_corpus, remine
from rgpl_plugin.base import Backend

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

Evaluator = Callable[["SentenceTransformer"], dict[str, float]]


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says what to do."""


@dataclass(frozen=True)
class TrainResult:
    model_dir: Path
    steps: int
    rounds: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    final_loss: float = float("nan")
    seconds: float = 0.0
    precision: str = "fp32"
    """What the steps ran at (``resolve_precision`` of the setting on the device): fp32, bf16 or fp16."""
    device: str = "cpu"


@dataclass
class TrainingData:
    """What the trainer needs besides models: queries, their positives and the passage texts.

    Either the passages in memory (``doc_ids`` and ``doc_texts``: small corpora, tests) or a
    document ``store`` (a folder with ``docs.sqlite``): then only the texts of each round's triples
    are read, and remining encodes the store in resumable chunks of ``chunk_size`` into a memory map.
    """

    queries: list[GeneratedQuery]
    doc_ids: list[str] = field(default_factory=list)
    doc_texts: list[str] = field(default_factory=list)
    store: str | os.PathLike | None = None
    chunk_size: int = 65536

    def __post_init__(self) -> None:
        from rgpl_plugin.docstore import TextsById

        self.query_text = {q.qid: q.text for q in self.queries}
        self.text_of: Any = TextsById(self.store) if self.store is not None else dict(zip(self.doc_ids, self.doc_texts))


def round_bounds(total_steps: int, every: int) -> list[tuple[int, int]]:
    """[start, end) steps of each round; one round when ``every`` is 0 (plain GPL)."""
    if total_steps <= 0:
        raise TrainingError("training steps must be positive")
    if every <= 0 or every >= total_steps:
        return [(0, total_steps)]
    return [(s, min(s + every, total_steps)) for s in range(0, total_steps, every)]


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on GPUs that support it, else fp16 on GPU; fp32 on CPU."""
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


class Trainer:
    """Runs (or resumes) the training stage in ``work_dir``."""

    def __init__(
        self,
        cfg: AdaptConfig,
        work_dir: str | os.PathLike,
        *,
        student_path: str,
        backend: Backend,
        data: TrainingData,
        initial_pools: Sequence[NegativePool],
        teacher: Teacher | Callable[[], Teacher],
        cache: ScoreCache,
        device: str = "cpu",
        evaluator: Evaluator | None = None,
        progress: ProgressFactory = silent,
        keep_checkpoints: int = 2,
        stop_after: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.tc = cfg.training
        self.dir = Path(work_dir)
        self.student_path = student_path
        self.backend = backend
        self.data = data
        self.initial_pools = list(initial_pools)
        self._teacher = teacher
        self.cache = cache
        self.device = device
        self.evaluator = evaluator
        self.progress = progress
        self.keep_checkpoints = keep_checkpoints
        self.stop_after = stop_after  # for tests and time-boxed runs: stop (checkpointed) at this step
        self.rounds = round_bounds(self.tc.steps, cfg.remine.every)
        # What must be equal for a checkpoint to be resumable.
        self.fingerprint = config_hash(cfg.training, cfg.remine, cfg.labels, student_path)
        self.dist = dist_info()
        if not self.dist.is_main:
            self.progress = silent

    # ------------------------------------------------------------------ helpers
    @property
    def teacher(self) -> Teacher:
        if callable(self._teacher) and not hasattr(self._teacher, "score"):
            self._teacher = self._teacher()  # loaded lazily: a resumed run may not need it
        return self._teacher  # type: ignore[return-value]

    def _log(self, record: dict[str, Any]) -> None:
        if not self.dist.is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def latest_checkpoint(self) -> Path | None:
        pointer = self.dir / "checkpoints" / "latest.json"
        if not pointer.exists():
            return None
        return self.dir / "checkpoints" / json.loads(pointer.read_text())["dir"]

    # ------------------------------------------------------------------ rounds
    def _round_dir(self, r: int) -> Path:
        return self.dir / "rounds" / f"r{r}"

    def _round_manifest(self, r: int) -> Manifest:
        start, end = self.rounds[r]
        return Manifest.for_inputs("round", fingerprint=self.fingerprint, round=r, start=start, end=end)

    def _prepare_round(self, r: int, model: SentenceTransformer, previous: list[NegativePool] | None) -> list[LabeledTriple]:
        """Pools and labelled triples of round ``r`` (re-mined for r > 0), persisted; loaded if done."""
        rdir = self._round_dir(r)
        expected = self._round_manifest(r)
        if r > 0 and self.dist.enabled and self.data.store is not None:
            if not from_main(self.dist, is_complete(rdir, expected)):  # every rank takes rank 0's branch
                # each rank its chunks, with the student (equal on all ranks under DDP); rank 0's remine
                # then finds every chunk done
                encode_corpus(model, self.data.store, rdir, info=self.dist, progress=self.progress,
                              **self._corpus_encoding(r))
        if self.dist.is_main:
            labeled = self._build_round(r, model, previous, rdir, expected)
        barrier(self.dist)  # under torchrun, rank 0 re-mines and labels while the others wait here
        if not self.dist.is_main:
            if not is_complete(rdir, expected):
                raise TrainingError(f"rank {self.dist.rank}: round {r} was not prepared by rank 0 in {rdir}")
            labeled = list(read_jsonl(rdir / "triples.jsonl", LabeledTriple))
        if hasattr(self.data.text_of, "load"):  # a document store: hold the texts of this round's triples only
            self.data.text_of.load(d for t in labeled for d in (t.pos_id, t.neg_id))
        return labeled

    def _corpus_encoding(self, r: int) -> dict[str, Any]:
        """How round ``r`` re-encodes the corpus: the same on every rank and in :func:`remine`."""
        return {
            "normalize": self.tc.similarity == "cosine",
            "batch_size": self.cfg.remine.encode_batch_size,
            # auto: bf16 where the CPU/GPU has it; 2.4x faster on AVX512-bf16 CPUs, top-10 overlap 0.993
            # (bench/remine_cost.py); rule in rgpl_adapt.encoding.encode_precision
            "autocast_bf16": encode_precision(self.tc.precision, self.device) == "bf16",
            "chunk_size": self.data.chunk_size,
            # the checkpoint at the round's first step encodes
            "key": f"{self.fingerprint}:r{r}:{self.rounds[r][0]}",
        }

    def _build_round(
        self, r: int, model: SentenceTransformer, previous: list[NegativePool] | None, rdir: Path, expected: Manifest
    ) -> list[LabeledTriple]:
        if is_complete(rdir, expected):
            return list(read_jsonl(rdir / "triples.jsonl", LabeledTriple))
        start, end = self.rounds[r]
        info: dict[str, Any] = {"round": r, "start_step": start}
        if r == 0:
            pools = self.initial_pools
        else:
            t0 = time.perf_counter()
            result = remine(
                model,
                self.backend,
                self.data.queries,
                self.data.doc_ids,
                self.data.doc_texts,
                round_index=r,
                k=self.cfg.remine.k,
                previous=previous,
                progress=self.progress,
                exact_budget_s=self.cfg.remine.exact_budget_s,
                device=self.device,
                store=self.data.store,
                work_dir=rdir,
                **self._corpus_encoding(r),
            )
            pools = result.pools
            info.update(churn=result.churn, remine_seconds=time.perf_counter() - t0, search=result.search)
        triples = sample_triples(self.data.queries, pools, (end - start) * self.tc.batch_size, seed=self.tc.seed + r)
        if not triples:
            raise TrainingError(
                f"round {r} has no training triples: every query has an empty negative pool. "
                "Is the corpus large enough (more documents than 1 positive per query)?"
            )
        labeled = label_triples(
            triples,
            self.teacher,
            query_text=self.data.query_text,
            doc_text=self.data.text_of,
            cache=self.cache,
            batch_size=self.cfg.labels.batch_size,
            progress=self.progress,
        )
        write_jsonl(rdir / "pools.jsonl", pools)
        write_jsonl(rdir / "triples.jsonl", labeled)
        info.update(margin_stats(labeled))
        info.update({f"cache_{k}": v for k, v in self.cache.stats().items()})
        write_manifest(rdir, expected, info)
        shutil.rmtree(rdir / "vectors", ignore_errors=True)  # remining's resumable chunks, no longer needed
        self._log({"event": "round", **info})
        return labeled

    def _pools_of(self, r: int) -> list[NegativePool] | None:
        path = self._round_dir(r) / "pools.jsonl"
        return list(read_jsonl(path, NegativePool)) if path.exists() else None

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, model, optimizer, scheduler, scaler, step: int) -> None:
        if self.dist.is_main:
            self._write_checkpoint(model, optimizer, scheduler, scaler, step)
        barrier(self.dist)

    def _write_checkpoint(self, model, optimizer, scheduler, scaler, step: int) -> None:
        import torch

        ckdir = self.dir / "checkpoints"
        name = f"step-{step:08d}"
        tmp = ckdir / (name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        model.save(str(tmp / "model"))
        torch.save(
            {
                "step": step,
                "fingerprint": self.fingerprint,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": {
                    "python": random.getstate(),
                    "numpy": np.random.get_state(),
                    "torch": torch.get_rng_state(),
                },
            },
            tmp / "state.pt",
        )
        final = ckdir / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer = ckdir / "latest.json"
        pointer.with_suffix(".tmp").write_text(json.dumps({"dir": name, "step": step}))
        os.replace(pointer.with_suffix(".tmp"), pointer)
        old = sorted(p for p in ckdir.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
        for p in old[: -self.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)

    # ------------------------------------------------------------------ main loop
    def run(self, *, resume: bool = False) -> TrainResult:
        import torch
        from transformers import get_linear_schedule_with_warmup

        from rgpl_adapt.models import load_sentence_transformer

        t_start = time.perf_counter()
        step = 0
        checkpoint = self.latest_checkpoint()
        if checkpoint is not None and not resume:
            raise TrainingError(
                f"{self.dir} holds a checkpoint of an interrupted run ({checkpoint.name}). "
                "Pass --resume to continue it, or --restart to start training over."
            )
        state = None
        if checkpoint is not None:
            state = torch.load(checkpoint / "state.pt", map_location="cpu", weights_only=False)
            if state["fingerprint"] != self.fingerprint:
                raise TrainingError(
                    f"the checkpoint in {checkpoint} was made with other training settings; "
                    "rerun with the original settings to resume, or pass --restart to start over."
                )
            step = int(state["step"])
            model = load_sentence_transformer(str(checkpoint / "model"), self.device, self.tc.max_seq_len)
            log.info("resuming training at step %d from %s", step, checkpoint)
        else:
            random.seed(self.tc.seed)
            np.random.seed(self.tc.seed)
            torch.manual_seed(self.tc.seed)
            model = load_sentence_transformer(self.student_path, self.device, self.tc.max_seq_len)
        model.train()
        train_model = _triplet_encoder(model)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            dev = torch.device(self.device)  # a rank's GPU (ranks sharing a GPU name the same one); "cuda": current
            ids = [torch.cuda.current_device() if dev.index is None else dev.index] if dev.type == "cuda" else None
            # find_unused_parameters: e.g. BERT's pooler is not used by sentence-transformers pooling.
            train_model = DistributedDataParallel(train_model, device_ids=ids, find_unused_parameters=True)

        no_decay = ("bias", "LayerNorm.weight", "LayerNorm.bias", "layer_norm", "norm.weight")
        params = list(model.named_parameters())
        groups = [
            {"params": [p for n, p in params if not any(nd in n for nd in no_decay)], "weight_decay": self.tc.weight_decay},
            {"params": [p for n, p in params if any(nd in n for nd in no_decay)], "weight_decay": 0.0},
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.tc.lr)
        scheduler = get_linear_schedule_with_warmup(optimizer, min(self.tc.warmup_steps, self.tc.steps), self.tc.steps)
        precision = resolve_precision(self.tc.precision, self.device)
        device_type = "cuda" if self.device.startswith("cuda") else "cpu"
        scaler = torch.amp.GradScaler(device_type) if precision == "fp16" else None
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        if state is not None:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            random.setstate(state["rng"]["python"])
            np.random.set_state(state["rng"]["numpy"])
            torch.set_rng_state(state["rng"]["torch"])

        rounds_info: list[dict[str, Any]] = []
        evals: list[dict[str, Any]] = []
        loss_value = float("nan")
        bs = self.tc.batch_size
        with self.progress(total=self.tc.steps, desc="training", unit="step") as bar:
            bar.update(step)
            for r, (start, end) in enumerate(self.rounds):
                if step >= end:
                    continue
                if r > 0 and step == start:
                    # Round boundary: checkpoint first, so a crash during remining resumes here.
                    latest = self.latest_checkpoint()
                    if latest is None or latest.name != f"step-{step:08d}":
                        self._save_checkpoint(model, optimizer, scheduler, scaler, step)
                triples = self._prepare_round(r, model, self._pools_of(r - 1) if r > 0 else None)
                model.train()
                offset = (step - start) * bs
                while step < end:
                    batch = triples[offset % len(triples) : offset % len(triples) + bs]
                    if len(batch) < bs:  # the round has fewer triples than steps*bs: wrap around
                        batch = batch + triples[: bs - len(batch)]
                    offset += bs
                    loss_value = self._step(model, train_model, optimizer, scheduler, scaler, amp_dtype, device_type, batch)
                    step += 1
                    bar.update(1)
                    if step % 10 == 0 or step == end:
                        bar.set_postfix(loss=f"{loss_value:.4f}", round=r)
                        self._log({"event": "step", "step": step, "loss": loss_value, "lr": scheduler.get_last_lr()[0], "round": r})
                    if self.evaluator is not None and self.dist.is_main and self.tc.eval_every and step % self.tc.eval_every == 0:
                        metrics = self.evaluator(model)
                        model.train()
                        evals.append({"step": step, **metrics})
                        self._log({"event": "eval", "step": step, **metrics})
                    if step % self.tc.checkpoint_every == 0 and step < self.tc.steps:
                        self._save_checkpoint(model, optimizer, scheduler, scaler, step)
                    if self.stop_after is not None and step >= self.stop_after:
                        self._save_checkpoint(model, optimizer, scheduler, scaler, step)
                        raise TrainingInterrupted(step)
                info_path = self._round_dir(r) / "manifest.json"
                rounds_info.append(json.loads(info_path.read_text())["outputs"] if info_path.exists() else {"round": r})

        final = self.dir / "final"
        if self.dist.is_main:
            tmp = self.dir / "final.tmp"
            if tmp.exists():
                shutil.rmtree(tmp)
            model.save(str(tmp))
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        barrier(self.dist)
        return TrainResult(
            model_dir=final,
            steps=step,
            rounds=rounds_info,
            evals=evals,
            final_loss=loss_value,
            seconds=time.perf_counter() - t_start,
            precision=precision,
            device=self.device,
        )

    def _step(
        self, model, train_model, optimizer, scheduler, scaler, amp_dtype, device_type: str, batch: Sequence[LabeledTriple]
    ) -> float:
        """One optimizer step on a global batch; under DDP this rank takes its shard of it."""
        import torch

        batch = shard(list(batch), self.dist)
        qs = [self.data.query_text[t.qid] for t in batch]
        ps = [self.data.text_of[t.pos_id] for t in batch]
        ns = [self.data.text_of[t.neg_id] for t in batch]
        margins = torch.tensor([t.margin for t in batch], dtype=torch.float32, device=model.device)

        with torch.autocast(device_type, dtype=amp_dtype, enabled=amp_dtype is not None):
            q, p, n = train_model(features(model, qs), features(model, ps), features(model, ns))
            loss = margin_mse(q, p, n, margins, self.tc.similarity)
        optimizer.zero_grad(set_to_none=True)
        optimizer_step(loss, model, optimizer, scheduler, scaler)
        return float(loss.detach())


def optimizer_step(loss, model, optimizer, scheduler, scaler) -> bool:
    """Backward, clip to norm 1, optimizer and scheduler step; returns whether the optimizer stepped.

    fp16 (``scaler`` set): when the scaler finds inf/NaN gradients it skips ``optimizer.step()`` and
    lowers its scale; the scheduler then does not step either, so the schedule never runs ahead of
    the steps actually taken.
    """
    import torch

    if scaler is None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        return True
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    stepped = scaler.get_scale() >= scale_before
    if stepped:
        scheduler.step()
    return stepped


def _triplet_encoder_class():
    import torch

    class TripletEncoder(torch.nn.Module):
        """Query, positive and negative embeddings in ONE forward call (what DDP synchronises on).

        Each part is padded on its own, so short queries are not padded to passage length.
        """

        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, fq: dict, fp: dict, fn: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return tuple(self.model(f)["sentence_embedding"] for f in (fq, fp, fn))  # type: ignore[return-value]

    return TripletEncoder


def _triplet_encoder(model):
    """Wrap ``model`` in a TripletEncoder (the class is defined on first use: torch loads lazily)."""
    return _triplet_encoder_class()(model)


class TrainingInterrupted(RuntimeError):
    """Raised by ``stop_after``: training stopped at a checkpoint on purpose."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training stopped at step {step} (checkpoint saved; rerun with --resume)")
        self.step = step
