"""Shared helpers of the benchmarks: timing, peak memory, isolation, tables, JSON, data, models.

Each bench script puts this folder on ``sys.path`` and imports from here. Nothing here prints;
the scripts print the tables these functions format.

Peak memory: :func:`run_isolated` runs one measurement in a fresh *spawned* process and reports
that process's ``ru_maxrss`` (its own high-water mark, clean of what earlier stages loaded). Run
in-process (``isolate=False``, used by the smoke tests) it reports the parent's high-water mark
so far, which only ever grows: the JSON says which (``rss_kind``).
"""

from __future__ import annotations

import json
import multiprocessing
import os
import platform
import random
import resource
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "scifact"
PREPARED_MODELS = Path("/tmp/rgpl_models")


# --------------------------------------------------------------------------- machine, time, memory


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.split(":", 1)[-1].split())


def machine_info() -> dict[str, Any]:
    """Platform, CPU count, load average (1, 5, 15 min), torch version/threads, bf16 support."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "avx512_bf16": "avx512_bf16" in cpu_flags(),
        "amx_bf16": "amx_bf16" in cpu_flags(),
    }
    try:
        import torch

        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads(), cuda=torch.cuda.is_available())
    except ImportError:  # pragma: no cover
        pass
    return info


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass
class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    seconds: float = 0.0
    _t0: float = field(default=0.0, repr=False)

    def __enter__(self) -> Timer:
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


def latency_stats(ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(ms, dtype=np.float64)
    return {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)),
            "mean_ms": float(a.mean()), "n": int(a.size)}


def _child(fn: Callable[..., dict[str, Any]], args: tuple, queue: Any) -> None:
    try:
        out = fn(*args)
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        queue.put(("ok", out))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which raises
        import traceback

        queue.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def run_isolated(fn: Callable[..., dict[str, Any]], *args: Any, isolate: bool = True) -> dict[str, Any]:
    """``fn(*args)`` (a dict of results) plus ``peak_rss_mb`` and ``rss_kind``.

    ``isolate=True``: in a spawned process (``fn`` must be a module-level function of an
    importable module or of the ``__main__`` script); the peak is that process's own.
    """
    if not isolate:
        out = fn(*args)
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        out["rss_kind"] = "process peak so far (not isolated)"
        return out
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    status, payload = queue.get()
    proc.join()
    if status != "ok":
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} failed in its subprocess: {payload}")
    payload["rss_kind"] = "peak of a fresh process for this stage alone"
    return payload


class RecordingProgress:
    """A progress factory that records, per ``desc``, when a bar opened and closed and its updates.

    Pass it where the library takes ``progress=``; ``spans[desc]`` is a list of
    ``{"start", "end", "count", "updates": [(t, n), ...]}``.
    """

    def __init__(self) -> None:
        self.spans: dict[str, list[dict[str, Any]]] = {}

    @contextmanager
    def __call__(self, total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[Any]:
        span: dict[str, Any] = {"start": time.perf_counter(), "end": None, "count": 0, "total": total, "updates": []}
        self.spans.setdefault(desc, []).append(span)

        class _Bar:
            def update(self, n: int = 1) -> None:
                span["count"] += n
                span["updates"].append((time.perf_counter(), n))

            def set_postfix(self, **values: object) -> None:
                pass

        try:
            yield _Bar()
        finally:
            span["end"] = time.perf_counter()

    def seconds(self, prefix: str) -> float:
        """Total open time of the bars whose desc starts with ``prefix``."""
        return sum(s["end"] - s["start"] for d, spans in self.spans.items() if d.startswith(prefix)
                   for s in spans if s["end"] is not None)

    def count(self, prefix: str) -> int:
        return sum(s["count"] for d, spans in self.spans.items() if d.startswith(prefix) for s in spans)

    def rate(self, desc: str) -> float | None:
        """Steady-state updates per second of ``desc`` (first update to last, the first excluded)."""
        ups = [u for s in self.spans.get(desc, []) for u in s["updates"]]
        if len(ups) < 2:
            return None
        dt = ups[-1][0] - ups[0][0]
        return sum(n for _, n in ups[1:]) / dt if dt > 0 else None


# --------------------------------------------------------------------------- output


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, digits: int = 3) -> str:
    """A plain-text table (first column left-aligned, the rest right-aligned)."""

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            if not np.isfinite(v):
                return "-"
            return f"{v:,.{digits}f}" if abs(v) < 1e6 else f"{v:.3g}"
        return str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(columns, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- data


@dataclass
class SubCorpus:
    """A BEIR sub-corpus written to ``path`` (a BEIR folder) with its restricted test qrels."""

    path: Path
    doc_ids: list[str]
    qrels: dict[str, dict[str, int]]
    queries: dict[str, str]
    note: str


def read_beir_records(data: Path) -> dict[str, dict[str, Any]]:
    """``{doc_id: record}`` of a BEIR ``corpus.jsonl``, records kept as they are."""
    out: dict[str, dict[str, Any]] = {}
    with open(data / "corpus.jsonl", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                rec = json.loads(line)
                out[str(rec["_id"])] = rec
    return out


def make_sub_corpus(data: Path, out: Path, size: int, seed: int = 42, split: str = "test") -> SubCorpus:
    """Every document judged relevant for a ``split`` query plus a seeded sample of the rest, up to
    ``size`` (``<= 0``: all), written as ``out/corpus.jsonl`` (+ queries.jsonl, qrels/<split>.tsv)."""
    from rgpl_adapt.evaluation import load_qrels, load_queries

    records = read_beir_records(data)
    qrels_all = load_qrels(data / "qrels" / f"{split}.tsv")
    queries_all = load_queries(data / "queries.jsonl")
    judged = {d for rels in qrels_all.values() for d, r in rels.items() if r > 0 and d in records}
    if 0 < size < len(records):
        rest = sorted(set(records) - judged)
        keep = judged | set(random.Random(seed).sample(rest, max(0, min(len(rest), size - len(judged)))))
    else:
        keep = set(records)
    ids = [d for d in records if d in keep]
    qrels = {q: {d: r for d, r in rels.items() if d in keep} for q, rels in qrels_all.items()}
    qrels = {q: rels for q, rels in qrels.items() if any(r > 0 for r in rels.values()) and q in queries_all}
    queries = {q: queries_all[q] for q in qrels}
    out.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(records[d], ensure_ascii=False) + "\n" for d in ids)
    target = out / "corpus.jsonl"
    if not target.exists() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in queries.items()))
    (out / "qrels").mkdir(exist_ok=True)
    (out / "qrels" / f"{split}.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{r}\n" for q, rels in qrels.items() for d, r in rels.items())
    )
    note = (f"sub-corpus of {len(ids)} of {len(records)} documents ({len(judged)} judged relevant + a seeded sample); "
            f"{len(queries)} {split} queries" if len(ids) < len(records) else f"whole corpus ({len(ids)} documents)")
    return SubCorpus(path=out, doc_ids=ids, qrels=qrels, queries=queries, note=note)


def evaluate_model(
    model_path: str | os.PathLike,
    corpus_path: Path,
    qrels: dict[str, dict[str, int]],
    queries: dict[str, str],
    *,
    max_seq_len: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """nDCG@10, Recall@100, MRR@10 of a sentence-transformers folder: exact dot-product search
    over ``corpus_path`` (a BEIR corpus.jsonl folder), the same way for every system compared."""
    from rgpl_adapt.encoding import encode_texts
    from rgpl_adapt.evaluation import evaluate
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_plugin.vectors import exact_topk

    docs = [json.loads(line) for line in open(corpus_path / "corpus.jsonl", encoding="utf-8") if line.strip()]
    texts = [f"{d.get('title', '')} {d['text']}".strip() if d.get("title") else d["text"] for d in docs]
    model = load_sentence_transformer(str(model_path), "cpu", max_seq_len)
    dvec = encode_texts(model, texts, batch_size)
    qids = [q for q in queries if q in qrels]
    qvec = encode_texts(model, [queries[q] for q in qids], batch_size)
    rows, scores = exact_topk(dvec, qvec, 100)
    results = {q: {str(docs[r]["_id"]): float(s) for r, s in zip(rows[i], scores[i])} for i, q in enumerate(qids)}
    return evaluate(results, qrels)


# --------------------------------------------------------------------------- models


def model_cache(cache: str | os.PathLike | None) -> Path | None:
    """``cache`` if given, else the prepared copies in /tmp/rgpl_models when present (else default)."""
    if cache is not None:
        return Path(cache)
    if (PREPARED_MODELS / "all-mpnet-base-v2").exists():
        return PREPARED_MODELS
    return None


def offline_models(cache: str | os.PathLike | None = None) -> dict[str, str]:
    """Local paths of the packaged models: ``student`` (MiniLM), ``teacher`` (mpnet), ``generator`` (Gemma)."""
    from rgpl_adapt import offline

    c = model_cache(cache)
    return {"student": str(offline.minilm_path()), "teacher": str(offline.mpnet_path(c)),
            "generator": str(offline.gemma_path(c))}


def build_cross_encoder_from(bi_encoder: str | os.PathLike, out: Path, seed: int = 0) -> Path:
    """A cross-encoder folder (BertForSequenceClassification, one label) whose encoder weights are
    those of ``bi_encoder``'s transformer and whose head is seeded random.

    No MS MARCO cross-encoder can be had offline; this one has the same architecture and size as
    cross-encoder/ms-marco-MiniLM-L-6-v2 when built from all-MiniLM-L6-v2, so its *speed* is
    that of the paper's teacher, while its scores carry no relevance training. The config names
    the identity activation, so sentence-transformers (any version) returns raw logits.
    """
    if (out / "config.json").exists():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    src = Path(bi_encoder)
    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(src, num_labels=1)
    cfg.sbert_ce_default_activation_function = "torch.nn.modules.linear.Identity"
    model = AutoModelForSequenceClassification.from_pretrained(src, config=cfg)
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(src).save_pretrained(tmp)
    os.replace(tmp, out)
    return out
