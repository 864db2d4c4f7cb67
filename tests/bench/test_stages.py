"""Smoke test of bench/stages.py at a tiny size with the tiny random-weight models."""

from __future__ import annotations

import json


def test_stages_bench_runs_every_stage_and_writes_its_table(bench, beir_dir, tmp_path, tiny_student,
                                                            tiny_cross_encoder, tiny_t5, capsys):
    stages = bench("stages")
    out = tmp_path / "stages.json"
    res = stages.main([
        "--data", str(beir_dir), "--docs", "0", "--work", str(tmp_path / "w"), "--out", str(out),
        "--student", str(tiny_student), "--teacher", str(tiny_cross_encoder), "--teacher-kind", "cross-encoder",
        "--generator", str(tiny_t5), "--passages", "30", "--k", "3", "--steps", "2", "--batch-size", "2",
        "--max-seq-len", "32", "--encode-docs", "20", "--search-queries", "5", "--no-isolate",
    ])
    saved = json.loads(out.read_text())
    assert set(saved["stages"]) == {"index", "queries", "negatives exact", "negatives hnsw", "labels", "train fp32",
                                    "train bf16", "encode", "vectors", "search"}
    s = res["stages"]
    assert s["index"]["documents"] == 60 and s["index"]["docs_per_s"] > 0
    assert s["queries"]["queries"] > 0 and s["negatives exact"]["queries"] == s["queries"]["queries"]
    assert s["negatives hnsw"]["index"].startswith("HNSW")
    assert s["labels"]["pairs_scored"] > 0 and s["labels"]["triples"] == 4  # 2 steps x batch 2
    assert s["train fp32"]["steps"] == 2 and s["train bf16"]["precision"] == "bf16"
    assert set(s["encode"]["runs"]) == {"torch fp32", "torch bf16 autocast", "onnx fp32", "onnx int8"}
    assert s["encode"]["runs"]["onnx fp32"]["cosine_to_fp32"] > 0.999  # same truncation as torch
    assert s["vectors"]["vectors"] == 20
    assert s["search"]["bm25"]["n"] == 5 and s["search"]["hybrid hnsw"]["p99_ms"] > 0
    assert all(r["peak_rss_mb"] > 0 for r in s.values())
    printed = capsys.readouterr().out
    assert "steps/s" in printed and "hybrid exact p50 / p99" in printed and str(out) in printed
    assert len(saved["table"]) >= 15
