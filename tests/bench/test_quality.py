"""Smoke test of bench/quality.py at a tiny size: the four arms, the held-out example queries, the
paired bootstrap pairs. Tiny random models (a causal LM so the example prompt is used)."""

from __future__ import annotations

import json


def test_quality_runs_four_arms_and_never_evaluates_an_example_query(bench, beir_dir, tmp_path, tiny_student,
                                                                    tiny_cross_encoder, tiny_causal_lm, capsys):
    quality = bench("quality")
    out = tmp_path / "q.json"
    res = quality.main([
        "--data", str(beir_dir), "--corpus-size", "0", "--work", str(tmp_path / "w"), "--out", str(out),
        "--student", str(tiny_student), "--teacher", str(tiny_cross_encoder), "--teacher-kind", "cross-encoder",
        "--generator", str(tiny_causal_lm), "--passages", "8", "--steps", "4", "--batch-size", "2",
        "--max-seq-len", "32", "--max-query-len", "6", "--k", "3", "--remine-every", "2", "--examples", "2",
        "--resamples", "200",
    ])
    examples = res["example_queries"]
    assert len(examples) == 2
    assert set(res["metrics"]) == {"BM25", "zero-shot", "GPL", "GPL hybrid", "R-GPL", "R-GPL hybrid",
                                   "R-GPL + examples", "R-GPL + examples hybrid"}
    for system, per_query in res["per_query_ndcg@10"].items():
        assert not set(per_query) & set(examples), system  # no arm is scored on an example query
        assert len(per_query) == res["test_queries"]
    assert {"R-GPL + examples vs R-GPL", "R-GPL vs GPL", "R-GPL + examples vs zero-shot"} <= set(res["significance"])
    # the example arm generated with the user's queries in its prompt; the R-GPL arm did not
    w = tmp_path / "w"
    ex_cfg = json.loads((w / "rgpl-examples" / "config.json").read_text())
    rgpl_cfg = json.loads((w / "rgpl" / "config.json").read_text())
    assert all(q in ex_cfg["generation"]["prompt"] for q in examples.values())
    assert rgpl_cfg["generation"]["prompt"] is None or not any(q in rgpl_cfg["generation"]["prompt"] for q in examples.values())
    assert json.loads(out.read_text())["example_queries"] == examples
    assert "R-GPL + examples vs R-GPL" in capsys.readouterr().out


def test_pick_examples_is_seeded_and_leaves_queries_to_evaluate(bench):
    quality = bench("quality")
    qids = [f"q{i}" for i in range(20)]
    assert quality.pick_examples(qids, 8, 42) == quality.pick_examples(list(reversed(qids)), 8, 42)
    assert len(set(quality.pick_examples(qids, 8, 42))) == 8
    assert quality.pick_examples(qids, 0, 42) == []
    import pytest

    with pytest.raises(SystemExit, match="no query to evaluate"):
        quality.pick_examples(qids, 20, 42)
