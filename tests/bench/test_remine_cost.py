"""Smoke test of bench/remine_cost.py at a tiny size with the tiny random-weight models."""

from __future__ import annotations

import json


def test_remine_cost_runs_shares_stages_and_writes_its_table(bench, beir_dir, tmp_path, tiny_student,
                                                             tiny_cross_encoder, tiny_t5, capsys):
    remine_cost = bench("remine_cost")
    out = tmp_path / "r.json"
    res = remine_cost.main([
        "--data", str(beir_dir), "--docs", "0", "--work", str(tmp_path / "w"), "--out", str(out),
        "--student", str(tiny_student), "--teacher", str(tiny_cross_encoder), "--teacher-kind", "cross-encoder",
        "--generator", str(tiny_t5), "--passages", "12", "--steps", "4", "--batch-size", "2", "--max-seq-len", "32",
        "--k", "3", "--every", "0,2", "--bf16-check",
    ])
    runs = res["runs"]
    assert set(runs) == {"0", "2"}
    assert runs["0"]["rounds"] == 1 and runs["2"]["rounds"] == 2
    assert runs["0"]["remine_s"] == 0 and runs["2"]["remine_s"] > 0 and len(runs["2"]["churn"]) == 1
    # the second run reused the first run's queries and initial negatives (its stages were skipped)
    assert runs["2"]["stage_seconds"].get("queries") == runs["0"]["stage_seconds"].get("queries")
    w = tmp_path / "w"
    assert (w / "every-2" / "queries" / "queries.jsonl").read_text() == (w / "every-0" / "queries" / "queries.jsonl").read_text()
    assert 0 <= runs["2"]["ndcg@10"] <= 1 and "ndcg@10" in res["zero_shot"]
    b = res["bf16_remine"]
    assert 0 <= b["topk_overlap"] <= 1 and b["fp32_s"] > 0 and b["bf16_s"] > 0
    saved = json.loads(out.read_text())
    assert len(saved["table"]) == 3  # zero-shot + two runs
    printed = capsys.readouterr().out
    assert "0 (GPL)" in printed and "bf16 autocast" in printed
