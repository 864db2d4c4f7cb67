"""The HTML run report: built from a run folder written by hand, plots carry the logged data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rgpl_adapt.cli_report import register
from rgpl_adapt.report_html import build_report, load_run, svg_bars, svg_lines, write_report


def _points(svg: str, series: str) -> list[tuple[float, float]]:
    m = re.search(rf'data-series="{re.escape(series)}"[^>]*points="([^"]*)"', svg)
    assert m, f"no polyline for {series!r}"
    return [tuple(map(float, p.split(","))) for p in m.group(1).split()]


def _write_run(root: Path, *, steps: int = 23, rounds: int = 3, with_eval: bool = True, with_serve: bool = True) -> Path:
    run = root / "run"
    (run / "train").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"training": {"student": "tiny", "steps": steps, "batch_size": 4},
                                                 "remine": {"every": 8}, "labels": {"teacher": "t"}}))
    lines = []
    for r in range(rounds):
        rec = {"event": "round", "round": r, "start_step": r * 8, "n_triples": 32, "margin_mean": 1.0 + r,
               "margin_std": 0.5, "margin_neg_share": 0.1 * r, "cache_hit_rate": 0.2 * r}
        if r:
            rec.update(churn=0.9 - 0.3 * r, remine_seconds=1.5)
        lines.append(rec)
    for s in range(1, steps + 1):
        lines.append({"event": "step", "step": s, "loss": 10.0 / s, "lr": 1e-5, "round": min(2, (s - 1) // 8)})
    lines.append({"event": "eval", "step": 10, "ndcg@10": 0.4, "mrr@10": 0.5})
    lines.append({"event": "eval", "step": 20, "ndcg@10": 0.45, "mrr@10": 0.55})
    (run / "train" / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "{torn line\n")
    (run / "report.json").write_text(json.dumps({
        "seconds": 12.5, "device": "cpu",
        "stages": {"corpus": {"documents": 60}, "index": {"seconds": 0.5}, "queries": {"seconds": 3.0},
                   "negatives": {"seconds": 1.0}, "train": {"seconds": 7.0}, "export": {"skipped": True}},
    }))
    if with_eval:
        (run / "eval.json").write_text(json.dumps({
            "bm25": {"ndcg@10": 0.5, "recall@100": 0.8, "mrr@10": 0.5},
            "zero-shot": {"ndcg@10": 0.3, "recall@100": 0.6, "mrr@10": 0.3},
            "adapted": {"ndcg@10": 0.6, "recall@100": 0.9, "mrr@10": 0.6},
        }))
    if with_serve:
        (run / "serve").mkdir()
        sweep = {f"{w / 10:.1f}": round(0.2 + 0.05 * w - 0.004 * w * w, 4) for w in range(11)}
        (run / "serve" / "manifest.json").write_text(json.dumps({"outputs": {"hybrid_weight": 0.6, "hybrid_sweep_mrr": sweep}}))
    return run


def test_report_plots_carry_the_logged_data(tmp_path):
    run = _write_run(tmp_path)
    page = build_report(run)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    loss = _points(page, "loss")
    assert len(loss) == 23  # one point per logged step
    ys = [y for _, y in loss]
    assert ys == sorted(ys)  # loss 10/s decreases, so SVG y (downwards) increases
    assert page.count('class="vline"') == 2  # rounds 1 and 2 start inside the run
    churn = _points(page, "churn")
    assert len(churn) == 2  # round 0 has no churn
    assert churn[0][1] < churn[1][1]  # churn falls from 0.6 to 0.3: lower value, larger SVG y
    assert len(_points(page, "margin mean")) == 3
    bars = re.findall(r'data-bar="([^"]*)\|ndcg@10" data-value="([^"]*)"', page)
    assert dict(bars) == {"bm25": "0.5", "zero-shot": "0.3", "adapted": "0.6"}
    assert len(_points(page, "MRR@10")) == 11
    assert 'data-marker="1"' in page  # the chosen hybrid weight
    assert len(_points(page, "ndcg@10")) == 2  # periodic evaluation
    assert re.search(r'data-bar="train\|seconds" data-value="7"', page)
    assert "export" not in re.findall(r'data-bar="([^|"]*)\|seconds"', page)  # skipped stage has no seconds
    assert "1 unreadable line(s)" in page


def test_missing_parts_are_left_out(tmp_path):
    run = _write_run(tmp_path, with_eval=False, with_serve=False, rounds=1)
    page = build_report(run)
    assert "data-bar=" not in page.split('id="eval"')[1].split("</section>")[0]  # no before/after bars
    assert len(_points(page, "ndcg@10")) == 2  # the periodic evaluation is still shown
    assert 'id="sweep"' not in page
    assert 'data-series="churn"' not in page
    assert "rgpl-adapt eval" in page  # says how to get the missing part
    assert len(_points(page, "loss")) == 23


def test_empty_run_folder_gives_a_page(tmp_path):
    (tmp_path / "empty").mkdir()
    page = build_report(tmp_path / "empty")
    assert "<svg" not in page
    assert "Not in this run folder" in page
    with pytest.raises(FileNotFoundError):
        load_run(tmp_path / "absent")


def test_resumed_log_keeps_last_record_per_step(tmp_path):
    run = _write_run(tmp_path)
    with open(run / "train" / "log.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "step", "step": 5, "loss": 99.0}) + "\n")
    data = load_run(run)
    assert len(data.steps) == 23
    assert data.steps[4]["loss"] == 99.0


def test_svg_helpers_scale_and_drop_bad_values():
    svg = svg_lines({"a": [(0, 1), (1, float("nan")), (2, 3)]}, title="t<", xlabel="x", ylabel="y")
    pts = _points(svg, "a")
    assert len(pts) == 2 and pts[0][1] > pts[1][1]
    assert "t&lt;" in svg
    assert svg_lines({"a": []}, title="t", xlabel="x", ylabel="y") == ""
    bars = svg_bars({"g1": {"s": 2.0}, "g2": {"s": 1.0}}, title="b", ylabel="v")
    heights = [float(h) for h in re.findall(r'data-bar="[^"]*"[^>]*height="([^"]*)"', bars)]
    assert heights[0] == pytest.approx(2 * heights[1], rel=0.02)


def test_cli_report_writes_the_file(tmp_path):
    run = _write_run(tmp_path)

    @click.group()
    def group() -> None:
        pass

    register(group)
    out = tmp_path / "out" / "r.html"
    res = CliRunner().invoke(group, ["report", "--run", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.exists() and str(out) in res.output
    assert len(_points(out.read_text(), "loss")) == 23
    res = CliRunner().invoke(group, ["report", "--run", str(run)])
    assert res.exit_code == 0 and (run / "report.html").exists()
    assert write_report(run) == run / "report.html"
