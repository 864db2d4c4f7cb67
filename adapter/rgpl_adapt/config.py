"""Configuration: one frozen dataclass per stage, gathered in :class:`AdaptConfig`.

Defaults are the R-GPL paper's (models from a hub, 140k steps on a GPU). Every model is a
hub name *or a local path*; offline machines pass local paths. ``AdaptConfig.cpu_sized()``
returns a run that finishes in minutes on a laptop CPU, keeping the same algorithm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Similarity = Literal["dot", "cosine"]

# The paper's models (arXiv 2501.14434, following GPL).
DEFAULT_GENERATOR = "BeIR/query-gen-msmarco-t5-base-v1"
DEFAULT_TEACHER = "cross-encoder/ms-marco-MiniLM-L-6-v2"
DEFAULT_STUDENT = "GPL/msmarco-distilbert-margin-mse"
DEFAULT_RETRIEVERS = ("msmarco-distilbert-base-v3", "msmarco-MiniLM-L-6-v3")


_ADDED = "omit_default_from_hash"


def added_field(default: Any) -> Any:
    """A config field added after runs were made: at its default it is left out of :func:`config_hash`,
    so existing run folders keep their stage fingerprints (and are not rebuilt) after an upgrade."""
    return field(default=default, metadata={_ADDED: True})


@dataclass(frozen=True)
class CorpusConfig:
    """Where the documents come from and how records are validated."""

    path: str = ""
    text_field: str = "text"
    title_field: str = "title"
    id_field: str = "_id"
    max_chars: int = 100_000  # longer records are counted as "huge" and skipped
    limit: int | None = None  # read at most this many valid documents


@dataclass(frozen=True)
class GenerationConfig:
    """Pseudo-query generation. ``kind="auto"`` picks seq2seq or causal from the model config."""

    model: str = DEFAULT_GENERATOR
    kind: Literal["auto", "seq2seq", "causal"] = "auto"
    queries_per_passage: int | None = None  # None: GPL's rule max(3, ceil(250k / |C|))
    max_queries: int = 250_000  # large corpora are sampled down to this many queries
    batch_size: int = 32
    max_input_len: int = 512  # passage tokens given to the generator (BEIR's QGen truncates T5 input at 512)
    extra_filters: bool = True  # drop < 2-word, > 32-word and cross-passage repeated queries (not in GPL)
    max_query_len: int = 64
    top_p: float = 0.95
    top_k: int = 25
    temperature: float = 1.0
    prompt: str | None = None  # causal LMs: few-shot prompt with a {passage} slot
    seed: int = 42
    # real queries of the users (rgpl_adapt.query_style): the causal LM's few-shot examples (unless
    # ``prompt`` is set); seq2seq candidates (style_oversample x as many) are kept by closeness of style
    example_queries: tuple[str, ...] = added_field(())
    style_oversample: int = added_field(3)


@dataclass(frozen=True)
class MiningConfig:
    """Initial hard negatives: top-k of each dense retriever (plus BM25 if asked), positives excluded.

    ``similarity`` is how the miners rank: ``cosine`` (normalised embeddings), as GPL and R-GPL mine
    (``score: [cos_sim, cos_sim]``), or ``dot``. The student's remining always ranks by dot product
    (R-GPL). BM25 negatives are an addition of ours, off by default (neither reference uses them).
    """

    retrievers: tuple[str, ...] = DEFAULT_RETRIEVERS
    similarity: Literal["cosine", "dot"] = "cosine"
    bm25: bool = False
    k: int = 50
    encode_batch_size: int = 128
    max_seq_len: int = 350
    # exact top-k unless estimated slower than this (per retriever), then HNSW with measured recall
    exact_budget_s: float = added_field(600.0)


@dataclass(frozen=True)
class LabelConfig:
    """Teacher for margins. ``kind="auto"`` detects a cross-encoder from the model files."""

    teacher: str = DEFAULT_TEACHER
    kind: Literal["auto", "cross-encoder", "bi-encoder"] = "auto"
    batch_size: int = 64
    max_seq_len: int = 350  # query and passage each truncated to this many tokens (GPL/R-GPL)
    max_pair_len: int = 512  # the cross-encoder's (query, passage) input


@dataclass(frozen=True)
class TrainConfig:
    """MarginMSE training of the student (bi-encoder)."""

    student: str = DEFAULT_STUDENT
    steps: int = 140_000
    batch_size: int = 32
    max_seq_len: int = 350
    lr: float = 2e-5
    warmup_steps: int = 1000
    weight_decay: float = 0.01
    similarity: Similarity = "dot"  # "cosine" really normalises (unlike the reference code)
    precision: Precision = "auto"  # auto: bf16/fp16 autocast on GPU, fp32 on CPU
    checkpoint_every: int = 10_000
    eval_every: int = 0  # 0: no periodic evaluation (needs --eval-qrels)
    seed: int = 42


@dataclass(frozen=True)
class RemineConfig:
    """R-GPL: every ``every`` steps re-encode the corpus with the student and replace negatives.

    ``every=0`` disables remining, which is plain GPL.
    """

    every: int = 25_000
    k: int = 50
    encode_batch_size: int = 128
    exact_budget_s: float = added_field(600.0)  # per round, as MiningConfig.exact_budget_s


@dataclass(frozen=True)
class ExportConfig:
    onnx: bool = True
    int8: bool = False
    fp16: bool = False  # model_fp16.onnx: the fused graph in float16, for onnxruntime's CUDA provider
    opset: int = 17
    optimize: bool = True  # onnxruntime transformer fusion (attention, LayerNorm, GELU) -> model_opt.onnx
    max_ir_version: int = 8  # ML Commons ships onnxruntime 1.16.3 (IR <= 9) since 2.16, 1.14 (IR <= 8) before
    tolerance: float = 1e-4  # max abs diff allowed between ONNX and torch embeddings


@dataclass(frozen=True)
class AdaptConfig:
    """The whole adaptation run."""

    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    labels: LabelConfig = field(default_factory=LabelConfig)
    training: TrainConfig = field(default_factory=TrainConfig)
    remine: RemineConfig = field(default_factory=RemineConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    device: str = "auto"  # auto, cpu, cuda, cuda:1, mps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdaptConfig:
        kinds = {f.name: f.type for f in dataclasses.fields(cls)}
        sections = {
            "corpus": CorpusConfig,
            "generation": GenerationConfig,
            "mining": MiningConfig,
            "labels": LabelConfig,
            "training": TrainConfig,
            "remine": RemineConfig,
            "export": ExportConfig,
        }
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name not in kinds:
                raise ValueError(f"unknown config section {name!r}")
            if name in sections:
                sec = sections[name]
                known = {f.name for f in dataclasses.fields(sec)}
                unknown = set(value) - known
                if unknown:
                    raise ValueError(f"unknown option(s) in [{name}]: {', '.join(sorted(unknown))}")
                tuples = {f.name for f in dataclasses.fields(sec) if isinstance(f.default, tuple)}
                value = {key: tuple(v) if key in tuples and isinstance(v, list) else v
                         for key, v in value.items()}
                kwargs[name] = sec(**value)
            else:
                kwargs[name] = value
        return cls(**kwargs)

    def paper(self) -> AdaptConfig:
        """The references' settings exactly: the paper's defaults without our extra query filters.

        Differences that remain are listed in README ("Where we differ from the references").
        """
        return replace(self, generation=replace(self.generation, extra_filters=False))

    def cpu_sized(self) -> AdaptConfig:
        """Same algorithm, sized to finish in minutes on 2 CPU cores (a smoke-scale run)."""
        return replace(
            self,
            generation=replace(self.generation, queries_per_passage=1, max_queries=2_000, batch_size=16),
            mining=replace(self.mining, k=20, max_seq_len=256),
            labels=replace(self.labels, max_seq_len=256),
            training=replace(
                self.training,
                steps=300,
                batch_size=16,
                max_seq_len=128,
                warmup_steps=30,
                checkpoint_every=100,
            ),
            remine=replace(self.remine, every=100, k=20),
        )

    def offline_cpu_sized(self) -> AdaptConfig:
        """:meth:`cpu_sized` for the offline models (``--models offline``) on a CPU.

        Their two slow parts on 2 cores (bench/RESULTS.md, "The offline quick start"): Gemma-3-270M writes
        a query in ~1.8 s, and the mpnet teacher (fp32, as labels are) scores 4.6 passages/s at 256 tokens,
        13 at 128. With 2,000 queries and 256 tokens the run would take ~1.7 h (from those rates); with 400
        queries and a 128-token teacher (the student trains at 128) it took the time RESULTS gives. ``--max-queries`` and a config file scale it back up.
        """
        c = self.cpu_sized()
        return replace(c, generation=replace(c.generation, max_queries=400),
                       labels=replace(c.labels, max_seq_len=128))


def config_hash(*parts: Any) -> str:
    """A stable short hash of dataclasses / JSON-able values (used by stage manifests)."""

    def norm(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {
                f.name: norm(getattr(value, f.name))
                for f in dataclasses.fields(value)
                if not (f.metadata.get(_ADDED) and getattr(value, f.name) == f.default)
            }
        if isinstance(value, (list, tuple)):
            return [norm(v) for v in value]
        if isinstance(value, dict):
            return {str(k): norm(v) for k, v in value.items()}
        return value

    blob = json.dumps([norm(p) for p in parts], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
