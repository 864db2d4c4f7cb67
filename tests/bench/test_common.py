"""The shared bench helpers: tables, JSON, recording progress, isolation, sub-corpus, evaluation."""

from __future__ import annotations

import json
import time

import pytest


def _double(x: int) -> dict:
    return {"value": 2 * x}


def test_table_json_and_timer(bench, tmp_path):
    common = bench("common")
    text = common.format_table([{"a": "x", "b": 1.23456}, {"a": "longer", "b": None}], ["a", "b"], digits=2)
    lines = text.splitlines()
    assert lines[0].split() == ["a", "b"] and "1.23" in lines[2] and lines[3].rstrip().endswith("-")
    assert len({len(line) for line in lines}) == 1  # aligned
    path = common.write_json(tmp_path / "x" / "r.json", {"v": 1.5})
    assert json.loads(path.read_text()) == {"v": 1.5}
    with common.Timer() as t:
        time.sleep(0.01)
    assert t.seconds >= 0.01
    stats = common.latency_stats([1.0, 2.0, 3.0, 100.0])
    assert stats["p50_ms"] == pytest.approx(2.5) and stats["p99_ms"] > 90
    assert common.machine_info()["cpus"] >= 1


def test_recording_progress_and_in_process_isolation(bench):
    common = bench("common")
    rec = common.RecordingProgress()
    with rec(total=3, desc="training") as bar:
        for _ in range(3):
            time.sleep(0.005)
            bar.update(1)
    with rec(total=2, desc="teacher scores") as bar:
        bar.update(2)
    assert rec.count("training") == 3 and rec.count("teacher") == 2
    assert rec.seconds("training") >= 0.015
    assert 0 < rec.rate("training") < 1000 and rec.rate("teacher scores") is None
    out = common.run_isolated(_double, 4, isolate=False)
    assert out["value"] == 8 and out["peak_rss_mb"] > 0 and "not isolated" in out["rss_kind"]


def test_sub_corpus_keeps_judged_docs_and_evaluates(bench, beir_dir, tmp_path, tiny_student):
    common = bench("common")
    sub = common.make_sub_corpus(beir_dir, tmp_path / "sub", 0)
    assert len(sub.doc_ids) == 60 and len(sub.queries) == 6
    assert (tmp_path / "sub" / "qrels" / "test.tsv").exists()
    metrics = common.evaluate_model(tiny_student, sub.path, sub.qrels, sub.queries)
    assert set(metrics) == {"ndcg@10", "recall@100", "mrr@10"}
    assert metrics["recall@100"] == pytest.approx(1.0)  # 60 documents, 100 retrieved: all found
    assert 0 <= metrics["ndcg@10"] <= 1
