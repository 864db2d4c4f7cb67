"""Stage 2: pseudo-query generation (GPL's doc2query step).

For every passage a generator samples a few queries the passage answers; each becomes a
:class:`GeneratedQuery` whose positive is that passage. Following GPL / BEIR's ``QGenModel``:

* the model input is the passage as ``title + " " + text`` truncated to ``max_input_len`` tokens;
* decoding is nucleus sampling (``do_sample``, ``top_p=0.95``, ``top_k=25``), ``n`` sequences per
  passage, at most ``max_query_len`` new tokens;
* GPL's budget: ``max(3, ceil(250k / |C|))`` queries per passage, so about 250k queries in all;
  corpora where even 3 per passage would exceed ``max_queries`` are sampled down
  (:func:`plan_generation`).

Two generator kinds implement :class:`QueryGenerator`: a doc2query seq2seq model (T5,
:class:`Seq2SeqGenerator`) and a prompted causal LM (e.g. Gemma-3-270M, :class:`CausalLMGenerator`);
:func:`load_generator` picks one from the model config. The pure parts (budget, sampling, the
query-cleaning rules of :func:`query_drop_reason`) need no model.

:func:`generate_queries` works on any slice of the planned passages and is deterministic given
``cfg.seed`` and the slice, so the pipeline can generate chunk by chunk and persist as it goes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from rgpl_adapt.config import GenerationConfig
from rgpl_adapt.devices import require, resolve_device
from rgpl_adapt.models import ModelLoadError, _explain
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.records import Document, GeneratedQuery

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_MAX_QUERY_WORDS",
    "GenerationStats",
    "QueryGenerator",
    "Seq2SeqGenerator",
    "CausalLMGenerator",
    "queries_per_passage",
    "plan_generation",
    "query_key",
    "query_drop_reason",
    "filter_queries",
    "clean_queries",
    "batch_seed",
    "validate_prompt",
    "prompt_example_keys",
    "load_generator",
    "generate_queries",
]

GPL_QUERY_BUDGET = 250_000  # GPL's total number of generated queries
GPL_MIN_PER_PASSAGE = 3

DEFAULT_PROMPT = (
    "Passage: The Eiffel Tower in Paris was completed in 1889 and is about 330 metres tall.\n"
    "Question: how tall is the eiffel tower\n\n"
    "Passage: Regular aerobic exercise lowers resting blood pressure in adults with hypertension.\n"
    "Question: does exercise reduce high blood pressure\n\n"
    "Passage: Appending an element to a Python list takes amortized constant time.\n"
    "Question: time complexity of list append in python\n\n"
    "Passage: {passage}\nQuestion:"
)
"""Few-shot prompt for causal LMs: generic examples, ending with the passage slot."""

DEFAULT_MAX_QUERY_WORDS = 32
"""Queries longer than this many words are dropped (doc2query queries are short; long ones ramble)."""

_WORD = re.compile(r"\w+")


# --------------------------------------------------------------------------- budget and sampling


def queries_per_passage(n_docs: int, cfg: GenerationConfig) -> int:
    """Queries to generate per passage: ``cfg.queries_per_passage``, else GPL's rule.

    GPL's rule is ``max(3, ceil(max_queries / n_docs))`` with ``max_queries`` = 250k by default,
    i.e. about 250k queries whatever the corpus size, and at least 3 per passage.
    """
    if cfg.queries_per_passage is not None:
        if cfg.queries_per_passage < 1:
            raise ValueError(f"queries_per_passage must be at least 1, got {cfg.queries_per_passage}")
        return cfg.queries_per_passage
    if n_docs < 1:
        raise ValueError(f"cannot size query generation for {n_docs} passages; the corpus is empty")
    if cfg.max_queries < 1:
        raise ValueError(f"max_queries must be at least 1, got {cfg.max_queries}")
    return max(GPL_MIN_PER_PASSAGE, math.ceil(cfg.max_queries / n_docs))


def plan_sample(n_docs: int, cfg: GenerationConfig, rng: random.Random | None = None) -> tuple[list[int] | None, int]:
    """Which passages (by position, sorted) to generate for, and the queries per passage.

    ``None`` means every passage. Only the positions are drawn, so a corpus of any size is planned
    without loading it (the pipeline then reads the sampled passages from its document store). See
    :func:`plan_generation` for the rule; both draw the same sample for the same seed.
    """
    if n_docs <= 0:
        return [], cfg.queries_per_passage or GPL_MIN_PER_PASSAGE
    qpp = queries_per_passage(n_docs, cfg)
    slack = n_docs - 1 if cfg.queries_per_passage is None else 0
    if n_docs * qpp <= cfg.max_queries + slack:
        return None, qpp
    n_keep = cfg.max_queries // qpp
    if n_keep < 1:
        raise ValueError(
            f"queries_per_passage={qpp} exceeds max_queries={cfg.max_queries}: no passage fits; "
            "raise max_queries or lower queries_per_passage"
        )
    rng = rng if rng is not None else random.Random(cfg.seed)
    keep = sorted(rng.sample(range(n_docs), n_keep))
    logger.info(
        "%d passages x %d queries would exceed max_queries=%d: sampled %d passages (seed %d)",
        n_docs, qpp, cfg.max_queries, n_keep, cfg.seed,
    )
    return keep, qpp


def plan_generation(
    documents: Sequence[Document], cfg: GenerationConfig, rng: random.Random | None = None
) -> tuple[list[Document], int]:
    """The passages to generate for and the number of queries per passage.

    When ``n_docs * qpp`` exceeds ``cfg.max_queries``, ``cfg.max_queries // qpp`` passages are
    sampled with ``rng`` (default ``random.Random(cfg.seed)``), keeping corpus order. With GPL's
    rule, ``ceil`` rounding makes the plan overshoot ``max_queries`` by less than one query per
    passage; that overshoot is GPL's own behaviour and does not trigger sampling (so a small corpus
    is never sampled). Sampling happens exactly when the minimum of 3 per passage binds, or when an
    explicit ``queries_per_passage`` would exceed the cap.
    """
    docs = list(documents)
    keep, qpp = plan_sample(len(docs), cfg, rng)
    return (docs if keep is None else [docs[i] for i in keep]), qpp


# --------------------------------------------------------------------------- cleaning (pure)


def query_key(text: str) -> str:
    """The identity of a query for de-duplication: its words, case-folded, punctuation ignored.

    ``"What is X?"`` and ``"what is x"`` have the same key.
    """
    return " ".join(w.casefold() for w in _WORD.findall(text))


def query_drop_reason(
    query: str, passage: str, *, max_words: int = DEFAULT_MAX_QUERY_WORDS, extra: bool = True
) -> str | None:
    """Why a generated query is degenerate, or None when it is kept. Rules, in order:

    * ``"empty"``: nothing but whitespace;
    * ``"no_words"``: only punctuation or symbols (no word character at all);
    * ``"too_short"``: fewer than 2 words (a word is a run of letters/digits/underscore);
    * ``"repeated"``: one word repeated (``"cancer cancer cancer"``), or a sampling loop: at least
      6 words of which fewer than a third are distinct (``"a b a b a b a b a"``);
    * ``"copies_passage"``: the query's words (at least 4) are exactly the first words of the passage,
      i.e. the model echoed its input instead of asking something (shorter matches are often
      legitimate title-like queries and are kept);
    * ``"too_long"``: more than ``max_words`` words.

    ``extra=False`` (``GenerationConfig.extra_filters``, off under ``--scale paper``) skips the rules
    that GPL does not have: ``too_short`` and ``too_long``.

    ``query`` should already be whitespace-normalised (see :func:`filter_queries`).
    """
    if not query.strip():
        return "empty"
    words = [w.casefold() for w in _WORD.findall(query)]
    if not words:
        return "no_words"
    if extra and len(words) < 2:
        return "too_short"
    distinct = len(set(words))
    if (distinct == 1 and len(words) > 1) or (len(words) >= 6 and distinct * 3 < len(words)):
        return "repeated"
    if len(words) >= 4:
        head = [w.casefold() for w in _WORD.findall(passage)[: len(words)]]
        if head == words:
            return "copies_passage"
    if extra and len(words) > max_words:
        return "too_long"
    return None


def filter_queries(
    raw: Sequence[str], passage: str, *, max_words: int = DEFAULT_MAX_QUERY_WORDS, extra: bool = True
) -> tuple[list[str], Counter[str]]:
    """Clean the raw queries of one passage; returns the kept ones and a count per drop reason.

    Each query is stripped and its whitespace collapsed to single spaces, then checked by
    :func:`query_drop_reason`; finally queries whose :func:`query_key` was already kept for this
    passage are dropped as ``"duplicate"`` (case- and punctuation-insensitive; the first spelling
    is kept). Order is preserved.
    """
    kept: list[str] = []
    dropped: Counter[str] = Counter()
    seen: set[str] = set()
    for text in raw:
        query = " ".join(str(text).split())
        reason = query_drop_reason(query, passage, max_words=max_words, extra=extra)
        if reason is None:
            key = query_key(query)
            if key in seen:
                reason = "duplicate"
            else:
                seen.add(key)
                kept.append(query)
                continue
        dropped[reason] += 1
    return kept, dropped


def clean_queries(raw: list[str], passage: str, *, max_words: int = DEFAULT_MAX_QUERY_WORDS) -> list[str]:
    """The kept queries of :func:`filter_queries` (rules documented in :func:`query_drop_reason`)."""
    return filter_queries(raw, passage, max_words=max_words)[0]


def batch_seed(seed: int, doc_ids: Sequence[str]) -> int:
    """A sampling seed for one batch, derived from the run seed and the batch's passage ids.

    Deterministic for the same seed and batch, different across batches and chunks, and independent
    of where a chunk starts in the corpus.
    """
    digest = hashlib.blake2b(("\x1f".join(doc_ids)).encode("utf-8"), digest_size=8, key=str(seed).encode())
    return int.from_bytes(digest.digest(), "little") % (2**32)


# --------------------------------------------------------------------------- stats and the stage


@dataclass(frozen=True)
class GenerationStats:
    """What one :func:`generate_queries` call did. Combine chunk stats with :meth:`merged`."""

    passages: int = 0  # passages given
    passages_used: int = 0  # after sampling down to max_queries
    queries_per_passage: int = 0
    generated: int = 0  # raw sequences returned by the generator
    kept: int = 0
    passages_without_queries: int = 0  # used passages whose every query was dropped
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    style_candidates: int = 0  # clean seq2seq candidates ranked by style (example queries given)
    style_kept: int = 0  # ... of which kept; the others are dropped["style"]

    def merged(self, other: GenerationStats) -> GenerationStats:
        """Sum of two stats (for a run done in chunks)."""
        dropped = Counter(self.dropped)
        dropped.update(other.dropped)
        return GenerationStats(
            passages=self.passages + other.passages,
            passages_used=self.passages_used + other.passages_used,
            queries_per_passage=max(self.queries_per_passage, other.queries_per_passage),
            generated=self.generated + other.generated,
            kept=self.kept + other.kept,
            passages_without_queries=self.passages_without_queries + other.passages_without_queries,
            dropped=dict(sorted(dropped.items())),
            style_candidates=self.style_candidates + other.style_candidates,
            style_kept=self.style_kept + other.style_kept,
        )


@runtime_checkable
class QueryGenerator(Protocol):
    """Generates ``n`` raw queries for each passage, in passage order.

    ``seed`` makes sampling reproducible; ``None`` means the generator's own default seed.
    """

    def generate(self, passages: Sequence[str], n: int, *, seed: int | None = None) -> list[list[str]]: ...


def generate_queries(
    documents: Sequence[Document],
    generator: QueryGenerator,
    cfg: GenerationConfig,
    *,
    qpp: int | None = None,
    seen: set[str] | None = None,
    max_words: int = DEFAULT_MAX_QUERY_WORDS,
    progress: ProgressFactory = silent,
) -> tuple[list[GeneratedQuery], GenerationStats]:
    """Generate, clean and de-duplicate pseudo queries for ``documents``.

    * Planning: with ``qpp=None`` the documents are the whole corpus and :func:`plan_generation`
      sizes and samples them. A pipeline working in chunks plans once on the corpus, then passes
      each chunk of the planned passages with ``qpp=`` (no sampling is done then).
    * Batching: passages are sorted by length (longest first) into batches of ``cfg.batch_size``;
      each batch is sampled with :func:`batch_seed`, so the output is deterministic given the seed
      and the slice. Output is in the documents' order, queries in generated order.
    * Cleaning: :func:`filter_queries` per passage.
    * Across the corpus, a query text (by :func:`query_key`) is kept only for the *first* passage
      that produced it (dropped as ``"duplicate_across"`` afterwards). GPL keeps such repeats as
      separate queries, but the same query with two different positives is contradictory
      supervision; keeping the first (rather than dropping both) loses little and works chunk by
      chunk: pass the same ``seen`` set to every chunk, it is updated in place with the kept keys
      (only once the chunk's generation finished). To resume after a crash, rebuild it from the
      persisted queries: ``{query_key(q.text) for q in done}``.
    * qids are ``f"{doc_id}-q{j}"``, ``j`` counting the kept queries of the passage; unique as long
      as document ids are (duplicate ids in one call raise ValueError).
    * Style (``cfg.example_queries`` with a generator that is not a prompted causal LM): the generator
      samples ``cfg.style_oversample`` times as many candidates; after cleaning they are taken closest
      style first (:mod:`rgpl_adapt.query_style`) up to the per-passage number; the rest are dropped
      as ``"style"`` (``stats.style_candidates`` / ``stats.style_kept``).
    """
    docs = list(documents)
    ids = [d.id for d in docs]
    if len(set(ids)) != len(ids):
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise ValueError(f"duplicate document id {dup!r}: query ids would collide; deduplicate the corpus")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {cfg.batch_size}")
    if qpp is None:
        selected, n = plan_generation(docs, cfg)
    else:
        if qpp < 1:
            raise ValueError(f"qpp must be at least 1, got {qpp}")
        selected, n = docs, qpp
    texts = [d.full_text() for d in selected]
    style = None
    if cfg.example_queries and getattr(generator, "kind", "") != "causal":  # causal LMs are prompted instead
        from rgpl_adapt.query_style import StyleModel

        if cfg.style_oversample < 1:
            raise ValueError(f"style_oversample must be at least 1, got {cfg.style_oversample}")
        style = StyleModel(cfg.example_queries)
    n_sampled = n * cfg.style_oversample if style is not None else n
    raw: list[list[str]] = [[] for _ in selected]
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    with progress(total=len(selected), desc="generating queries", unit="passage") as bar:
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            seed = batch_seed(cfg.seed, [selected[i].id for i in idx])
            out = generator.generate([texts[i] for i in idx], n_sampled, seed=seed)
            if len(out) != len(idx):
                raise RuntimeError(f"the generator returned {len(out)} query lists for {len(idx)} passages")
            for i, queries in zip(idx, out):
                raw[i] = list(queries)
            bar.update(len(idx))

    seen = seen if seen is not None else set()
    # A prompted LM sometimes repeats one of its few-shot examples: never a query of this passage.
    examples = getattr(generator, "example_keys", frozenset())
    records: list[GeneratedQuery] = []
    dropped: Counter[str] = Counter()
    empty = style_candidates = style_kept = 0
    for doc, text, queries in zip(selected, texts, raw):
        kept, reasons = filter_queries(queries, text, max_words=max_words, extra=cfg.extra_filters)
        dropped.update(reasons)
        if style is not None:
            from rgpl_adapt.query_style import select_by_style

            kept = select_by_style(kept, style)
            style_candidates += len(kept)
        j = 0
        for pos, query in enumerate(kept):
            if style is not None and j == n:
                dropped["style"] += len(kept) - pos
                break
            key = query_key(query)
            if key in examples:
                dropped["prompt_example"] += 1
                continue
            if key in seen and cfg.extra_filters:
                dropped["duplicate_across"] += 1
                continue
            seen.add(key)
            records.append(GeneratedQuery(qid=f"{doc.id}-q{j}", text=query, doc_id=doc.id))
            j += 1
        style_kept += j if style is not None else 0
        empty += j == 0
    stats = GenerationStats(
        passages=len(docs),
        passages_used=len(selected),
        queries_per_passage=n,
        generated=sum(len(q) for q in raw),
        kept=len(records),
        passages_without_queries=empty,
        dropped=dict(sorted(dropped.items())),
        style_candidates=style_candidates,
        style_kept=style_kept,
    )
    logger.info(
        "generated %d queries for %d passages, kept %d (dropped: %s)",
        stats.generated, stats.passages_used, stats.kept, stats.dropped or "none",
    )
    return records, stats


# --------------------------------------------------------------------------- model-backed generators


def _source(name: str) -> tuple[str, dict[str, Any]]:
    """``from_pretrained`` arguments for a hub name, a folder, or a local ``.gguf`` file."""
    if name.lower().endswith(".gguf"):
        require("gguf", extra="gguf")
        if not os.path.isfile(name):
            raise ModelLoadError(f"GGUF file {name!r} does not exist; pass the local path of a .gguf file")
        path = os.path.abspath(name)
        return os.path.dirname(path), {"gguf_file": os.path.basename(path)}
    return name, {}


def _dtype(device: str, *, fp16_ok: bool) -> Any:
    """bf16 (or fp16 where the model tolerates it) on CUDA; fp32 elsewhere."""
    import torch

    if not str(device).startswith("cuda"):
        return torch.float32
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16 if fp16_ok else torch.float32  # T5 overflows in fp16


class _HFGenerator:
    """Shared loading, seeding and chunking of the transformers-backed generators."""

    kind = ""

    def __init__(self, model_name_or_path: str, device: str = "cpu", cfg: GenerationConfig | None = None) -> None:
        self.cfg = cfg or GenerationConfig()
        self.name = str(model_name_or_path)
        self.device = resolve_device(device)
        self.tokenizer, self.model = self._load()
        self.model.eval()

    def _load(self) -> tuple[Any, Any]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _sampling(self) -> dict[str, Any]:
        return {
            "do_sample": True,
            "top_p": self.cfg.top_p,
            "top_k": self.cfg.top_k,
            "temperature": self.cfg.temperature,
            "max_new_tokens": self.cfg.max_query_len,
        }

    def generate(self, passages: Sequence[str], n: int, *, seed: int | None = None) -> list[list[str]]:
        """``n`` sampled queries per passage, in passage order, in chunks of ``cfg.batch_size``."""
        import torch

        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        out: list[list[str]] = []
        devices = [torch.device(self.device)] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=devices), torch.inference_mode():
            torch.manual_seed(self.cfg.seed if seed is None else seed)
            for start in range(0, len(passages), self.cfg.batch_size):
                out.extend(self._generate_batch(list(passages[start : start + self.cfg.batch_size]), n))
        return out

    def _generate_batch(self, passages: list[str], n: int) -> list[list[str]]:  # pragma: no cover
        raise NotImplementedError


class Seq2SeqGenerator(_HFGenerator):
    """A doc2query encoder-decoder (GPL's ``BeIR/query-gen-msmarco-t5-base-v1``)."""

    kind = "seq2seq"

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        source, extra = _source(self.name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model = AutoModelForSeq2SeqLM.from_pretrained(
                source, dtype=_dtype(self.device, fp16_ok=False), **extra
            )
        except Exception as exc:  # noqa: BLE001 - many failure kinds; re-raised with the fix
            raise _explain(self.name, exc) from exc
        return tokenizer, model.to(self.device)

    def _generate_batch(self, passages: list[str], n: int) -> list[list[str]]:
        enc = self.tokenizer(
            passages, padding=True, truncation=True, max_length=self.cfg.max_input_len, return_tensors="pt"
        ).to(self.device)
        outs = self.model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], num_return_sequences=n,
            **self._sampling(),
        )
        texts = self.tokenizer.batch_decode(outs, skip_special_tokens=True)
        return [[t.strip() for t in texts[i * n : (i + 1) * n]] for i in range(len(passages))]


class CausalLMGenerator(_HFGenerator):
    """A decoder-only LM prompted with few-shot examples: ``cfg.prompt``, else the user's
    ``cfg.example_queries`` (:func:`rgpl_adapt.query_style.example_queries_prompt`), else
    :data:`DEFAULT_PROMPT`.

    The prompt must contain ``{passage}`` (replaced literally, so other braces are fine). Passages
    are truncated by tokens to ``max_input_len`` and so that prompt + passage + ``max_query_len``
    new tokens fit the model's context. Batches are left-padded; the pad token falls back to EOS.
    The completion is cut at its first newline. A path ending in ``.gguf`` is loaded with
    transformers' GGUF support (``pip install 'rgpl-adapt[gguf]'``).
    """

    kind = "causal"

    def __init__(self, model_name_or_path: str, device: str = "cpu", cfg: GenerationConfig | None = None) -> None:
        cfg = cfg or GenerationConfig()
        if cfg.prompt is not None:
            self.prompt = validate_prompt(cfg.prompt)
        elif cfg.example_queries:  # the user's queries as few-shot examples (rgpl_adapt.query_style)
            from rgpl_adapt.query_style import example_queries_prompt

            self.prompt = example_queries_prompt(list(cfg.example_queries))
        else:
            self.prompt = DEFAULT_PROMPT
        self.example_keys = prompt_example_keys(self.prompt)
        super().__init__(model_name_or_path, device, cfg)
        self.passage_budget = self._passage_budget()
        self._stop_ids = self._stop_token_ids()

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        source, extra = _source(self.name)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **extra)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=_dtype(self.device, fp16_ok=True), **extra)
        except Exception as exc:  # noqa: BLE001
            raise _explain(self.name, exc) from exc
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise ModelLoadError(f"the tokenizer of {self.name!r} has neither a pad nor an EOS token")
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, model.to(self.device)

    def _passage_budget(self) -> int:
        overhead = len(self.tokenizer(self.prompt.replace("{passage}", ""))["input_ids"])
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is None or context <= 0:
            limit = getattr(self.tokenizer, "model_max_length", 0)
            context = limit if 0 < limit < 1_000_000 else None
        budget = self.cfg.max_input_len
        if context is not None:
            budget = min(budget, context - overhead - self.cfg.max_query_len)
        if budget < 1:
            raise ValueError(
                f"the prompt ({overhead} tokens) plus max_query_len={self.cfg.max_query_len} leaves no room "
                f"for the passage in the model's {context}-token context; shorten the prompt"
            )
        return budget

    def _stop_token_ids(self) -> list[int]:
        """The model's EOS ids plus a newline token when the vocabulary has one (ends the question)."""
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        stop = list(configured) if isinstance(configured, (list, tuple)) else [configured]
        stop = [i for i in [*stop, self.tokenizer.eos_token_id] if i is not None]
        stop = list(dict.fromkeys(stop))
        newline = self.tokenizer.encode("\n", add_special_tokens=False)
        if len(newline) == 1 and self.tokenizer.decode(newline) == "\n":
            stop.append(newline[0])
        return stop

    def truncate(self, passage: str) -> str:
        """The passage cut to at most :attr:`passage_budget` tokens (on a token boundary)."""
        if self.tokenizer.is_fast:
            enc = self.tokenizer(passage, add_special_tokens=False, return_offsets_mapping=True)
            if len(enc["input_ids"]) <= self.passage_budget:
                return passage
            return passage[: enc["offset_mapping"][self.passage_budget - 1][1]]
        ids = self.tokenizer.encode(passage, add_special_tokens=False)
        if len(ids) <= self.passage_budget:
            return passage
        return self.tokenizer.decode(ids[: self.passage_budget])

    def build_prompt(self, passage: str) -> str:
        return self.prompt.replace("{passage}", self.truncate(" ".join(passage.split())))

    def _generate_batch(self, passages: list[str], n: int) -> list[list[str]]:
        enc = self.tokenizer([self.build_prompt(p) for p in passages], padding=True, return_tensors="pt").to(
            self.device
        )
        outs = self.model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], num_return_sequences=n,
            pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self._stop_ids or None, **self._sampling(),
        )
        texts = self.tokenizer.batch_decode(outs[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        answers = [t.split("\n", 1)[0].strip() for t in texts]
        return [answers[i * n : (i + 1) * n] for i in range(len(passages))]


def prompt_example_keys(prompt: str) -> frozenset[str]:
    """:func:`query_key` of each example question written in a few-shot prompt ("Question: ..." lines)."""
    return frozenset(
        query_key(m.group(1)) for m in re.finditer(r"^\s*Question:[ \t]*(\S.*)$", prompt, flags=re.MULTILINE)
    )


def validate_prompt(prompt: str) -> str:
    """Return ``prompt`` if it has a ``{passage}`` slot, else raise a ValueError saying how to fix it."""
    if "{passage}" not in prompt:
        raise ValueError(
            "the generation prompt has no {passage} slot: write it as few-shot examples ending with "
            "'Passage: {passage}\\nQuestion:'"
        )
    return prompt


def load_generator(cfg: GenerationConfig, device: str = "auto") -> QueryGenerator:
    """The generator for ``cfg.model``; ``kind="auto"`` reads the model config.

    Encoder-decoder models (``is_encoder_decoder``) are seq2seq doc2query models; anything else
    is prompted as a causal LM. ``.gguf`` files are causal. Loading failures raise
    :class:`~rgpl_adapt.models.ModelLoadError` saying to pass a local path.
    """
    cfg = replace(cfg, model=str(cfg.model))
    kind = cfg.kind
    if kind == "auto":
        if cfg.model.lower().endswith(".gguf"):
            kind = "causal"
        else:
            from transformers import AutoConfig

            try:
                model_cfg = AutoConfig.from_pretrained(cfg.model)
            except Exception as exc:  # noqa: BLE001
                raise _explain(cfg.model, exc) from exc
            kind = "seq2seq" if getattr(model_cfg, "is_encoder_decoder", False) else "causal"
        logger.info("generator %s: detected kind %s", cfg.model, kind)
    if kind == "seq2seq":
        return Seq2SeqGenerator(cfg.model, device, cfg)
    if kind == "causal":
        return CausalLMGenerator(cfg.model, device, cfg)
    raise ValueError(f"unknown generator kind {kind!r}; use 'auto', 'seq2seq' or 'causal'")
