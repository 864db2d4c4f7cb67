"""bench/gpu_check.py: the run-folder verdicts the GPU check relies on, and its summary."""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench.conftest import load_bench

STAGES = ("index", "queries", "negatives", "train", "export", "serve")


def fake_run(root: Path, *, device="cpu", rounds=2, diff=1e-6, vectors=300) -> Path:
    run = root / "run"
    for stage in STAGES:
        (run / stage).mkdir(parents=True, exist_ok=True)
        (run / stage / "manifest.json").write_text("{}")
    stages = {"index": {"documents": 300}, "serve": {"vectors": vectors, "corpus_encoder": "torch bf16 autocast"},
              "train": {"steps": 8, "final_loss": 0.3, "rounds": [{"round": r} for r in range(rounds)],
                        "precision": "fp32", "device": device},
              "export": {"max_abs_diff": diff, "tolerance": 1e-4, "exporter": "torchscript"},
              "negatives": {"encode": {"device": device, "precision": "fp32"}}}
    (run / "report.json").write_text(json.dumps({"device": device, "stages": stages}))
    return run


def rank_log(path: Path, run: Path, chunks_by_folder: dict[str, list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"INFO rgpl_adapt.chunked: encoded chunk {c} of 5 into {run / folder}"
             for folder, chunks in chunks_by_folder.items() for c in chunks]
    path.write_text("\n".join(["INFO something else", *lines]) + "\n")


def test_a_complete_run_passes_and_each_defect_fails_its_check(tmp_path):
    gc = load_bench("gpu_check")
    good = gc.verify_run(fake_run(tmp_path / "a"), "cpu")
    assert good["ok"] and set(good["checks"]) >= {"manifests", "device", "remined", "onnx_export_parity", "served"}
    bad = {
        "onnx_export_parity": fake_run(tmp_path / "b", diff=1e-2),
        "remined": fake_run(tmp_path / "c", rounds=1),
        "served": fake_run(tmp_path / "d", vectors=299),
        "device": fake_run(tmp_path / "e", device="cpu"),
    }
    for check, run in bad.items():
        res = gc.verify_run(run, "cuda" if check == "device" else "cpu")
        assert not res["ok"] and not res["checks"][check]["ok"], check
    (tmp_path / "a" / "run" / "serve" / "manifest.json").unlink()
    missing = gc.verify_run(tmp_path / "a" / "run", "cpu")
    assert missing["checks"]["manifests"] == {"ok": False, "missing": ["serve"]}


def test_torchrun_encodes_must_be_split_between_the_ranks(tmp_path):
    gc = load_bench("gpu_check")
    run = fake_run(tmp_path)
    logs = tmp_path / "torchrun" / "abc" / "attempt_0"
    folders = ("negatives/vectors/miner-x", "serve/vectors")
    rank_log(logs / "0" / "stderr.log", run, {f: [0, 2, 4] for f in folders})
    rank_log(logs / "1" / "stderr.log", run, {f: [1, 3] for f in folders})
    split = gc.verify_run(run, "cpu", ranks=2, rank_logs=tmp_path / "torchrun")
    assert split["ok"]
    assert split["checks"]["encodes_split_across_ranks"]["chunks"]["1"] == {f: [1, 3] for f in folders}
    rank_log(logs / "1" / "stderr.log", run, {})  # rank 0 did everything: not shared
    alone = gc.verify_run(run, "cpu", ranks=2, rank_logs=tmp_path / "torchrun")
    assert not alone["ok"] and not alone["checks"]["encodes_split_across_ranks"]["ok"]
    rank_log(logs / "1" / "stderr.log", run, {f: [1, 2, 3] for f in folders})  # chunk 2 encoded twice
    assert not gc.verify_run(run, "cpu", ranks=2, rank_logs=tmp_path / "torchrun")["ok"]


def test_summary_collects_steps_results_and_log_tails(tmp_path):
    gc = load_bench("gpu_check")
    (tmp_path / "a.log").write_text("\n".join(f"line {i}" for i in range(100)))
    (tmp_path / "a.json").write_text(json.dumps({"x": 1}))
    steps = [{"step": "a", "rc": 0, "seconds": 1.5, "log": str(tmp_path / "a.log"), "result": str(tmp_path / "a.json")},
             {"step": "b", "rc": 124, "seconds": 30.0, "log": "", "result": ""}]
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))
    doc = gc.summary(tmp_path / "steps.jsonl", tmp_path / "summary.json")
    assert (doc["ok"], doc["failed"], doc["seconds"]) == (False, ["b"], 31.5)
    assert doc["steps"][0]["result_json"] == {"x": 1} and doc["steps"][0]["log_tail"][-1] == "line 99"
    assert len(doc["steps"][0]["log_tail"]) == 40
    assert json.loads((tmp_path / "summary.json").read_text()) == doc
