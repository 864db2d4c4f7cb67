"""Fusion math against values derived by hand from the OpenSearch definitions."""

from __future__ import annotations

import pytest
from rgpl_plugin.base import Hit
from rgpl_plugin.fusion import (
    MIN_SCORE,
    SINGLE_RESULT_SCORE,
    combine_arithmetic_mean,
    fuse,
    min_max_normalize,
    rrf,
)


def hits(*pairs: tuple[str, float]) -> list[Hit]:
    return [Hit(d, s) for d, s in pairs]


def as_dict(result: list[Hit]) -> dict[str, float]:
    return {h.doc_id: h.score for h in result}


def test_min_max_maps_range_and_lifts_the_minimum():
    raw = hits(("a", 10.0), ("b", 7.0), ("c", 4.0))
    out = min_max_normalize(raw)
    assert [h.doc_id for h in out] == ["a", "b", "c"]
    # (s - min) / (max - min) with min=4, max=10; the minimum itself becomes MIN_SCORE, not 0
    assert out[0].score == pytest.approx(1.0)
    assert out[1].score == pytest.approx((7.0 - 4.0) / (10.0 - 4.0))
    assert out[2].score == MIN_SCORE


def test_min_max_equal_scores_and_single_hit_get_single_result_score():
    assert [h.score for h in min_max_normalize(hits(("a", 3.0), ("b", 3.0)))] == [SINGLE_RESULT_SCORE] * 2
    assert min_max_normalize(hits(("a", -2.5))) == [Hit("a", SINGLE_RESULT_SCORE)]
    assert min_max_normalize([]) == []


def test_min_max_handles_negative_inner_products():
    out = min_max_normalize(hits(("a", 0.5), ("b", -0.5), ("c", -1.5)))
    assert as_dict(out) == pytest.approx({"a": 1.0, "b": (-0.5 + 1.5) / 2.0, "c": MIN_SCORE})


def test_arithmetic_mean_counts_a_missing_document_as_zero_with_its_weight():
    bm25 = hits(("a", 1.0), ("b", 0.4))
    dense = hits(("b", 1.0), ("c", 0.2))
    w_bm25, w_dense = 0.3, 0.7
    out = combine_arithmetic_mean([bm25, dense], [w_bm25, w_dense])
    expected = {
        "a": (w_bm25 * 1.0 + w_dense * 0.0) / (w_bm25 + w_dense),
        "b": (w_bm25 * 0.4 + w_dense * 1.0) / (w_bm25 + w_dense),
        "c": (w_bm25 * 0.0 + w_dense * 0.2) / (w_bm25 + w_dense),
    }
    assert as_dict(out) == pytest.approx(expected)
    assert [h.doc_id for h in out] == sorted(expected, key=lambda d: -expected[d])


def test_arithmetic_mean_divides_by_weight_sum_and_skips_negative_scores():
    out = as_dict(combine_arithmetic_mean([hits(("a", 0.5)), hits(("a", 1.0))], [2.0, 2.0]))
    assert out["a"] == pytest.approx((2.0 * 0.5 + 2.0 * 1.0) / 4.0)
    # a negative (un-normalised) score is left out together with its weight
    out = as_dict(combine_arithmetic_mean([hits(("a", -1.0)), hits(("a", 0.6))], [0.5, 0.5]))
    assert out["a"] == pytest.approx(0.6)
    assert as_dict(combine_arithmetic_mean([hits(("a", 0.9))], [0.0])) == {"a": 0.0}


def test_arithmetic_mean_rejects_bad_weights():
    with pytest.raises(ValueError, match="one weight per list"):
        combine_arithmetic_mean([hits(("a", 1.0))], [0.5, 0.5])
    with pytest.raises(ValueError, match="non-negative"):
        combine_arithmetic_mean([hits(("a", 1.0))], [-0.1])


def test_rrf_sums_reciprocal_ranks_with_one_based_ranks():
    l1 = hits(("a", 9.0), ("b", 8.0), ("c", 7.0))
    l2 = hits(("c", 0.9), ("a", 0.1))
    k = 60
    out = rrf([l1, l2], rank_constant=k)
    expected = {
        "a": 1 / (k + 1) + 1 / (k + 2),
        "b": 1 / (k + 2),
        "c": 1 / (k + 3) + 1 / (k + 1),
    }
    assert as_dict(out) == pytest.approx(expected)
    assert [h.doc_id for h in out] == sorted(expected, key=lambda d: -expected[d])


def test_rrf_default_constant_is_60_ignores_scores_and_supports_weights():
    single = rrf([hits(("x", -100.0))])
    assert single[0].score == pytest.approx(1 / 61)
    weighted = as_dict(rrf([hits(("a", 1.0)), hits(("a", 1.0))], rank_constant=1, weights=[0.25, 0.75]))
    assert weighted["a"] == pytest.approx(0.25 / 2 + 0.75 / 2)
    with pytest.raises(ValueError, match="rank_constant"):
        rrf([hits(("a", 1.0))], rank_constant=0)


def test_fuse_min_max_end_to_end():
    bm25 = hits(("a", 12.0), ("b", 6.0), ("c", 3.0))
    dense = hits(("c", 0.9), ("d", 0.5), ("a", 0.1))
    w = 0.4  # dense share
    nb = {"a": 1.0, "b": (6.0 - 3.0) / 9.0, "c": MIN_SCORE}
    nd = {"c": 1.0, "d": (0.5 - 0.1) / 0.8, "a": MIN_SCORE}
    expected = {d: (1 - w) * nb.get(d, 0.0) + w * nd.get(d, 0.0) for d in "abcd"}
    out = fuse(bm25, dense, k=3, weight=w, method="min_max")
    top3 = sorted(expected, key=lambda d: -expected[d])[:3]
    assert [h.doc_id for h in out] == top3
    assert [h.score for h in out] == pytest.approx([expected[d] for d in top3])


def test_fuse_weight_extremes_reproduce_each_list_order():
    bm25 = hits(("a", 5.0), ("b", 5.0), ("c", 2.0))  # a tie: kept in BM25 order
    dense = hits(("d", 0.8), ("c", 0.7), ("e", 0.7), ("a", 0.1))
    only_bm25 = fuse(bm25, dense, k=10, weight=0.0)
    assert [h.doc_id for h in only_bm25][:3] == ["a", "b", "c"]
    assert all(h.score == 0.0 for h in only_bm25[3:])  # dense-only docs come last with score 0
    only_dense = fuse(bm25, dense, k=10, weight=1.0)
    assert [h.doc_id for h in only_dense][:4] == ["d", "c", "e", "a"]
    assert len(fuse(bm25, dense, k=2, weight=0.5)) == 2


def test_fuse_rrf_and_validation():
    bm25 = hits(("a", 5.0), ("b", 1.0))
    dense = hits(("b", 0.9), ("c", 0.1))
    out = fuse(bm25, dense, k=3, method="rrf")
    assert out[0] == Hit("b", pytest.approx(1 / 62 + 1 / 61))
    assert {h.doc_id for h in out} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="weight"):
        fuse(bm25, dense, k=3, weight=1.5)
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse(bm25, dense, k=3, method="l2")  # type: ignore[arg-type]
    assert fuse([], [], k=5) == []


def test_fuse_min_max_fast_path_equals_the_reference_composition():
    """fuse's one-pass min-max path gives exactly combine_arithmetic_mean(min_max_normalize(...)) (values
    and order), including repeated ids, ties, single hits, empty lists and the weight extremes."""
    import random

    rng = random.Random(7)
    for trial in range(400):
        pool = [f"d{i}" for i in range(rng.randint(1, 12))]
        lists = []
        for _ in range(2):
            n = rng.randint(0, 8)
            scores = [rng.choice([0.5, 1.0, round(rng.uniform(-2, 5), 1)]) for _ in range(n)]
            lists.append([Hit(rng.choice(pool), s) for s in sorted(scores, reverse=True)])
        weight = rng.choice([0.0, 0.3, 0.5, 0.7, 1.0, rng.random()])
        k = rng.randint(1, 10)
        reference = combine_arithmetic_mean(
            [min_max_normalize(lists[0]), min_max_normalize(lists[1])], [1.0 - weight, weight]
        )[:k]
        assert fuse(lists[0], lists[1], k, weight=weight) == reference, (trial, lists, weight, k)
