"""Hybrid score fusion with the semantics of OpenSearch's search-pipeline processors.

Pure functions over ``list[Hit]`` so the embedded backend fuses exactly like an OpenSearch
``normalization-processor`` (``min_max`` + ``arithmetic_mean``) or ``score-ranker-processor``
(``rrf``) would, and so the math is unit-testable without an index.

What was confirmed in the OpenSearch neural-search plugin source
(``opensearch-project/neural-search``, ``processor/normalization`` and ``processor/combination``)
and the OpenSearch docs (``search-pipelines/score-ranker-processor``):

* **min_max** (``MinMaxScoreNormalizationTechnique``, default lower-bound mode off): per sub-query,
  over *that sub-query's returned hits*, ``n = (s - min) / (max - min)``. A normalised score of
  exactly ``0.0`` (the minimum of the list) is raised to ``MIN_SCORE = 0.001`` so the worst hit of a
  list still beats a document the list did not return. When ``max == min`` (one hit, or all scores
  equal) every hit gets ``SINGLE_RESULT_SCORE = 1.0``.
* **arithmetic_mean** (``ArithmeticMeanScoreCombinationTechnique``): ``Σ w_i·s_i / Σ w_i`` over the
  sub-queries whose score is ``>= 0``. ``ScoreCombiner`` initialises a document's per-sub-query
  score array with ``0.0``, so a document *missing* from a sub-query's results counts as score
  ``0.0`` with its weight still in the denominator (it is not skipped). When the weight sum is 0 the
  result is 0. OpenSearch additionally validates weights in ``[0, 1]`` summing to 1 (±0.01);
  :func:`fuse` always passes ``(1 - weight, weight)``.
* **rrf** (``RRFNormalizationTechnique`` + ``RRFScoreCombinationTechnique``): each hit scores
  ``1 / (rank_constant + rank)`` with 1-based rank in its sub-query list, summed over sub-queries
  (a missing document contributes nothing). ``rank_constant`` defaults to 60 and must be in
  ``[1, 10000]``. Newer releases accept per-sub-query weights (``w_i / (rank_constant + rank)``);
  :func:`rrf` supports them, :func:`fuse` uses the unweighted default.
* Combined results are sorted by score, descending. OpenSearch leaves ties in hash order; here ties
  are broken deterministically by the position in the list with the larger weight, then the other
  list, then the document id (documented deviation: it only fixes an order OpenSearch leaves open).

Scores are computed in Python floats (float64); OpenSearch uses float32, so values agree to ~1e-7.
"""

from __future__ import annotations

from collections.abc import Sequence

from rgpl_plugin.base import FusionMethod, Hit

MIN_SCORE = 0.001
"""Normalised score given to the minimum of a list (OpenSearch ``MinMax...MIN_SCORE``)."""
SINGLE_RESULT_SCORE = 1.0
"""Normalised score when all scores of a list are equal (OpenSearch ``SINGLE_RESULT_SCORE``)."""
DEFAULT_RANK_CONSTANT = 60
MIN_RANK_CONSTANT, MAX_RANK_CONSTANT = 1, 10_000


def min_max_normalize(hits: Sequence[Hit]) -> list[Hit]:
    """Min-max normalise one sub-query's hits into ``(0, 1]``, keeping their order.

    ``(s - min) / (max - min)``, with ``0.0`` raised to :data:`MIN_SCORE` and every score set to
    :data:`SINGLE_RESULT_SCORE` when ``max == min``.
    """
    if not hits:
        return []
    scores = [h.score for h in hits]
    lo, hi = min(scores), max(scores)
    if hi == lo:
        return [Hit(h.doc_id, SINGLE_RESULT_SCORE) for h in hits]
    out = []
    for h in hits:
        n = (h.score - lo) / (hi - lo)
        out.append(Hit(h.doc_id, MIN_SCORE if n == 0.0 else n))
    return out


def _positions(lists: Sequence[Sequence[Hit]]) -> list[dict[str, int]]:
    """For each list, doc id -> 0-based position of its first occurrence."""
    out = []
    for hits in lists:
        pos: dict[str, int] = {}
        for i, h in enumerate(hits):
            pos.setdefault(h.doc_id, i)
        out.append(pos)
    return out


def _ranked(scores: dict[str, float], lists: Sequence[Sequence[Hit]], weights: Sequence[float]) -> list[Hit]:
    """Hits sorted by score desc; ties by position in the heaviest list first, then doc id."""
    positions = _positions(lists)
    order = sorted(range(len(lists)), key=lambda i: -weights[i])  # stable: first list wins ties
    big = max((len(h) for h in lists), default=0) + 1

    def key(doc_id: str) -> tuple:
        return (-scores[doc_id], *(positions[i].get(doc_id, big) for i in order), doc_id)

    return [Hit(d, scores[d]) for d in sorted(scores, key=key)]


def _check_weights(weights: Sequence[float], n_lists: int) -> None:
    if len(weights) != n_lists:
        raise ValueError(f"got {len(weights)} weights for {n_lists} result lists; pass one weight per list")
    if any(not w >= 0 for w in weights):  # also rejects NaN
        raise ValueError(f"weights must be non-negative numbers, got {list(weights)}")


def combine_arithmetic_mean(lists: Sequence[Sequence[Hit]], weights: Sequence[float]) -> list[Hit]:
    """Weighted arithmetic mean of already-normalised sub-query lists, best first.

    A document missing from a list scores 0.0 there and that list's weight still counts in the
    denominator; a negative score (only possible for un-normalised input) is skipped with its
    weight, as in OpenSearch. Returns every document of the union, sorted.
    """
    _check_weights(weights, len(lists))
    score_maps = []
    for hits in lists:
        m: dict[str, float] = {}
        for h in hits:
            m.setdefault(h.doc_id, h.score)
        score_maps.append(m)
    union = list(dict.fromkeys(h.doc_id for hits in lists for h in hits))
    combined: dict[str, float] = {}
    for doc_id in union:
        total = weight_sum = 0.0
        for m, w in zip(score_maps, weights):
            s = m.get(doc_id, 0.0)
            if s >= 0.0:
                total += w * s
                weight_sum += w
        combined[doc_id] = 0.0 if weight_sum == 0.0 else total / weight_sum
    return _ranked(combined, lists, weights)


def rrf(
    lists: Sequence[Sequence[Hit]],
    rank_constant: int = DEFAULT_RANK_CONSTANT,
    weights: Sequence[float] | None = None,
) -> list[Hit]:
    """Reciprocal rank fusion: ``Σ_i w_i / (rank_constant + rank_i)`` with 1-based ranks, best first.

    Only ranks matter, raw scores are ignored. ``weights`` default to 1.0 per list (the
    classic, unweighted RRF of OpenSearch's ``score-ranker-processor``).
    """
    if not isinstance(rank_constant, int) or not MIN_RANK_CONSTANT <= rank_constant <= MAX_RANK_CONSTANT:
        raise ValueError(
            f"rank_constant must be an integer in [{MIN_RANK_CONSTANT}, {MAX_RANK_CONSTANT}], got {rank_constant!r}"
        )
    weights = [1.0] * len(lists) if weights is None else list(weights)
    _check_weights(weights, len(lists))
    combined: dict[str, float] = {}
    for hits, w, pos in zip(lists, weights, _positions(lists)):
        for doc_id, p in pos.items():
            combined[doc_id] = combined.get(doc_id, 0.0) + w / (rank_constant + p + 1)
    return _ranked(combined, lists, weights)


def _normalized_first(hits: Sequence[Hit]) -> tuple[dict[str, float], dict[str, int]]:
    """doc id -> (min-max normalised score, position) of its first occurrence in ``hits``."""
    scores: dict[str, float] = {}
    positions: dict[str, int] = {}
    if not hits:
        return scores, positions
    lo = min(h.score for h in hits)
    span = max(h.score for h in hits) - lo
    for i, h in enumerate(hits):
        if h.doc_id not in scores:
            n = SINGLE_RESULT_SCORE if span == 0 else (h.score - lo) / span
            scores[h.doc_id] = MIN_SCORE if n == 0.0 else n
            positions[h.doc_id] = i
    return scores, positions


def _fuse_min_max(bm25_hits: Sequence[Hit], dense_hits: Sequence[Hit], k: int, weight: float) -> list[Hit]:
    """``combine_arithmetic_mean([min_max_normalize(b), min_max_normalize(d)], [1 - w, w])[:k]`` in one
    pass without intermediate lists: the serving path runs it once per hybrid query. Normalised scores
    are never negative, so every weight counts; same values, same order (tests compare the two)."""
    wb, wd = 1.0 - weight, weight
    weight_sum = 0.0 + wb + wd
    bs, bp = _normalized_first(bm25_hits)
    ds, dp = _normalized_first(dense_hits)
    combined = {}
    for doc_id in [*bs, *(d for d in ds if d not in bs)]:
        total = 0.0 + wb * bs.get(doc_id, 0.0) + wd * ds.get(doc_id, 0.0)
        combined[doc_id] = 0.0 if weight_sum == 0.0 else total / weight_sum
    first, second = (bp, dp) if wb >= wd else (dp, bp)  # ties: the heavier list's order (BM25 if equal)
    big = max(len(bm25_hits), len(dense_hits)) + 1
    ranked = sorted(combined, key=lambda d: (-combined[d], first.get(d, big), second.get(d, big), d))
    return [Hit(d, combined[d]) for d in ranked[:k]]


def fuse(
    bm25_hits: Sequence[Hit],
    dense_hits: Sequence[Hit],
    k: int,
    weight: float = 0.5,
    method: FusionMethod = "min_max",
    rank_constant: int = DEFAULT_RANK_CONSTANT,
) -> list[Hit]:
    """Fuse one query's BM25 and dense hits into its top ``k``.

    ``method="min_max"``: min-max normalise each list, then arithmetic mean with weights
    ``(1 - weight, weight)`` — ``weight`` is the dense share, so 0 reproduces the BM25 order and 1
    the dense order. ``method="rrf"``: unweighted RRF with ``rank_constant``; ``weight`` is ignored.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if method == "min_max":
        if not 0.0 <= weight <= 1.0:
            raise ValueError(f"weight is the dense share and must be in [0, 1], got {weight}")
        return _fuse_min_max(bm25_hits, dense_hits, k, weight)
    elif method == "rrf":
        fused = rrf([bm25_hits, dense_hits], rank_constant=rank_constant)
    else:
        raise ValueError(f"unknown fusion method {method!r}; use 'min_max' or 'rrf'")
    return fused[:k]
