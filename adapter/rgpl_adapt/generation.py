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
:func:`load_generator` picks one from the model config (the model-backed classes live in
:mod:`rgpl_adapt.generators`). The pure parts (budget, sampling, the
query-cleaning rules of :func:`query_drop_reason`) need no model.

:func:`generate_queries` works on any slice of the planned passages and is deterministic given
``cfg.seed`` and the slice, so the pipeline can generate chunk by chunk and persist as it goes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from rgpl_adapt.config import GenerationConfig
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.records import Document, GeneratedQuery

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROMPT",
    "DEFAULT_MAX_QUERY_WORDS",
    "GenerationStats",
    "QueryGenerator",
    "queries_per_passage",
    "plan_generation",
    "query_key",
    "query_drop_reason",
    "filter_queries",
    "clean_queries",
    "batch_seed",
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


_MOVED = {"Seq2SeqGenerator", "CausalLMGenerator", "load_generator", "validate_prompt", "prompt_example_keys"}


def __getattr__(name: str) -> Any:
    """The model-backed generators live in :mod:`rgpl_adapt.generators`; their old names still import from here."""
    if name in _MOVED:
        from rgpl_adapt import generators

        return getattr(generators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
