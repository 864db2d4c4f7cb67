"""The schedule commands registered on a fresh click group and driven with CliRunner: readapt
(adapt, then skip), schedule (one tick), status, versions, and usage errors."""

from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner
from rgpl_adapt.cli_schedule import register


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def group() -> click.Group:
    g = click.Group()
    register(g)
    return g


def model_args(beir_dir, out, t5, ce, student):
    return [
        "--corpus", str(beir_dir), "--out", str(out),
        "--generator", str(t5), "--teacher", str(ce), "--student", str(student), "--retriever", str(student),
        "--queries-per-passage", "1", "--max-query-len", "8", "--steps", "4", "--batch-size", "4", "--remine-every", "2",
        "--max-seq-len", "32", "--checkpoint-every", "2", "--warmup-steps", "1", "--device", "cpu", "--scale", "cpu",
    ]


def test_registers_the_commands(group):
    assert {"readapt", "schedule", "status", "versions"} <= set(group.commands)
    helptext = CliRunner().invoke(group, ["readapt", "--help"]).output
    for flag in ("--threshold", "--drift-mode", "--keep", "--tolerance", "--warm-steps", "--corpus", "--index",
                 "--student", "--url", "Examples"):
        assert flag in helptext


@pytest.fixture(scope="module")
def first_run(group, tmp_path_factory, beir_dir, tiny_t5, tiny_cross_encoder, tiny_student):
    out = tmp_path_factory.mktemp("cli-schedule") / "docs"
    args = model_args(beir_dir, out, tiny_t5, tiny_cross_encoder, tiny_student)
    result = CliRunner().invoke(group, ["readapt", "--json", *args])
    return out, args, result


def test_readapt_adapts_then_skips_without_drift(group, first_run):
    out, args, result = first_run
    assert result.exit_code == 0, result.output + repr(result.exception)
    outcome = json.loads(result.output.strip().splitlines()[-1])
    assert outcome["action"] == "promoted" and outcome["version"] == 1 and outcome["drift"]["first_run"]
    assert (out / "current" / "report.json").exists() and (out / "current" / "promotion.json").exists()
    again = CliRunner().invoke(group, ["readapt", *args, "--threshold", "0.01"])
    assert again.exit_code == 0, again.output
    assert "skipped" in again.output and "0.0% drift" in again.output


def test_schedule_runs_one_tick(group, first_run):
    _, args, _ = first_run
    result = CliRunner().invoke(group, ["schedule", "--every", "6h", "--max-ticks", "0", *args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "scheduled every 21600s" in result.output and "skipped" in result.output
    assert "stopped after 1 run(s)" in result.output
    bad = CliRunner().invoke(group, ["schedule", *args])
    assert bad.exit_code == 2 and "exactly one" in bad.output
    bad = CliRunner().invoke(group, ["schedule", "--cron", "61 * * * *", *args])
    assert bad.exit_code == 2 and "out of range" in bad.output


def test_status_and_versions(group, first_run):
    out, _, _ = first_run
    result = CliRunner().invoke(group, ["status", "--out", str(out)])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "serving: v1" in result.output and "lock:    free" in result.output and "0.0% drift" in result.output
    info = json.loads(CliRunner().invoke(group, ["status", "--out", str(out), "--json"]).output)
    assert info["serving"]["version"] == 1 and info["runs"][0]["status"] == "promoted"
    assert info["drift"]["due"] is False
    listing = CliRunner().invoke(group, ["versions", "--out", str(out)])
    assert listing.exit_code == 0 and "v1" in listing.output and "kept" in listing.output
    back = CliRunner().invoke(group, ["versions", "--out", str(out), "--rollback"])
    assert back.exit_code == 1 and "no older promoted version" in back.output


def test_usage_errors(group, tmp_path, beir_dir):
    r = CliRunner().invoke(group, ["readapt"])
    assert r.exit_code == 2 and "--corpus" in r.output
    r = CliRunner().invoke(group, ["readapt", "--corpus", str(beir_dir), "--drift-mode", "timestamp"])
    assert r.exit_code == 2 and "--timestamp-field" in r.output
    r = CliRunner().invoke(group, ["readapt", "--corpus", str(beir_dir), "--drift-mode", "seqno", "--device", "cpu"])
    assert r.exit_code == 2 and "cluster" in r.output
    r = CliRunner().invoke(group, ["status", "--out", str(tmp_path / "nothing")])
    assert r.exit_code == 2 and "no adapted version" in r.output
