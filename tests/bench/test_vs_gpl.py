"""Smoke test of bench/vs_gpl.py: our side for real at a tiny size, GPL's side replaced by a fake
runner (the real one needs gpl 0.1.4's own virtual environment, minutes to create), and GPL's
input files checked against the layout its loader reads."""

from __future__ import annotations

import csv
import json
import shutil


def test_vs_gpl_runs_our_side_and_writes_gpl_inputs(bench, beir_dir, tmp_path, tiny_student, tiny_cross_encoder,
                                                    tiny_t5, capsys):
    vs_gpl = bench("vs_gpl")
    seen = {}

    def fake_gpl(data, out, args):
        seen["data"] = data
        shutil.copytree(tiny_student, out)  # "GPL's model": the zero-shot student
        return {"negatives_s": 1.0, "labels_s": 2.0, "train_s": 4.0, "fit_s": 3.0, "pairs_scored": 2 * args.steps * args.batch_size}

    out = tmp_path / "v.json"
    res = vs_gpl.main([
        "--data", str(beir_dir), "--docs", "0", "--work", str(tmp_path / "w"), "--out", str(out),
        "--student", str(tiny_student), "--teacher", str(tiny_cross_encoder), "--generator", str(tiny_t5),
        "--passages", "20", "--steps", "3", "--batch-size", "2", "--max-seq-len", "32", "--k", "3",
    ], gpl_runner=fake_gpl)
    data = seen["data"]
    queries = [json.loads(line) for line in (data / "qgen-queries.jsonl").read_text().splitlines()]
    with open(data / "qgen-qrels" / "train.tsv") as fh:
        qrels = list(csv.reader(fh, delimiter="\t"))
    assert qrels[0] == ["query-id", "corpus-id", "score"]
    assert {q["_id"] for q in queries} == {r[0] for r in qrels[1:]} and len(queries) == res["settings"]["queries"]
    corpus_ids = {json.loads(line)["_id"] for line in (data / "corpus.jsonl").read_text().splitlines()}
    assert {r[1] for r in qrels[1:]} <= corpus_ids
    assert not (data / "hard-negatives.jsonl").exists()  # GPL must mine itself, not skip the stage
    ours = res["ours"]
    assert ours["negatives_s"] > 0 and ours["pairs_scored"] > 0 and ours["train_s"] > 0
    assert 0 < ours["teacher_load_s"] < ours["labels_s"]  # the lazily loaded teacher counts as labelling
    assert res["quality"]["gpl 0.1.4"] == res["quality"]["zero-shot"]  # the fake returned the student
    saved = json.loads(out.read_text())
    assert [r["stage"] for r in saved["table"]][:4] == ["negative mining", "pseudo-labelling", "training",
                                                         "total (these stages)"]
    assert saved["table"][0]["ours/gpl"] == ours["negatives_s"] / 1.0
    printed = capsys.readouterr().out
    assert "ours/gpl" in printed and "not compared" in printed
    compile(vs_gpl.DRIVER, "gpl_driver.py", "exec")  # the driver GPL's venv runs is valid Python
