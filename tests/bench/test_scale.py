"""Smoke tests of bench/scale.py: synthetic corpus, streaming stages, pipeline stages, kill verdict."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.bench.conftest import load_bench


def test_synthetic_corpus_has_realistic_lengths_and_zipf_words(tmp_path):
    scale = load_bench("scale")
    info = scale.write_corpus(tmp_path / "c.jsonl", 400)
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == info["docs"] == 400 and len({json.loads(x)["_id"] for x in lines}) == 400
    lengths = [len(json.loads(x)["text"].split()) for x in lines]
    assert min(lengths) >= 50 and max(lengths) <= 250 and sum(lengths) == info["words"]
    counts = Counter(w for x in lines for w in json.loads(x)["text"].split()).most_common()
    assert counts[0][1] > 10 * counts[50][1]  # a heavy head, as in natural text
    assert scale.write_corpus(tmp_path / "c.jsonl", 400) == info  # written once


def test_stages_stream_the_corpus_into_the_store_encode_it_and_serve_it(tmp_path):
    scale = load_bench("scale")
    scale.write_corpus(tmp_path / "c.jsonl", 300)
    res = scale.stage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "index"), 100)
    assert res["stage"] == "store" and res["docs"] == 300 and res["docs_per_s"] > 0
    assert (res["chunks"], res["chunks_done"], res["chunks_skipped"]) == (3, 3, 0)
    sample = scale.stage_sample(str(tmp_path / "index"))
    assert sample["sampled"] == 300 and sample["train_texts"] > 0  # 300 passages: no sampling needed
    enc = scale.stage_encode("bytes", str(tmp_path / "index"), str(tmp_path / "vectors"), 128)
    assert (enc["docs"], enc["chunks"], enc["chunks_done"]) == (300, 3, 3)
    again = scale.stage_encode("bytes", str(tmp_path / "index"), str(tmp_path / "vectors"), 128)
    assert (again["chunks_done"], again["chunks_skipped"]) == (0, 3)  # finished chunks are not redone
    served = scale.stage_serve(str(tmp_path / "index"), str(tmp_path / "vectors"))
    assert served["docs"] == 300 and served["hits"] == 10_000 and served["search"] == "exact"


def test_projection_is_a_line_through_the_two_largest_sizes():
    scale = load_bench("scale")
    rows = [{"stage": "store", "docs": n, "seconds": n / 1000, "peak_rss_mb": 100 + n / 1e6} for n in (1000, 2000)]
    (line,) = scale.project(rows, target=10_000)
    assert line["seconds"] == 10 and line["peak_rss_mb"] == 100  # 100.01 rounded


def test_pipeline_stages_generate_mine_and_train_on_the_store(tmp_path):
    scale, sp = load_bench("scale"), load_bench("scale_pipeline")
    scale.write_corpus(tmp_path / "c.jsonl", 200)
    scale.stage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "index"), 100)
    words = scale.vocabulary()
    models = {"student": str(scale.build_model(tmp_path / "student")),
              "generator": str(scale.build_generator(tmp_path / "t5", words)),
              "teacher": str(scale.build_teacher(tmp_path / "ce", words))}
    kw = {"corpus": str(tmp_path / "c.jsonl"), "index": str(tmp_path / "index"),
          "run": str(tmp_path / "pipe"), "models": models, "chunk": 64, "steps": 4, "max_queries": 60}
    gen = sp.stage_generate(**kw, log=str(tmp_path / "gen.log"))
    # GPL's rule: 3 per passage, 60 // 3 = 20 sampled passages, one part (parts of max(32, min(256, chunk)))
    assert (gen["passages"], gen["queries_per_passage"], gen["chunks"], gen["chunks_done"]) == (20, 3, 1, 1)
    assert 0 < gen["queries"] <= 60
    mine = sp.stage_mine(**kw, log=str(tmp_path / "mine.log"), encoder="bytes")
    assert mine["pools"] == mine["queries"] == gen["queries"] and mine["empty_pools"] == 0
    assert mine["negatives"] == 50 * mine["pools"]
    assert (mine["chunks"], mine["chunks_done"]) == (4, 4)  # 200 documents in chunks of 64
    train = sp.stage_train(**kw, log=str(tmp_path / "train.log"))
    assert (train["steps"], train["resumed_at_step"], train["round_events"]) == (4, 0, 1)
    assert train["triples"] == 4 * 32  # steps x batch size, labelled once
    assert not (tmp_path / "index" / "vectors" / "miner").exists()  # mining's scratch space was dropped


def _fake_stages(tmp_path, rerun_parts, rerun_resumed_at, round_events):
    """A run_stage stand-in: the killed process (pid 111) logs part 0 and checkpoints step 25; the rerun
    (pid 222) logs ``rerun_parts`` and resumes training at ``rerun_resumed_at``."""

    def run_stage(stage, kw, kill_when=None):
        with open(kw["log"], "a") as fh:
            if stage == "generate":
                pid = 111 if kill_when else 222
                for part in [0] if kill_when else rerun_parts:
                    fh.write(f"{pid} rgpl_adapt.pipeline generated queries part {part} (256 passages)\n")
            if stage == "train" and not kill_when:
                fh.write(f"222 rgpl_adapt.training resuming training at step {rerun_resumed_at} from x\n")
        if kill_when:
            return {"killed": True, "done_at_kill": {"generate": 1, "train": 25}[stage]}
        if stage == "generate":
            done = len(rerun_parts)
            return {"pid": 222, "chunks": 4, "chunks_done": done, "chunks_skipped": 4 - done, "queries": 30}
        return {"pid": 222, "steps": 100, "resumed_at_step": rerun_resumed_at, "round_events": round_events}

    return run_stage


def _kill_and_rerun(tmp_path, parts, resumed_at, rounds) -> dict:
    scale = load_bench("scale")
    for log in tmp_path.glob("*.log"):
        log.unlink()
    got: dict = {}
    kw = {"run": str(tmp_path / "pipe-kill"), "steps": 100, "encoder": "bytes"}
    fake = _fake_stages(tmp_path, parts, resumed_at, rounds)
    scale.kill_pipeline(kw, ["generate", "train"], fake, got.__setitem__)
    return got


def test_kill_verdict_needs_nothing_redone_and_the_counts_to_match(tmp_path):
    good = _kill_and_rerun(tmp_path, [1, 2, 3], 25, 1)
    assert good["generate"]["resumed"] and good["generate"]["redone"] == [] and good["train"]["resumed"]
    redone = _kill_and_rerun(tmp_path, [0, 1, 2, 3], 25, 1)["generate"]
    assert not redone["resumed"] and redone["redone"] == [0]
    missing = _kill_and_rerun(tmp_path, [1, 2], 25, 1)["generate"]  # a part neither process finished
    assert not missing["resumed"]
    assert not _kill_and_rerun(tmp_path, [1, 2, 3], 0, 1)["train"]["resumed"]  # started over, not at step 25
    assert not _kill_and_rerun(tmp_path, [1, 2, 3], 25, 2)["train"]["resumed"]  # the round was labelled again


def test_projection_keeps_cpu_and_gpu_runs_apart():
    scale = load_bench("scale")
    rows = [{"stage": "encode", "encoder": "tiny-bert", "device": d, "docs": n, "seconds": n / rate,
             "peak_rss_mb": 900.0} for d, rate in (("cpu", 1000), ("cuda", 10_000)) for n in (1000, 2000)]
    lines = {line["device"]: line for line in scale.project(rows, target=10_000)}
    assert (lines["cpu"]["seconds"], lines["cuda"]["seconds"]) == (10, 1)


def test_a_stage_records_its_device_and_cuda_without_a_gpu_is_refused(tmp_path, capsys, monkeypatch):
    import torch

    scale = load_bench("scale")
    scale.write_corpus(tmp_path / "c.jsonl", 50)
    scale.stage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "index"), 100)
    scale._stage_child("encode", {"model": "bytes", "index": str(tmp_path / "index"),
                                  "vectors": str(tmp_path / "v"), "chunk": 64, "device": "cpu"})
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1][len("RESULT "):])
    assert res["device"] == "cpu" and res["docs"] == 50 and "gpu_peak_allocated_mb" not in res
    assert res["peak_rss_mb"] > 0
    assert scale.resolve_bench_device("cpu") == ("cpu", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert scale.resolve_bench_device("auto") == ("cpu", None)
    with pytest.raises(SystemExit, match="no GPU"):
        scale.resolve_bench_device("cuda")
