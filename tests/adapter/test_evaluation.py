"""Metrics against values derived by hand from the formulas (trec_eval / BEIR definitions)."""

from __future__ import annotations

import json
import math

import pytest

from rgpl_adapt.evaluation import (
    evaluate,
    evaluate_per_query,
    format_table,
    load_qrels,
    load_queries,
    mrr_at_k,
    ndcg_at_k,
    rank_documents,
    recall_at_k,
)


def ranked(*doc_ids: str) -> dict[str, float]:
    """Scores that rank doc_ids in the given order."""
    return {d: float(len(doc_ids) - i) for i, d in enumerate(doc_ids)}


def test_one_relevant_at_rank_3():
    results = {"q": ranked("a", "b", "c", "d")}
    qrels = {"q": {"c": 1}}
    assert ndcg_at_k(results, qrels, k=10) == pytest.approx(1 / math.log2(4))
    assert mrr_at_k(results, qrels, k=10) == pytest.approx(1 / 3)
    assert recall_at_k(results, qrels, k=2) == 0.0
    assert recall_at_k(results, qrels, k=3) == 1.0
    assert mrr_at_k(results, qrels, k=2) == 0.0
    assert ndcg_at_k(results, qrels, k=2) == 0.0


def test_graded_gains_are_linear_and_ideal_comes_from_qrels():
    # ranking: a (grade 1), b (0), c (2); judged but unretrieved e (grade 2) enters the ideal list.
    results = {"q": ranked("a", "b", "c")}
    qrels = {"q": {"a": 1, "b": 0, "c": 2, "e": 2}}
    dcg = 1 / math.log2(2) + 2 / math.log2(4)
    idcg = 2 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(results, qrels, k=10) == pytest.approx(dcg / idcg)
    # 2^rel - 1 gains would give a different value; make sure we are not computing that one.
    exp_dcg = 1 / math.log2(2) + 3 / math.log2(4)
    exp_idcg = 3 / math.log2(2) + 3 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(results, qrels, k=10) != pytest.approx(exp_dcg / exp_idcg)
    # ideal cut at k: with k=2 only the two best grades count
    dcg2 = 1 / math.log2(2)
    idcg2 = 2 / math.log2(2) + 2 / math.log2(3)
    assert ndcg_at_k(results, qrels, k=2) == pytest.approx(dcg2 / idcg2)
    # recall counts grade >= 1: {a, c, e} relevant, a and c retrieved
    assert recall_at_k(results, qrels, k=100) == pytest.approx(2 / 3)


def test_perfect_ranking_scores_one():
    results = {"q": ranked("x", "y", "z")}
    qrels = {"q": {"x": 3, "y": 2, "z": 1}}
    assert evaluate(results, qrels) == {"ndcg@10": pytest.approx(1.0), "recall@100": 1.0, "mrr@10": 1.0}


def test_ties_broken_by_doc_id_descending_like_trec_eval():
    assert rank_documents({"a": 1.0, "b": 1.0, "c": 2.0}) == ["c", "b", "a"]
    results = {"q": {"a": 1.0, "b": 1.0}}
    # "b" ranks first among equals, so relevant "a" sits at rank 2
    assert mrr_at_k(results, {"q": {"a": 1}}) == pytest.approx(0.5)
    assert mrr_at_k(results, {"q": {"b": 1}}) == pytest.approx(1.0)


def test_averaging_over_queries_in_both_results_and_qrels(caplog):
    results = {
        "q1": ranked("a", "b"),  # relevant at rank 1
        "q2": ranked("c", "d"),  # relevant at rank 2
        "q_unjudged": ranked("a"),  # not in qrels: skipped
    }
    qrels = {"q1": {"a": 1}, "q2": {"d": 1}, "q_no_results": {"a": 1}}
    with caplog.at_level("WARNING", logger="rgpl_adapt.evaluation"):
        scores = evaluate(results, qrels)
    assert scores["mrr@10"] == pytest.approx((1 + 0.5) / 2)
    assert scores["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert "have no results" in caplog.text


def test_query_with_only_zero_grades_counts_as_zero():
    results = {"q1": ranked("a"), "q2": ranked("b")}
    qrels = {"q1": {"a": 1}, "q2": {"b": 0}}
    scores = evaluate(results, qrels)
    assert scores == {"ndcg@10": pytest.approx(0.5), "recall@100": pytest.approx(0.5), "mrr@10": pytest.approx(0.5)}


def test_identical_ids_are_ignored_by_default_without_mutating_input():
    results = {"q1": {"q1": 9.0, "a": 5.0, "b": 4.0}}
    qrels = {"q1": {"b": 1}}
    assert mrr_at_k(results, qrels) == pytest.approx(0.5)  # q1 dropped, b at rank 2
    assert mrr_at_k(results, qrels, ignore_identical_ids=False) == pytest.approx(1 / 3)
    assert "q1" in results["q1"]


def test_per_query_values_and_custom_metric_names():
    results = {"q1": ranked("a", "b", "c"), "q2": ranked("c", "a")}
    qrels = {"q1": {"c": 1}, "q2": {"c": 2, "b": 1}}
    per = evaluate_per_query(results, qrels, ["ndcg@3", "recall@1", "mrr@3"])
    assert per["q1"] == {"ndcg@3": pytest.approx(0.5), "recall@1": 0.0, "mrr@3": pytest.approx(1 / 3)}
    assert per["q2"]["recall@1"] == pytest.approx(0.5)
    assert per["q2"]["ndcg@3"] == pytest.approx(2 / (2 + 1 / math.log2(3)))
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(results, qrels, ["map@10"])


def test_errors_for_no_overlap_and_bad_k():
    with pytest.raises(ValueError, match="no query in results"):
        ndcg_at_k({"q": ranked("a")}, {"other": {"a": 1}})
    with pytest.raises(ValueError, match="k must be"):
        recall_at_k({"q": ranked("a")}, {"q": {"a": 1}}, k=0)


def test_load_beir_qrels_and_queries(beir_dir):
    qrels = load_qrels(beir_dir / "qrels" / "test.tsv")
    queries = load_queries(beir_dir / "queries.jsonl")
    assert set(qrels) == set(queries) == {f"q{i}" for i in range(6)}
    assert all(len(docs) == 10 and set(docs.values()) == {1} for docs in qrels.values())
    # the fixture makes one topic per query; a perfect run scores 1
    results = {q: {d: 1.0 for d in docs} for q, docs in qrels.items()}
    assert evaluate(results, qrels)["ndcg@10"] == pytest.approx(1.0)


def test_load_trec_qrels_and_errors(tmp_path):
    trec = tmp_path / "qrels.trec"
    trec.write_text("1 0 docA 2\n1 0 docB 0\n2 Q0 docC 1\n")
    assert load_qrels(trec) == {"1": {"docA": 2, "docB": 0}, "2": {"docC": 1}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("query-id\tcorpus-id\tscore\nq1\td1\n")
    with pytest.raises(ValueError, match="line 2 has 2 columns"):
        load_qrels(bad)
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": 7, "text": "hello"}) + "\n\n")
    assert load_queries(queries) == {"7": "hello"}


def test_format_table_aligns_rows_and_marks_missing_metrics():
    table = format_table(
        {
            "bm25": {"ndcg@10": 0.31234, "recall@100": 0.7},
            "zero-shot": {"ndcg@10": 0.4},
            "adapted": {"ndcg@10": 0.45678, "recall@100": 0.8, "mrr@10": 0.5},
        }
    )
    lines = table.splitlines()
    assert lines[0].split() == ["system", "ndcg@10", "recall@100", "mrr@10"]
    assert lines[2].split() == ["bm25", "0.3123", "0.7000", "-"]
    assert lines[3].split() == ["zero-shot", "0.4000", "-", "-"]
    assert lines[4].split() == ["adapted", "0.4568", "0.8000", "0.5000"]
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule have the same width
