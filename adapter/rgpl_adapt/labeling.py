"""Stage 5: teacher pseudo-labels, margin = teacher(q, pos) - teacher(q, neg).

GPL (``gpl/toolkit/pl.py`` and ``dataset.py``) walks through the queries in shuffled order,
pairs each with its positive and a random negative from the union of its pool, and labels the
triple with the cross-encoder's margin. The scores are *raw* logits: MarginMSE regresses the
student's score difference onto them, so no sigmoid may squash them.

The pieces here are separate so the math is testable without a model:

* :class:`Teacher` scores (query, passage) pairs; :class:`CrossEncoderTeacher` and
  :class:`BiEncoderTeacher` implement it, :func:`load_teacher` picks one from the config;
* :func:`sample_triples` draws (qid, pos_id, neg_id) deterministically for a seed;
* :class:`ScoreCache` remembers scores by (qid, doc_id) on disk, so a pair is scored once,
  whichever triple or remining round needs it again;
* :func:`label_triples` scores the uncached pairs in batches and forms margins;
* :func:`margin_stats` summarises margins for logs.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rgpl_adapt.config import LabelConfig, Similarity
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.records import GeneratedQuery, LabeledTriple, NegativePool

logger = logging.getLogger(__name__)

__all__ = [
    "BiEncoderTeacher",
    "CrossEncoderTeacher",
    "ScoreCache",
    "Teacher",
    "empty_pool_qids",
    "label_triples",
    "load_teacher",
    "margin_stats",
    "sample_triples",
]

Triple = tuple[str, str, str]
DocText = Callable[[Sequence[str]], Sequence[str]] | Mapping[str, str]


# --------------------------------------------------------------------------- teachers


@runtime_checkable
class Teacher(Protocol):
    """Scores (query, passage) pairs: one raw relevance score per pair, higher is more relevant."""

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray: ...


def _check_pairs(queries: Sequence[str], passages: Sequence[str]) -> None:
    if len(queries) != len(passages):
        raise ValueError(
            f"queries and passages must pair up: {len(queries)} queries, {len(passages)} passages"
        )


def truncate_tokens(tokenizer, texts: Sequence[str], max_tokens: int) -> list[str]:
    """Each text cut to its first ``max_tokens`` tokens (no special tokens), as GPL's re-tokenizing.

    GPL (``PseudoLabeler._retokenize``) truncates query and passage to 350 tokens *each* before the
    cross-encoder sees the pair (which is then capped at the model's 512). With a fast tokenizer we
    cut the original string at the last kept token's character offset, so the text is unchanged up
    to there; otherwise we decode the kept tokens (GPL's way).
    """
    texts = list(texts)
    if not texts:
        return []
    enc = tokenizer(
        texts,
        add_special_tokens=False,
        truncation=True,
        max_length=max_tokens,
        return_offsets_mapping=bool(getattr(tokenizer, "is_fast", False)),
    )
    if "offset_mapping" in enc:
        return [t[: offs[-1][1]] if offs else t for t, offs in zip(texts, enc["offset_mapping"])]
    return tokenizer.batch_decode(enc["input_ids"], skip_special_tokens=True)


class CrossEncoderTeacher:
    """A cross-encoder with one output label; its raw logit is the score.

    Query and passage are each truncated to ``max_seq_len`` tokens (350), the pair to
    ``max_pair_len`` (512), as GPL and R-GPL do.

    sentence-transformers' ``CrossEncoder.predict`` applies a sigmoid to single-label models by
    default (unless the model's config names another activation); we always pass an identity
    activation so margins are logit differences, as in GPL.
    """

    def __init__(
        self,
        model_name_or_path: str,
        device: str = "cpu",
        batch_size: int = 64,
        max_seq_len: int | None = 350,
        max_pair_len: int | None = 512,
    ) -> None:
        from rgpl_adapt.models import load_cross_encoder

        self.name = model_name_or_path
        self.batch_size = batch_size
        self.segment_len = max_seq_len
        self.model = load_cross_encoder(model_name_or_path, device=device, max_seq_len=max_pair_len)
        if self.model.num_labels != 1:
            raise ValueError(
                f"the teacher {model_name_or_path!r} has {self.model.num_labels} output labels; a relevance "
                "cross-encoder with one output (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2) is needed"
            )

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        import torch

        _check_pairs(queries, passages)
        if not queries:
            return np.zeros(0, dtype=np.float32)
        if self.segment_len:
            queries = truncate_tokens(self.model.tokenizer, queries, self.segment_len)
            passages = truncate_tokens(self.model.tokenizer, passages, self.segment_len)
        scores = self.model.predict(
            list(zip(queries, passages)),
            batch_size=self.batch_size,
            show_progress_bar=False,
            activation_fn=torch.nn.Identity(),
            convert_to_numpy=True,
        )
        return np.asarray(scores, dtype=np.float32).reshape(len(queries))


class BiEncoderTeacher:
    """A bi-encoder teacher: score = dot (or cosine) of query and passage embeddings.

    Embeddings are memoised by text across calls (at most ``memo_size`` texts; the oldest are
    forgotten first), so each distinct query or passage is encoded once however many pairs and
    labeling rounds need it: the teacher's cost is O(unique texts), not O(pairs). ``encoded``
    counts the texts actually run through the model.
    """

    def __init__(
        self,
        name: str,
        device: str = "cpu",
        batch_size: int = 64,
        max_seq_len: int | None = 350,
        similarity: Similarity = "dot",
        memo_size: int = 200_000,
    ) -> None:
        from rgpl_adapt.models import load_sentence_transformer

        if similarity not in ("dot", "cosine"):
            raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
        if memo_size < 0:
            raise ValueError(f"memo_size must not be negative, got {memo_size}")
        self.memo_size = memo_size
        self.encoded = 0
        self._memo: dict[str, np.ndarray] = {}
        self.name = name
        self.batch_size = batch_size
        self.similarity = similarity
        self.model = load_sentence_transformer(name, device=device, max_seq_len=max_seq_len)

    def _embed(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Embeddings of the distinct texts, and for each input the row of its text."""
        index: dict[str, int] = {}
        where = np.array([index.setdefault(t, len(index)) for t in texts], dtype=np.int64)
        todo = [t for t in index if t not in self._memo]
        fresh: dict[str, np.ndarray] = {}
        if todo:
            emb = self.model.encode(
                todo,
                batch_size=self.batch_size,
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=self.similarity == "cosine",
            )
            fresh = dict(zip(todo, np.asarray(emb, dtype=np.float32)))
            self.encoded += len(todo)
        rows = np.stack([fresh[t] if t in fresh else self._memo[t] for t in index])
        self._remember(fresh)
        return rows, where

    def _remember(self, fresh: dict[str, np.ndarray]) -> None:
        """Add new embeddings to the memo, forgetting the oldest beyond ``memo_size``."""
        if self.memo_size == 0:
            return
        self._memo.update(fresh)
        excess = len(self._memo) - self.memo_size
        if excess > 0:
            for key in list(itertools.islice(self._memo, excess)):
                del self._memo[key]

    def score(self, queries: Sequence[str], passages: Sequence[str]) -> np.ndarray:
        _check_pairs(queries, passages)
        if not queries:
            return np.zeros(0, dtype=np.float32)
        q_emb, q_where = self._embed(queries)
        p_emb, p_where = self._embed(passages)
        return np.einsum("ij,ij->i", q_emb[q_where], p_emb[p_where]).astype(np.float32)


def load_teacher(cfg: LabelConfig, device: str = "cpu") -> Teacher:
    """The teacher named by ``cfg``; ``kind="auto"`` asks :func:`rgpl_adapt.models.is_cross_encoder`."""
    from rgpl_adapt.models import is_cross_encoder

    kind = cfg.kind
    if kind == "auto":
        kind = "cross-encoder" if is_cross_encoder(cfg.teacher) else "bi-encoder"
        logger.info("teacher %s is a %s", cfg.teacher, kind)
    if kind == "cross-encoder":
        return CrossEncoderTeacher(cfg.teacher, device, cfg.batch_size, cfg.max_seq_len, cfg.max_pair_len)
    if kind == "bi-encoder":
        return BiEncoderTeacher(cfg.teacher, device, cfg.batch_size, cfg.max_seq_len)
    raise ValueError(f"unknown teacher kind {cfg.kind!r}; use auto, cross-encoder or bi-encoder")


# --------------------------------------------------------------------------- score cache


class ScoreCache:
    """Teacher scores keyed by (qid, doc_id), kept in memory and appended to a JSONL file.

    Every :meth:`put_many` appends and flushes, so a crash loses at most the batch being
    scored; a torn last line is ignored on load. The first line records ``key`` (say, the
    teacher name and settings): opening a file written under another key raises, because
    scores of a different teacher must not be mixed in.

    ``hits`` and ``misses`` count :meth:`lookup` results since the cache was opened.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, key: str = "") -> None:
        self.path = Path(path) if path is not None else None
        self.key = key
        self.hits = 0
        self.misses = 0
        self._scores: dict[tuple[str, str], float] = {}
        if self.path is not None and self.path.exists() and self.path.stat().st_size > 0:
            self._load()

    def _load(self) -> None:
        assert self.path is not None
        self._cut_torn_tail(self.path)
        with open(self.path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        if not lines:
            return
        try:
            header = json.loads(lines[0])
        except json.JSONDecodeError:
            header = None
        found = header.get("key") if isinstance(header, dict) else None
        if found != self.key:
            raise ValueError(
                f"score cache {self.path} was written for {found!r}, not {self.key!r} (or is not a score "
                "cache); delete it or point the cache at another file"
            )
        torn = 0
        for line in lines[1:]:
            try:
                row = json.loads(line)
                # interned: a query id recurs for every pair of that query (memory at 10^6 pairs)
                self._scores[(sys.intern(row["q"]), sys.intern(row["d"]))] = float(row["s"])
            except (json.JSONDecodeError, KeyError, TypeError):
                torn += 1
        if torn:
            logger.warning(
                "ignored %d unreadable line(s) in score cache %s (interrupted write?)", torn, self.path
            )
        logger.info("loaded %d cached teacher scores from %s", len(self._scores), self.path)

    @staticmethod
    def _cut_torn_tail(path: Path) -> None:
        """Drop a last line left unfinished by a crash, so new rows start on a line of their own."""
        with open(path, "rb+") as fh:
            data = fh.read()
            if data and not data.endswith(b"\n"):
                keep = data.rfind(b"\n") + 1
                logger.warning(
                    "score cache %s ends in an unfinished line (interrupted write?); dropped it", path
                )
                fh.truncate(keep)

    def __len__(self) -> int:
        return len(self._scores)

    def __contains__(self, pair: object) -> bool:
        return pair in self._scores

    def get(self, qid: str, doc_id: str) -> float | None:
        """The cached score, or None; does not count as a hit or miss."""
        return self._scores.get((qid, doc_id))

    def lookup(self, pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The distinct pairs not cached yet (first-seen order); counts hits and misses."""
        missing: dict[tuple[str, str], None] = {}
        checked: set[tuple[str, str]] = set()
        for pair in pairs:
            if pair in checked:
                continue
            checked.add(pair)
            if pair in self._scores:
                self.hits += 1
            else:
                self.misses += 1
                missing[pair] = None
        return list(missing)

    def put_many(self, pairs: Sequence[tuple[str, str]], scores: Sequence[float]) -> None:
        """Store scores for pairs, appending them to the file (written and flushed now)."""
        if len(pairs) != len(scores):
            raise ValueError(f"{len(pairs)} pairs but {len(scores)} scores")
        rows = [(q, d, float(s)) for (q, d), s in zip(pairs, scores)]
        for q, d, s in rows:
            if not math.isfinite(s):
                raise ValueError(f"teacher score for ({q!r}, {d!r}) is {s}; check the teacher model")
            self._scores[(q, d)] = s
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new_file = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", encoding="utf-8") as fh:
            if new_file:
                fh.write(json.dumps({"key": self.key}) + "\n")
            fh.writelines(json.dumps({"q": q, "d": d, "s": s}, ensure_ascii=False) + "\n" for q, d, s in rows)
            fh.flush()

    def stats(self) -> dict[str, float]:
        """``size``, ``hits``, ``misses`` and ``hit_rate`` (0 when nothing was looked up)."""
        total = self.hits + self.misses
        return {
            "size": len(self._scores),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / total if total else 0.0,
        }


# --------------------------------------------------------------------------- triples


def empty_pool_qids(queries: Sequence[GeneratedQuery], pools: Sequence[NegativePool]) -> list[str]:
    """Ids of queries with no negative to sample (no pool, or an empty one)."""
    by_qid = {pool.qid: pool for pool in pools}
    return [q.qid for q in queries if q.qid not in by_qid or not by_qid[q.qid].all_ids()]


def _epoch(seed: int, epoch: int, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the usable queries: their shuffled order and a negative index for each."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(sizes))
    picks = rng.integers(0, sizes[order])
    return order, picks


def sample_triples(
    queries: Sequence[GeneratedQuery],
    pools: Sequence[NegativePool],
    n: int,
    seed: int,
    *,
    start: int = 0,
) -> list[Triple]:
    """``n`` (qid, pos_id, neg_id) triples, GPL style.

    The queries are walked in a shuffled order, pass after pass (a new order each pass); each
    visit pairs the query with its positive and a uniformly random negative from the union of
    its pool's sources. Queries with an empty or missing pool are skipped (and logged).

    Triple ``i`` depends only on ``seed``, ``i`` and the pools, so ``start`` continues a walk:
    ``sample_triples(q, p, n, s, start=m) == sample_triples(q, p, m + n, s)[m:]``.
    """
    if n < 0 or start < 0:
        raise ValueError(f"n and start must not be negative, got n={n}, start={start}")
    by_qid = {pool.qid: pool for pool in pools}
    usable: list[tuple[GeneratedQuery, list[str]]] = []
    for q in queries:
        pool = by_qid.get(q.qid)
        ids = [d for d in pool.all_ids() if d != q.doc_id] if pool is not None else []
        if ids:
            usable.append((q, ids))
    skipped = len(queries) - len(usable)
    if skipped:
        logger.warning("%d of %d queries have no negative and are skipped", skipped, len(queries))
    if n == 0:
        return []
    if not usable:
        raise ValueError("no query has a hard negative to sample; check the mining stage's pools")
    sizes = np.array([len(ids) for _, ids in usable], dtype=np.int64)
    m = len(usable)
    out: list[Triple] = []
    index = start
    while len(out) < n:
        epoch, offset = divmod(index, m)
        order, picks = _epoch(seed, epoch, sizes)
        take = min(m - offset, n - len(out))
        for j in range(offset, offset + take):
            q, ids = usable[order[j]]
            out.append((q.qid, q.doc_id, ids[picks[j]]))
        index += take
    return out


# --------------------------------------------------------------------------- labels


def _doc_texts(doc_text: DocText, ids: Sequence[str]) -> list[str]:
    if isinstance(doc_text, Mapping):
        missing = [d for d in ids if d not in doc_text]
        if missing:
            raise KeyError(f"no text for {len(missing)} document id(s), e.g. {missing[:3]}")
        return [doc_text[d] for d in ids]
    texts = list(doc_text(ids))
    if len(texts) != len(ids):
        raise ValueError(f"doc_text returned {len(texts)} texts for {len(ids)} ids")
    return texts


def label_triples(
    triples: Sequence[Triple],
    teacher: Teacher,
    *,
    query_text: Mapping[str, str],
    doc_text: DocText,
    cache: ScoreCache | None = None,
    batch_size: int = 64,
    progress: ProgressFactory = silent,
) -> list[LabeledTriple]:
    """Label triples with margin = s(q, pos) - s(q, neg) from the teacher's raw scores.

    Only distinct (qid, doc_id) pairs missing from ``cache`` are scored, ``batch_size`` pairs
    per teacher call (progress unit ``"pair"``); each batch is added to the cache at once.
    ``doc_text`` is a ``doc_id -> text`` mapping or a function from a list of ids to their
    texts (e.g. ``lambda ids: [d.full_text() for d in backend.get_documents(ids)]``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    cache = cache if cache is not None else ScoreCache()
    missing_q = {qid for qid, _, _ in triples if qid not in query_text}
    if missing_q:
        raise KeyError(f"no query text for {len(missing_q)} query id(s), e.g. {sorted(missing_q)[:3]}")
    hits_before = cache.hits
    todo = cache.lookup(pair for qid, pos, neg in triples for pair in ((qid, pos), (qid, neg)))
    logger.info(
        "labeling %d triples: %d pairs to score, %d cached", len(triples), len(todo), cache.hits - hits_before
    )
    with progress(total=len(todo), desc="teacher scores", unit="pair") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start : start + batch_size]
            ids = list(dict.fromkeys(d for _, d in batch))
            text_of = dict(zip(ids, _doc_texts(doc_text, ids)))
            scores = teacher.score([query_text[q] for q, _ in batch], [text_of[d] for _, d in batch])
            scores = np.asarray(scores, dtype=np.float64).reshape(-1)
            if len(scores) != len(batch):
                raise ValueError(f"the teacher returned {len(scores)} scores for {len(batch)} pairs")
            cache.put_many(batch, scores.tolist())
            bar.update(len(batch))
    out = []
    for qid, pos, neg in triples:
        margin = cache.get(qid, pos) - cache.get(qid, neg)  # type: ignore[operator]
        out.append(LabeledTriple(qid=qid, pos_id=pos, neg_id=neg, margin=margin))
    return out


def margin_stats(triples: Sequence[LabeledTriple]) -> dict[str, float | int | None]:
    """Margin summary for round logs: ``n_triples``, ``margin_mean``, ``margin_std``,
    ``margin_min``, ``margin_max`` and ``margin_neg_share`` (share of margins below 0).

    A high ``margin_neg_share`` means the teacher often prefers the mined "negative" (false
    negatives). With no triples the statistics are None (JSON-safe, unlike NaN).
    """
    if not triples:
        empty: dict[str, float | int | None] = dict.fromkeys(
            ("margin_mean", "margin_std", "margin_min", "margin_max", "margin_neg_share")
        )
        return {"n_triples": 0, **empty}
    m = np.array([t.margin for t in triples], dtype=np.float64)
    return {
        "n_triples": int(m.size),
        "margin_mean": float(m.mean()),
        "margin_std": float(m.std()),
        "margin_min": float(m.min()),
        "margin_max": float(m.max()),
        "margin_neg_share": float((m < 0).mean()),
    }
