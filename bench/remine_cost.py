"""The cost of remining: training wall time and nDCG@10 at several ``--remine-every`` values.

Runs the pipeline once per value of ``--every`` (``0`` = plain GPL, no remining) at equal steps,
batch size, seed and models. The first run generates the queries and mines the initial
negatives; its ``queries/`` and ``negatives/`` stage folders are copied into every other run
folder before that run starts, so the manifests match and those stages are skipped: every run
trains from the same queries and initial negatives. The teacher score cache is *not* shared by
default (each run pays for the pairs it labels, which is part of the cost of remining); pass
``--share-scores`` to share it.

Per run: train stage wall time split into remining (corpus + query encoding and k-NN search),
teacher labelling and the training loop (timed from the progress bars), churn per round, and
nDCG@10 / Recall@100 / MRR@10 of the final model on the BEIR test qrels restricted to the
sub-corpus (exact search, the same evaluation for every run and for the zero-shot student).

``--bf16-check`` also remines once with the zero-shot student in fp32 and under bf16 autocast
and reports both times and the overlap of the two negative pools (what ``autocast_bf16`` in
:func:`rgpl_adapt.remining.remine` would change).

    python bench/remine_cost.py --out runs/bench/remine_cost.json          # CPU, offline models
    python bench/remine_cost.py --scale full --device cuda --every 0,25000,12500 --student ... --teacher ...
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_DATA,
    RecordingProgress,
    Timer,
    evaluate_model,
    format_table,
    machine_info,
    make_sub_corpus,
    offline_models,
    write_json,
)

SHARED = ("queries", "negatives")


def build_config(args: argparse.Namespace, corpus: Path, every: int):
    from rgpl_adapt.config import AdaptConfig

    base = AdaptConfig()
    if args.scale == "cpu":
        base = base.cpu_sized()
    gen = replace(base.generation, model=args.generator, kind=args.generator_kind, seed=args.seed,
                  queries_per_passage=1 if args.scale == "cpu" else None,
                  max_queries=args.passages if args.scale == "cpu" else base.generation.max_queries,
                  batch_size=args.gen_batch_size, max_query_len=32, max_input_len=256)
    return replace(
        base,
        corpus=replace(base.corpus, path=str(corpus)),
        generation=gen,
        mining=replace(base.mining, retrievers=(args.retriever or args.student,), k=args.k),
        labels=replace(base.labels, teacher=args.teacher, kind=args.teacher_kind, max_seq_len=args.teacher_seq_len,
                       batch_size=32),
        training=replace(base.training, student=args.student, steps=args.steps, batch_size=args.batch_size,
                         max_seq_len=args.max_seq_len, warmup_steps=max(1, args.steps // 10), seed=args.seed,
                         checkpoint_every=args.steps, precision="fp32" if args.device == "cpu" else "auto"),
        remine=replace(base.remine, every=every, k=args.k),
        export=replace(base.export, onnx=False),
        device=args.device,
    )


def copy_shared(src: Path, dst: Path, *, scores: bool) -> None:
    """Give run ``dst`` the queries and initial negatives (and optionally teacher scores) of ``src``."""
    dst.mkdir(parents=True, exist_ok=True)
    for stage in SHARED:
        if not (dst / stage).exists():
            shutil.copytree(src / stage, dst / stage)
    if scores and (src / "train" / "scores.jsonl").exists() and not (dst / "train" / "scores.jsonl").exists():
        (dst / "train").mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / "train" / "scores.jsonl", dst / "train" / "scores.jsonl")


def run_one(cfg, run_dir: Path) -> dict[str, Any]:
    from rgpl_adapt.pipeline import Pipeline

    rec = RecordingProgress()
    with Timer() as t:
        report = Pipeline(cfg, run_dir, progress=rec).run().report
    train = report["stages"].get("train", {})
    rounds = train.get("rounds") or []
    return {
        "remine_every": cfg.remine.every,
        "wall_s": t.seconds,
        "train_s": train.get("seconds"),
        "remine_s": rec.seconds("remine"),
        "label_s": rec.seconds("teacher scores"),
        # the "training" bar also spans labelling and remining: time the loop from its step rate
        "loop_s": cfg.training.steps / rec.rate("training") if rec.rate("training") else float("nan"),
        "pairs_scored": rec.count("teacher scores"),
        "rounds": len(rounds),
        "churn": [r.get("churn") for r in rounds if r.get("churn") is not None],
        "round_stats": rounds,
        "stage_seconds": {k: v.get("seconds") for k, v in report["stages"].items() if isinstance(v, dict)},
        "final_loss": train.get("final_loss"),
    }


def bf16_check(run_dir: Path, student: str, k: int, max_seq_len: int, device: str) -> dict[str, Any]:
    """Remine with the zero-shot student in fp32 and in bf16 autocast; times and pool overlap."""
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_adapt.pipeline import open_embedded
    from rgpl_adapt.records import GeneratedQuery, read_jsonl
    from rgpl_adapt.remining import remine

    backend = open_embedded(run_dir)
    docs = list(backend.iter_documents())
    queries = list(read_jsonl(run_dir / "queries" / "queries.jsonl", GeneratedQuery))
    model = load_sentence_transformer(student, device, max_seq_len)
    out: dict[str, Any] = {"documents": len(docs), "queries": len(queries), "k": k}
    pools = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        with Timer() as t:
            res = remine(model, backend, queries, [d.id for d in docs], [d.full_text() for d in docs],
                         round_index=90 + int(bf16), k=k, autocast_bf16=bf16)
        out[f"{name}_s"] = t.seconds
        pools[name] = {p.qid: p.all_ids() for p in res.pools}
    same = [len(set(pools["fp32"][q]) & set(pools["bf16"][q])) / max(1, len(pools["fp32"][q])) for q in pools["fp32"]]
    top1 = [pools["fp32"][q][:1] == pools["bf16"][q][:1] for q in pools["fp32"]]
    out.update(speedup=out["fp32_s"] / out["bf16_s"], topk_overlap=sum(same) / len(same),
               top1_agreement=sum(top1) / len(top1))
    backend.close()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from rgpl_adapt.config import DEFAULT_GENERATOR, DEFAULT_STUDENT, DEFAULT_TEACHER

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--work", type=Path, default=Path("runs/bench-remine"))
    p.add_argument("--out", type=Path, default=None, help="JSON (default: <work>/remine_cost.json)")
    p.add_argument("--scale", choices=["cpu", "full"], default="cpu")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--student")
    p.add_argument("--retriever", help="initial negatives miner (default: the student)")
    p.add_argument("--teacher")
    p.add_argument("--teacher-kind", default=None, choices=["auto", "cross-encoder", "bi-encoder"])
    p.add_argument("--teacher-seq-len", type=int, default=128)
    p.add_argument("--generator")
    p.add_argument("--generator-kind", default="auto", choices=["auto", "seq2seq", "causal"])
    p.add_argument("--docs", type=int, default=None, help="sub-corpus size (cpu: 400; 0 = all)")
    p.add_argument("--passages", type=int, default=16, help="passages that get a query (cpu scale)")
    p.add_argument("--gen-batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="training steps (cpu: 16)")
    p.add_argument("--batch-size", type=int, default=None, help="cpu: 8")
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--k", type=int, default=10, help="negatives per source and per remining")
    p.add_argument("--every", default=None, help="comma-separated remine periods (default 0,steps/2,steps/4)")
    p.add_argument("--share-scores", action="store_true", help="share the teacher score cache between runs")
    p.add_argument("--bf16-check", action="store_true", help="also compare fp32 and bf16 remining")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--fresh", action="store_true", help="delete the run folders first")
    args = p.parse_args(argv)
    if args.scale == "cpu":
        if not (args.student and args.teacher and args.generator):
            models = offline_models(args.cache)
            args.student = args.student or models["student"]
            args.teacher = args.teacher or models["teacher"]
            args.generator = args.generator or models["generator"]
        args.teacher_kind = args.teacher_kind or "bi-encoder"
        args.docs = 400 if args.docs is None else args.docs
        args.steps = args.steps or 16
        args.batch_size = args.batch_size or 8
    else:
        args.student = args.student or DEFAULT_STUDENT
        args.teacher = args.teacher or DEFAULT_TEACHER
        args.generator = args.generator or DEFAULT_GENERATOR
        args.teacher_kind = args.teacher_kind or "auto"
        args.docs = 0 if args.docs is None else args.docs
        args.steps = args.steps or 140_000
        args.batch_size = args.batch_size or 32
    if args.every is None:
        args.every = f"0,{max(1, args.steps // 2)},{max(1, args.steps // 4)}"
    args.out = args.out or args.work / "remine_cost.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    periods = [int(x) for x in args.every.split(",") if x.strip()]
    work = args.work.resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    sub = make_sub_corpus(args.data.resolve(), work / "data", args.docs, args.seed)
    print(sub.note, flush=True)
    before = machine_info()
    runs: dict[str, dict[str, Any]] = {}
    first: Path | None = None
    for every in periods:
        run_dir = work / f"every-{every}"
        if first is not None:
            copy_shared(first, run_dir, scores=args.share_scores)
        print(f"run remine_every={every} ...", flush=True)
        runs[str(every)] = run_one(build_config(args, sub.path / "corpus.jsonl", every), run_dir)
        first = first or run_dir
    assert first is not None
    metrics = {"zero-shot": evaluate_model(args.student, sub.path, sub.qrels, sub.queries, max_seq_len=args.max_seq_len)}
    for every, r in runs.items():
        metrics[every] = evaluate_model(work / f"every-{every}" / "train" / "final", sub.path, sub.qrels, sub.queries,
                                        max_seq_len=args.max_seq_len)
        r.update(metrics[every])
    result: dict[str, Any] = {"benchmark": "remine_cost", "corpus": sub.note, "scale": args.scale,
                              "models": {"student": args.student, "teacher": args.teacher, "generator": args.generator},
                              "steps": args.steps, "batch_size": args.batch_size, "shared": list(SHARED)
                              + (["train/scores.jsonl"] if args.share_scores else []),
                              "runs": runs, "zero_shot": metrics["zero-shot"], "machine_before": before}
    if args.bf16_check:
        result["bf16_remine"] = bf16_check(first, args.student, args.k, args.max_seq_len, args.device)
    result["machine_after"] = machine_info()
    base = runs[str(periods[0])]
    rows = [{"remine every": "zero-shot", **{k: metrics["zero-shot"].get(k) for k in ("ndcg@10", "recall@100")}}]
    for every, r in runs.items():
        rows.append({"remine every": "0 (GPL)" if every == "0" else every, "rounds": r["rounds"],
                     "train s": r["train_s"], "vs first": (r["train_s"] or 0) / max(base["train_s"] or 1e-9, 1e-9),
                     "remine s": r["remine_s"], "label s": r["label_s"], "loop s": r["loop_s"],
                     "pairs": r["pairs_scored"], "ndcg@10": r["ndcg@10"], "recall@100": r["recall@100"],
                     "churn": ", ".join(f"{c:.2f}" for c in r["churn"]) or "-"})
    print(f"\n{sub.note}; {args.steps} steps at batch {args.batch_size}; load average before {before['loadavg']}, "
          f"after {result['machine_after']['loadavg']}")
    print(format_table(rows, ["remine every", "rounds", "train s", "vs first", "remine s", "label s", "loop s", "pairs",
                              "ndcg@10", "recall@100", "churn"]))
    if "bf16_remine" in result:
        b = result["bf16_remine"]
        print(f"\nremining with bf16 autocast: {b['fp32_s']:.1f} s fp32 vs {b['bf16_s']:.1f} s bf16 "
              f"({b['speedup']:.2f}x); top-{b['k']} overlap {b['topk_overlap']:.3f}, top-1 agreement {b['top1_agreement']:.3f}")
    write_json(args.out, {**result, "table": rows})
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
