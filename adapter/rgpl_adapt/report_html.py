"""One self-contained HTML report of a run folder: plots drawn as inline SVG, no dependency.

What it shows, each part only when the run folder has the data for it:

* stage timings (``report.json`` ``stages.*.seconds``), as a table and bars;
* the training loss per logged step (``train/log.jsonl`` events ``"step"``), with the remining
  rounds marked;
* remining per round (``train/log.jsonl`` events ``"round"``, else ``report.json``): churn (share
  of negatives that are new), teacher margin statistics, cache hits and remining seconds;
* periodic evaluation during training (``"eval"`` events) and the final evaluation table
  (``eval.json``, written by ``rgpl-adapt eval``): nDCG@10 before (zero-shot, BM25) and after;
* the hybrid weight sweep of the serve stage (``serve/manifest.json`` ``hybrid_sweep_mrr``).

The SVG helpers are pure functions of numbers (testable without a run): every plotted series is
one ``<polyline data-series="NAME" points="x,y x,y ...">`` or a group of ``<rect data-bar=...>``.

    from rgpl_adapt.report_html import write_report
    write_report("runs/scifact")            # -> runs/scifact/report.html
"""

from __future__ import annotations

import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["RunData", "build_report", "load_run", "svg_bars", "svg_lines", "write_report"]

WIDTH, HEIGHT = 640, 260
MARGIN = {"left": 56, "right": 16, "top": 28, "bottom": 40}
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#7f7f7f")

Point = tuple[float, float]


@dataclass
class RunData:
    """What a run folder holds for the report; every part may be empty."""

    run_dir: Path
    steps: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    eval_table: dict[str, dict[str, float]] = field(default_factory=dict)
    sweep: dict[str, float] = field(default_factory=dict)
    hybrid_weight: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    report: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- reading


def _read_json(path: Path, problems: list[str]) -> Any:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name}: unreadable ({exc})")
        return None


def _read_log(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    events, bad = [], 0
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(event, dict):
                events.append(event)
    if bad:
        problems.append(f"{path.name}: {bad} unreadable line(s) skipped")
    return events


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Gather the report's data from a run folder; missing files leave their part empty."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run folder at {run_dir}: pass the --out folder of `rgpl-adapt adapt`")
    data = RunData(run_dir=run_dir)
    report = _read_json(run_dir / "report.json", data.problems) or {}
    data.report = report if isinstance(report, dict) else {}
    data.config = _read_json(run_dir / "config.json", data.problems) or {}
    events = _read_log(run_dir / "train" / "log.jsonl", data.problems)
    # A resumed run appends to the log: the last record of a step wins.
    by_step: dict[int, dict[str, Any]] = {}
    for e in events:
        if e.get("event") == "step" and _finite(e.get("step")) and _finite(e.get("loss")):
            by_step[int(e["step"])] = e
    data.steps = [by_step[s] for s in sorted(by_step)]
    by_round: dict[int, dict[str, Any]] = {}
    for e in events:
        if e.get("event") == "round" and _finite(e.get("round")):
            by_round[int(e["round"])] = e
    if not by_round:
        for r in data.report.get("stages", {}).get("train", {}).get("rounds") or []:
            if isinstance(r, dict) and _finite(r.get("round")):
                by_round[int(r["round"])] = r
    data.rounds = [by_round[r] for r in sorted(by_round)]
    data.evals = [e for e in events if e.get("event") == "eval" and _finite(e.get("step"))]
    table = _read_json(run_dir / "eval.json", data.problems)
    if isinstance(table, dict):
        data.eval_table = {str(k): v for k, v in table.items() if isinstance(v, dict)}
    serve = _read_json(run_dir / "serve" / "manifest.json", data.problems) or {}
    outputs = serve.get("outputs", {}) if isinstance(serve, dict) else {}
    if not outputs:
        outputs = data.report.get("stages", {}).get("serve", {}) or {}
    sweep = outputs.get("hybrid_sweep_mrr") or {}
    data.sweep = {str(k): float(v) for k, v in sweep.items() if _finite(v)}
    data.hybrid_weight = outputs.get("hybrid_weight") if _finite(outputs.get("hybrid_weight")) else None
    for name, stage in data.report.get("stages", {}).items():
        if isinstance(stage, dict) and _finite(stage.get("seconds")):
            data.stage_seconds[name] = float(stage["seconds"])
    return data


# --------------------------------------------------------------------------- SVG


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.ceil(lo / step) * step
    out, v = [], start
    while v <= hi + step * 1e-9:
        out.append(round(v, 12))
        v += step
    return out


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.3g}"
    return f"{v:.4g}"


def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _frame(title: str, xlabel: str, ylabel: str, width: int, height: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_esc(title)}">',
        f'<text x="{width / 2:.0f}" y="16" text-anchor="middle" class="title">{_esc(title)}</text>',
        f'<text x="{width / 2:.0f}" y="{height - 4}" text-anchor="middle" class="axis">{_esc(xlabel)}</text>',
        f'<text x="12" y="{height / 2:.0f}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 12 {height / 2:.0f})">{_esc(ylabel)}</text>',
    ]


def svg_lines(
    series: Mapping[str, Sequence[Point]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    width: int = WIDTH,
    height: int = HEIGHT,
    vlines: Sequence[float] = (),
    marker: Point | None = None,
) -> str:
    """A line chart: one ``<polyline data-series=NAME>`` per series, one point per (x, y).

    ``vlines`` draws dashed vertical lines (e.g. remining rounds); ``marker`` circles one point.
    Non-finite points are dropped. Returns an ``<svg>`` element as text.
    """
    clean = {name: [(float(x), float(y)) for x, y in pts if _finite(x) and _finite(y)] for name, pts in series.items()}
    allpts = [p for pts in clean.values() for p in pts]
    if not allpts:
        return ""
    xs, ys = [p[0] for p in allpts] + list(vlines), [p[1] for p in allpts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    if y1 == y0:
        y0, y1 = y0 - abs(y0) * 0.1 - 1e-3, y1 + abs(y1) * 0.1 + 1e-3
    pad = (y1 - y0) * 0.05
    y0, y1 = y0 - pad, y1 + pad
    left, right, top, bottom = MARGIN["left"], width - MARGIN["right"], MARGIN["top"], height - MARGIN["bottom"]

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (right - left)

    def py(y: float) -> float:
        return bottom - (y - y0) / (y1 - y0) * (bottom - top)

    out = _frame(title, xlabel, ylabel, width, height)
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" class="plot"/>')
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{right}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>')
        out.append(f'<text x="{left - 4}" y="{py(t) + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<text x="{px(t):.1f}" y="{bottom + 14}" text-anchor="middle" class="tick">{_fmt(t)}</text>')
    for v in vlines:
        out.append(f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{top}" y2="{bottom}" class="vline"/>')
    for i, (name, pts) in enumerate(clean.items()):
        color = COLORS[i % len(COLORS)]
        points = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
        out.append(
            f'<polyline data-series="{_esc(name)}" fill="none" stroke="{color}" stroke-width="1.5" points="{points}"/>'
        )
        if len(pts) <= 30:
            out.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{color}"/>' for x, y in pts)
        if len(clean) > 1:
            out.append(f'<text x="{right - 4}" y="{top + 14 + 14 * i}" text-anchor="end" fill="{color}" '
                       f'class="legend">{_esc(name)}</text>')
    if marker is not None and _finite(marker[0]) and _finite(marker[1]):
        out.append(f'<circle data-marker="1" cx="{px(marker[0]):.1f}" cy="{py(marker[1]):.1f}" r="6" '
                   'fill="none" stroke="#000" stroke-width="1.5"/>')
    out.append("</svg>")
    return "\n".join(out)


def svg_bars(
    groups: Mapping[str, Mapping[str, float]],
    *,
    title: str,
    ylabel: str,
    width: int = WIDTH,
    height: int = HEIGHT,
) -> str:
    """A grouped bar chart: ``groups[group][series] = value``; one ``<rect data-bar>`` per value.

    Bars start at 0 (values are expected to be non-negative: seconds, metrics, shares).
    """
    cells = [(g, s, float(v)) for g, row in groups.items() for s, v in row.items() if _finite(v)]
    if not cells:
        return ""
    names = list(dict.fromkeys(s for _, s, _ in cells))
    glist = list(dict.fromkeys(g for g, _, _ in cells))
    top_v = max(max(v for _, _, v in cells), 0.0) or 1.0
    left, right, top, bottom = MARGIN["left"], width - MARGIN["right"], MARGIN["top"], height - MARGIN["bottom"]
    slot = (right - left) / len(glist)
    bar_w = slot * 0.8 / len(names)
    out = _frame(title, "", ylabel, width, height)
    out.append(f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" class="plot"/>')
    for t in _ticks(0.0, top_v * 1.05):
        y = bottom - t / (top_v * 1.05) * (bottom - top)
        out.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>')
        out.append(f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end" class="tick">{_fmt(t)}</text>')
    for gi, g in enumerate(glist):
        out.append(f'<text x="{left + slot * (gi + 0.5):.1f}" y="{bottom + 14}" text-anchor="middle" '
                   f'class="tick">{_esc(g)}</text>')
        for si, s in enumerate(names):
            v = groups[g].get(s)
            if not _finite(v):
                continue
            h = max(0.0, float(v)) / (top_v * 1.05) * (bottom - top)
            x = left + slot * gi + slot * 0.1 + bar_w * si
            out.append(
                f'<rect data-bar="{_esc(g)}|{_esc(s)}" data-value="{float(v):.6g}" x="{x:.1f}" y="{bottom - h:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}" fill="{COLORS[si % len(COLORS)]}"><title>{_esc(g)} {_esc(s)}: '
                f"{_fmt(float(v))}</title></rect>"
            )
    if len(names) > 1:
        for si, s in enumerate(names):
            out.append(f'<text x="{right - 4}" y="{top + 14 + 14 * si}" text-anchor="end" '
                       f'fill="{COLORS[si % len(COLORS)]}" class="legend">{_esc(s)}</text>')
    out.append("</svg>")
    return "\n".join(out)


# --------------------------------------------------------------------------- HTML


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return _esc(_fmt(v)) if math.isfinite(v) else "-"
        return _esc("-" if v is None else v)

    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
h1{font-size:1.5em} h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0} td,th{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f4f4f4} td:first-child,th:first-child{text-align:left}
svg .title{font-size:13px;font-weight:600} svg .axis{font-size:11px;fill:#444} svg .tick{font-size:10px;fill:#555}
svg .legend{font-size:11px} svg .plot{fill:none;stroke:#bbb} svg .grid{stroke:#eee}
svg .vline{stroke:#999;stroke-dasharray:4 3} .note{color:#666;font-size:.9em}
"""


def _section_stages(d: RunData) -> str:
    if not d.stage_seconds:
        return ""
    total = d.report.get("seconds")
    rows = [{"stage": k, "seconds": v} for k, v in d.stage_seconds.items()]
    if _finite(total):
        rows.append({"stage": "total (run)", "seconds": float(total)})
    chart = svg_bars({k: {"seconds": v} for k, v in d.stage_seconds.items()}, title="Wall time per stage", ylabel="s")
    return f'<section id="stages"><h2>Stage timings</h2>{_table(rows, ["stage", "seconds"])}{chart}</section>'


def _section_loss(d: RunData) -> str:
    if not d.steps:
        return ""
    pts = [(float(e["step"]), float(e["loss"])) for e in d.steps]
    starts = [float(r["start_step"]) for r in d.rounds if _finite(r.get("start_step")) and r.get("start_step")]
    chart = svg_lines({"loss": pts}, title="MarginMSE training loss", xlabel="step", ylabel="loss", vlines=starts)
    note = "Dashed lines: remining rounds start." if starts else ""
    return f'<section id="loss"><h2>Training loss</h2>{chart}<p class="note">{len(pts)} logged steps. {note}</p></section>'


def _section_rounds(d: RunData) -> str:
    if not d.rounds:
        return ""
    cols = ["round", "start_step", "churn", "remine_seconds", "n_triples", "margin_mean", "margin_std",
            "margin_neg_share", "cache_hit_rate", "cache_misses"]
    cols = [c for c in cols if any(c in r for r in d.rounds)]
    parts = ['<section id="rounds"><h2>Remining rounds</h2>', _table(d.rounds, cols)]
    churn = [(float(r["round"]), float(r["churn"])) for r in d.rounds if _finite(r.get("churn"))]
    if churn:
        parts.append(svg_lines({"churn": churn}, title="Share of negatives replaced per remining round",
                               xlabel="round", ylabel="churn"))
    margins = {name: [(float(r["round"]), float(r[key])) for r in d.rounds if _finite(r.get(key))]
               for name, key in (("margin mean", "margin_mean"), ("margin std", "margin_std"))}
    if any(margins.values()):
        parts.append(svg_lines(margins, title="Teacher margin per round", xlabel="round", ylabel="margin"))
    if not churn:
        parts.append('<p class="note">No remining (plain GPL, or one round): churn is not defined.</p>')
    parts.append("</section>")
    return "".join(parts)


def _section_eval(d: RunData) -> str:
    if not d.eval_table and not d.evals:
        return ""
    parts = ['<section id="eval"><h2>Retrieval quality</h2>']
    if d.eval_table:
        metrics = list(dict.fromkeys(m for row in d.eval_table.values() for m in row))
        rows = [{"system": s, **row} for s, row in d.eval_table.items()]
        parts.append(_table(rows, ["system", *metrics]))
        key = next((m for m in metrics if m.lower().startswith("ndcg")), metrics[0] if metrics else None)
        if key is not None:
            parts.append(svg_bars({s: {key: row[key]} for s, row in d.eval_table.items() if key in row},
                                  title=f"{key}: before (zero-shot, BM25) and after adaptation", ylabel=key))
    else:
        parts.append('<p class="note">No final evaluation: run `rgpl-adapt eval --run RUN --qrels QRELS` '
                     "to add nDCG before/after (eval.json).</p>")
    if d.evals:
        metrics = [m for m in d.evals[0] if m not in ("event", "step") and _finite(d.evals[0][m])]
        series = {m: [(float(e["step"]), float(e[m])) for e in d.evals if _finite(e.get(m))] for m in metrics}
        parts.append(svg_lines(series, title="Periodic evaluation during training", xlabel="step", ylabel="metric"))
    parts.append("</section>")
    return "".join(parts)


def _section_sweep(d: RunData) -> str:
    if not d.sweep:
        return ""
    pts = sorted((float(w), v) for w, v in d.sweep.items())
    chosen = None
    if d.hybrid_weight is not None:
        chosen = next(((w, v) for w, v in pts if abs(w - d.hybrid_weight) < 1e-9), None)
    chart = svg_lines({"MRR@10": pts}, title="Hybrid weight sweep on held-out pseudo queries",
                      xlabel="dense weight (0 = BM25 only, 1 = dense only)", ylabel="MRR@10", marker=chosen)
    note = f"Chosen weight: {_fmt(d.hybrid_weight)}." if d.hybrid_weight is not None else ""
    return f'<section id="sweep"><h2>Hybrid weight</h2>{chart}<p class="note">{note}</p></section>'


def build_report(run_dir: str | os.PathLike) -> str:
    """The HTML text of the report of ``run_dir`` (parts without data are left out and listed)."""
    d = load_run(run_dir)
    sections = {
        "stage timings (report.json)": _section_stages(d),
        "training loss (train/log.jsonl)": _section_loss(d),
        "remining rounds (train/log.jsonl)": _section_rounds(d),
        "evaluation (eval.json: run `rgpl-adapt eval`)": _section_eval(d),
        "hybrid weight sweep (serve stage)": _section_sweep(d),
    }
    missing = [name for name, text in sections.items() if not text]
    cfg = d.config or {}
    facts = {
        "run": str(d.run_dir),
        "student": cfg.get("training", {}).get("student"),
        "teacher": cfg.get("labels", {}).get("teacher"),
        "steps": cfg.get("training", {}).get("steps"),
        "batch size": cfg.get("training", {}).get("batch_size"),
        "remine every": cfg.get("remine", {}).get("every"),
        "device": d.report.get("device"),
    }
    summary = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in facts.items() if v is not None)
    body = [f"<h1>rgpl-adapt run report: {_esc(d.run_dir.name)}</h1>", f"<table>{summary}</table>"]
    body += [text for text in sections.values() if text]
    if missing:
        body.append('<p class="note">Not in this run folder: ' + _esc("; ".join(missing)) + ".</p>")
    if d.problems:
        body.append('<p class="note">Skipped: ' + _esc("; ".join(d.problems)) + ".</p>")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>rgpl-adapt report: {_esc(d.run_dir.name)}</title><style>{CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the report of ``run_dir`` to ``out`` (default ``<run_dir>/report.html``); returns the path."""
    text = build_report(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    log.info("wrote %s", path)
    return path
