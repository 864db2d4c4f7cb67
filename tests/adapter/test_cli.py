"""The CLI end to end on tiny models: adapt (default command), rerun skipping, eval, search, resume."""

import json

import pytest
from click.testing import CliRunner

from rgpl_adapt.cli import cli


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


def adapt_args(beir_dir, run, tiny_t5, tiny_cross_encoder, tiny_student, *extra):
    return [
        "--corpus", str(beir_dir), "--out", str(run),
        "--generator", str(tiny_t5), "--teacher", str(tiny_cross_encoder),
        "--student", str(tiny_student), "--retriever", str(tiny_student),
        "--queries-per-passage", "2", "--steps", "6", "--batch-size", "4", "--remine-every", "3",
        "--max-seq-len", "32", "--checkpoint-every", "2", "--warmup-steps", "1", "--device", "cpu", "--scale", "cpu",
        "--eval-qrels", str(beir_dir / "qrels" / "test.tsv"), "--eval-every", "3",
        *extra,
    ]


@pytest.fixture(scope="module")
def adapted_run(tmp_path_factory, beir_dir, tiny_t5, tiny_cross_encoder, tiny_student):
    run = tmp_path_factory.mktemp("cli") / "run"
    result = CliRunner().invoke(cli, adapt_args(beir_dir, run, tiny_t5, tiny_cross_encoder, tiny_student))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return run, result


def test_adapt_is_the_default_command_and_writes_everything(adapted_run):
    run, result = adapted_run
    assert "model:" in result.output and "onnx:" in result.output
    assert "rgpl-adapt: at most 2,000 queries, 6 steps, batch 4, remine every 3, run folder" in result.output
    for stage in ("index", "queries", "negatives", "train", "export", "serve"):
        assert (run / stage / "manifest.json").exists(), stage
    report = json.loads((run / "report.json").read_text())
    train = report["stages"]["train"]
    assert train["steps"] == 6 and [r["round"] for r in train["rounds"]] == [0, 1]
    assert (train["device"], train["precision"]) == ("cpu", "fp32")  # what the steps ran at, and where
    assert report["stages"]["negatives"]["encode"]["device"] == "cpu"
    assert 0.0 <= train["rounds"][1]["churn"] <= 1.0
    assert train["rounds"][1]["search"]["method"] == "exact"  # how remining searched, with the estimate
    assert train["rounds"][1]["search"]["estimated_exact_s"] <= train["rounds"][1]["search"]["budget_s"]
    assert {r["method"] for r in report["stages"]["negatives"]["search"].values()} == {"exact"}
    assert [e["step"] for e in train["evals"]] == [3, 6]  # periodic evaluation on the held-out qrels
    assert all(0.0 <= e["ndcg@10"] <= 1.0 for e in train["evals"])
    assert report["stages"]["export"]["max_abs_diff"] <= report["stages"]["export"]["tolerance"]
    assert 0.0 <= report["stages"]["serve"]["hybrid_weight"] <= 1.0
    from rgpl_adapt.encoding import encode_precision

    expected = "torch bf16 autocast" if encode_precision("auto", "cpu") == "bf16" else "onnx model_opt.onnx"
    assert report["stages"]["serve"]["corpus_encoder"] == expected  # which path encoded the corpus, said


def test_rerun_skips_by_manifest_and_changed_settings_rebuild(adapted_run, beir_dir, tiny_t5, tiny_cross_encoder, tiny_student):
    run, _ = adapted_run
    same = CliRunner().invoke(cli, adapt_args(beir_dir, run, tiny_t5, tiny_cross_encoder, tiny_student))
    assert same.exit_code == 0, same.output
    for stage in ("index", "queries", "negatives", "train", "export", "serve"):
        assert f"[{stage}] skipped" in same.output
    changed = CliRunner().invoke(
        cli, adapt_args(beir_dir, run, tiny_t5, tiny_cross_encoder, tiny_student, "--remine-every", "2", "--restart")
    )
    assert changed.exit_code == 0, changed.output
    assert "[queries] skipped" in changed.output and "[negatives] skipped" in changed.output
    assert "[train] rebuilding" in changed.output and "[export] rebuilding" in changed.output
    rounds = json.loads((run / "train" / "manifest.json").read_text())["outputs"]["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2]


def test_eval_prints_one_table(adapted_run, beir_dir):
    run, _ = adapted_run
    result = CliRunner().invoke(cli, ["eval", "--run", str(run), "--qrels", str(beir_dir / "qrels" / "test.tsv")])
    assert result.exit_code == 0, result.output + repr(result.exception)
    for system in ("bm25", "zero-shot", "adapted", "hybrid"):
        assert system in result.output
    table = json.loads((run / "eval.json").read_text())
    assert set(table) == {"bm25", "zero-shot", "adapted", "hybrid"}
    assert table["bm25"]["ndcg@10"] > 0.5  # the synthetic qrels are topic words: BM25 finds them


def test_search_modes(adapted_run):
    run, _ = adapted_run
    for mode in ("hybrid", "dense", "bm25"):
        result = CliRunner().invoke(cli, ["search", "--run", str(run), "--mode", mode, "--json", "-k", "3", "vitamin bone"])
        assert result.exit_code == 0, result.output
        hits = json.loads(result.output)
        assert len(hits) == 3 and all(h["id"].startswith("d") for h in hits)
    bm25 = json.loads(CliRunner().invoke(cli, ["search", "--run", str(run), "--mode", "bm25", "--json", "vitamin calcium"]).output)
    assert bm25[0]["title"].startswith("vitamin")


def test_interrupted_training_resumes(tmp_path, beir_dir, tiny_t5, tiny_cross_encoder, tiny_student, monkeypatch):
    from rgpl_adapt import training

    run = tmp_path / "run"
    real_run = training.Trainer.run

    def crash_at_4(self, *, resume=False):
        self.stop_after = 4
        return real_run(self, resume=resume)

    monkeypatch.setattr(training.Trainer, "run", crash_at_4)
    first = CliRunner().invoke(cli, adapt_args(beir_dir, run, tiny_t5, tiny_cross_encoder, tiny_student))
    assert first.exit_code != 0 and "--resume" in first.output
    monkeypatch.setattr(training.Trainer, "run", real_run)
    again = CliRunner().invoke(cli, adapt_args(beir_dir, run, tiny_t5, tiny_cross_encoder, tiny_student))
    assert again.exit_code != 0 and "--resume" in again.output and "--restart" in again.output
    resumed = CliRunner().invoke(cli, adapt_args(beir_dir, run, tiny_t5, tiny_cross_encoder, tiny_student, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert "[queries] skipped" in resumed.output
    assert json.loads((run / "train" / "manifest.json").read_text())["outputs"]["steps"] == 6


def test_usage_errors(tmp_path, beir_dir):
    r = CliRunner().invoke(cli, ["--corpus", str(beir_dir), "--eval-every", "5"])
    assert r.exit_code == 2 and "--eval-qrels" in r.output
    r = CliRunner().invoke(cli, ["adapt"])
    assert r.exit_code == 2 and "--corpus" in r.output
    r = CliRunner().invoke(cli, ["--corpus", str(beir_dir), "--resume", "--restart"])
    assert r.exit_code == 2 and "exclude" in r.output


def test_missing_model_error_says_to_pass_a_local_path(tmp_path, beir_dir):
    r = CliRunner().invoke(cli, ["--corpus", str(beir_dir), "--out", str(tmp_path / "r"), "--generator", "no-such/model-xyz", "--device", "cpu"])
    assert r.exit_code == 1
    assert "local path" in r.output


def test_report_writes_one_html_file_from_a_real_run(adapted_run, beir_dir):
    run, _ = adapted_run
    CliRunner().invoke(cli, ["eval", "--run", str(run), "--qrels", str(beir_dir / "qrels" / "test.tsv")])
    result = CliRunner().invoke(cli, ["report", "--run", str(run)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    html = (run / "report.html").read_text()
    assert html.lstrip().lower().startswith("<!doctype html") and "<svg" in html
    assert "hybrid" in html.lower() and "zero-shot" in html


def test_chunk_size_reaches_the_pipeline(monkeypatch, tmp_path, beir_dir):
    import rgpl_adapt.pipeline as pipeline

    seen = {}

    class Stop(RuntimeError):
        pass

    def fake_pipeline(cfg, out, **kw):
        seen.update(kw)
        raise Stop("stop here")

    monkeypatch.setattr(pipeline, "Pipeline", fake_pipeline)
    r = CliRunner().invoke(cli, ["--corpus", str(beir_dir), "--out", str(tmp_path / "r"), "--chunk-size", "64",
                                 "--device", "cpu"])
    assert "stop here" in r.output and seen["chunk_size"] == 64
    r = CliRunner().invoke(cli, ["--corpus", str(beir_dir), "--chunk-size", "0"])
    assert r.exit_code != 0 and "--chunk-size" in r.output


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "rgpl_adapt.cli", "adapt", "--help"], capture_output=True, text=True,
                         check=True).stdout
    assert "--chunk-size" in out and "--device" in out
