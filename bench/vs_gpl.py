"""Equal-work comparison with the reference GPL implementation (``gpl==0.1.4``, UKPLab).

Both sides get the same sub-corpus, the same generated queries, the same models (local paths),
the same number of negatives, steps, batch size, sequence length, warm-up and seed:

1. rgpl-adapt runs its pipeline with remining off (``remine.every = 0``: plain GPL), generating
   the queries (generation is not compared: GPL is handed ours).
2. Our *training* queries (the pipeline holds a few out to choose the hybrid weight) are written
   in GPL's BeIR-QGen layout: ``corpus.jsonl``, ``qgen-queries.jsonl``, ``qgen-qrels/train.tsv``.
3. GPL runs in its own virtual environment (``--venv``, created by this script with the pins
   gpl 0.1.4 needs: torch==2.13.0, transformers==4.44.2, sentence-transformers==2.7.0,
   tokenizers<0.20, datasets<3, nltk). A small driver calls GPL's own stages in the order and with
   the arguments of ``gpl.train``: ``NegativeMiner(...).run()``, ``PseudoLabeler(...).run()``, then
   ``load_sbert`` + ``GenerativePseudoLabelingDataset`` + ``MarginDistillationLoss`` + ``model.fit``,
   timing each. Nothing in gpl is patched.
4. Both final models are evaluated the same way (exact dot-product search over the sub-corpus,
   BEIR test qrels restricted to it): nDCG@10, Recall@100, MRR@10.

What cannot be compared, and why (also in the JSON, ``not_compared``):

* BM25 negatives: GPL's BM25 miner starts an Elasticsearch it downloads at run time
  (easy-elasticsearch); offline it cannot run, so both sides mine with the dense retriever only.
* The teacher: GPL needs a cross-encoder and none can be had offline (no MS MARCO cross-encoder on
  PyPI). Both sides use the same local cross-encoder built from all-MiniLM-L6-v2's encoder with a
  seeded random one-logit head: the architecture and size of cross-encoder/ms-marco-MiniLM-L-6-v2,
  so labelling *speed* is comparable, but its margins carry no relevance training, so the nDCG
  of both adapted models says whether the two implementations agree, not how good GPL is.
  ``--teacher PATH`` gives a real cross-encoder where one exists.
* The warm-up: ``gpl.train`` hard-codes 1000 warm-up steps; at CPU scale (tens of steps) that
  would keep the learning rate near 0, so the driver passes ours (``steps // 10``) to ``fit``.
* Query generation: GPL is handed our queries (its own needs a doc2query T5 from the hub).

    python bench/vs_gpl.py --out runs/bench/vs_gpl.json          # CPU minutes, offline models
    python bench/vs_gpl.py --scale full --device cuda --teacher cross-encoder/ms-marco-MiniLM-L-6-v2 ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_DATA,
    RecordingProgress,
    Timer,
    build_cross_encoder_from,
    evaluate_model,
    format_table,
    machine_info,
    make_sub_corpus,
    offline_models,
    write_json,
)

GPL_PINS = ("gpl==0.1.4", "torch==2.13.0", "transformers==4.44.2", "sentence-transformers==2.7.0",
            "tokenizers<0.20", "datasets<3", "nltk")
NOT_COMPARED = {
    "bm25_negatives": "GPL's BM25 miner downloads and starts Elasticsearch at run time; offline both sides mine "
                      "with the dense retriever only",
    "teacher": "no MS MARCO cross-encoder offline: both sides use all-MiniLM-L6-v2's encoder with a seeded random "
               "one-logit head (same size as ms-marco-MiniLM-L-6-v2: speeds compare, margins are not trained)",
    "warmup": "gpl.train hard-codes warmup_steps=1000; the driver passes ours (steps // 10) to model.fit",
    "query_generation": "GPL is handed our generated queries (its generator is a hub doc2query T5)",
}

DRIVER = r'''
"""Runs gpl 0.1.4's stages as gpl.train does, timing each; prints one JSON line."""
import json, os, random, sys, time
a = json.loads(sys.argv[1])
t0 = time.perf_counter()
import numpy as np, torch
from torch.utils.data import DataLoader
from beir.datasets.data_loader import GenericDataLoader
from gpl.toolkit import (NegativeMiner, PseudoLabeler, GenerativePseudoLabelingDataset,
                         MarginDistillationLoss, load_sbert)
random.seed(a["seed"]); np.random.seed(a["seed"]); torch.manual_seed(a["seed"])
out = {"import_s": time.perf_counter() - t0}
path = a["data"]
corpus, gen_queries, gen_qrels = GenericDataLoader(path, prefix="qgen").load(split="train")
out["queries"] = len(gen_queries)
t = time.perf_counter()
NegativeMiner(path, "qgen", retrievers=[a["retriever"]], retriever_score_functions=["cos_sim"],
              nneg=a["k"]).run()
out["negatives_s"] = time.perf_counter() - t
t = time.perf_counter()
PseudoLabeler(path, gen_queries, corpus, a["steps"], a["batch_size"], a["teacher"], a["max_seq_len"]).run()
out["labels_s"] = time.perf_counter() - t
out["pairs_scored"] = 2 * a["steps"] * a["batch_size"]
t = time.perf_counter()
model = load_sbert(a["student"], None, a["max_seq_len"])
ds = GenerativePseudoLabelingDataset(os.path.join(path, "gpl-training-data.tsv"), gen_queries, corpus)
dl = DataLoader(ds, shuffle=False, batch_size=a["batch_size"], drop_last=True)
loss = MarginDistillationLoss(model=model, similarity_fct="dot")
t_fit = time.perf_counter()
model.fit([(dl, loss)], epochs=1, steps_per_epoch=a["steps"], warmup_steps=a["warmup"],
          checkpoint_save_steps=10**9, checkpoint_save_total_limit=10000, output_path=a["output"],
          checkpoint_path=a["output"], use_amp=False)
out["train_s"] = time.perf_counter() - t
out["fit_s"] = time.perf_counter() - t_fit
out["device"] = str(model.device)
print("GPL-RESULT " + json.dumps(out))
'''


def ensure_venv(venv: Path) -> Path:
    """The venv's python with gpl 0.1.4 importable; created (pip from PyPI) when missing."""
    py = venv / "bin" / "python"
    check = [str(py), "-c", "import gpl, sentence_transformers as s; assert s.__version__ == '2.7.0'"]
    if py.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return py
    print(f"creating {venv} with {' '.join(GPL_PINS)} (a few minutes) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "-q", *GPL_PINS], check=True)
    if subprocess.run(check, capture_output=True).returncode != 0:
        raise SystemExit(f"gpl 0.1.4 does not import in {venv}; see `{py} -c 'import gpl'`")
    return py


def our_config(args: argparse.Namespace, corpus: Path):
    from rgpl_adapt.config import AdaptConfig

    base = AdaptConfig()
    if args.scale == "cpu":
        base = base.cpu_sized()
    return replace(
        base,
        corpus=replace(base.corpus, path=str(corpus)),
        generation=replace(base.generation, model=args.generator, kind=args.generator_kind, seed=args.seed,
                           queries_per_passage=1 if args.scale == "cpu" else None,
                           max_queries=args.passages if args.scale == "cpu" else base.generation.max_queries,
                           batch_size=args.gen_batch_size, max_query_len=32, max_input_len=256),
        mining=replace(base.mining, retrievers=(args.retriever,), bm25=False, k=args.k, max_seq_len=args.max_seq_len),
        labels=replace(base.labels, teacher=args.teacher, kind="cross-encoder", max_seq_len=2 * args.max_seq_len,
                       batch_size=32),
        training=replace(base.training, student=args.student, steps=args.steps, batch_size=args.batch_size,
                         max_seq_len=args.max_seq_len, warmup_steps=args.warmup, seed=args.seed,
                         checkpoint_every=args.steps, similarity="dot",
                         precision="fp32" if args.device == "cpu" else "auto"),
        remine=replace(base.remine, every=0, k=args.k),
        export=replace(base.export, onnx=False),
        device=args.device,
    )


def write_gpl_data(dst: Path, corpus_file: Path, queries) -> None:
    """GPL's BeIR-QGen layout: corpus.jsonl, qgen-queries.jsonl, qgen-qrels/train.tsv."""
    if dst.exists():
        shutil.rmtree(dst)  # GPL skips stages whose output exists: start clean
    (dst / "qgen-qrels").mkdir(parents=True)
    shutil.copy2(corpus_file, dst / "corpus.jsonl")
    with open(dst / "qgen-queries.jsonl", "w", encoding="utf-8") as fh:
        for q in queries:
            fh.write(json.dumps({"_id": q.qid, "text": q.text, "metadata": {}}, ensure_ascii=False) + "\n")
    with open(dst / "qgen-qrels" / "train.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        fh.writelines(f"{q.qid}\t{q.doc_id}\t1\n" for q in queries)


def run_gpl(py: Path, data: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    script = data.parent / "gpl_driver.py"
    script.write_text(DRIVER)
    if out.exists():
        shutil.rmtree(out)
    payload = {"data": str(data), "output": str(out), "retriever": args.retriever, "teacher": args.teacher,
               "student": args.student, "k": args.k, "steps": args.steps, "batch_size": args.batch_size,
               "max_seq_len": args.max_seq_len, "warmup": args.warmup, "seed": args.seed}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    with Timer() as t:
        proc = subprocess.run([str(py), str(script), json.dumps(payload)], env=env, capture_output=True, text=True)
    (data.parent / "gpl.log").write_text(proc.stdout + "\n" + proc.stderr)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("GPL-RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"GPL failed (exit {proc.returncode}); its output is in {data.parent / 'gpl.log'}:\n"
                         + proc.stderr[-3000:])
    res = json.loads(line[len("GPL-RESULT "):])
    res["process_s"] = t.seconds
    return res


def run_ours(cfg, run_dir: Path) -> tuple[dict[str, Any], list]:
    from rgpl_adapt.pipeline import Pipeline
    from rgpl_adapt.records import GeneratedQuery, read_jsonl

    for stage in ("negatives", "train", "export", "serve"):  # timed afresh; queries are kept
        shutil.rmtree(run_dir / stage, ignore_errors=True)
    from rgpl_adapt import labeling

    rec = RecordingProgress()
    pipe = Pipeline(cfg, run_dir, progress=rec)
    # The trainer loads the teacher lazily inside the train stage; GPL loads it in its labelling
    # stage. Time the load (bench-only wrapper) so it counts as labelling on both sides.
    load_teacher, loads = labeling.load_teacher, []

    def timed_load(*a: Any, **kw: Any) -> Any:
        with Timer() as tt:
            teacher = load_teacher(*a, **kw)
        loads.append(tt.seconds)
        return teacher

    labeling.load_teacher = timed_load
    try:
        with Timer() as t:
            report = pipe.run().report
    finally:
        labeling.load_teacher = load_teacher
    st = report["stages"]
    queries = list(read_jsonl(run_dir / "queries" / "queries.jsonl", GeneratedQuery))
    train_q, _ = pipe._split(queries)
    res = {
        "queries_s": st.get("queries", {}).get("seconds", 0.0),
        "negatives_s": st["negatives"]["seconds"],
        "labels_s": rec.seconds("teacher scores") + sum(loads),
        "teacher_load_s": sum(loads),
        "pairs_scored": rec.count("teacher scores"),
        "train_stage_s": st["train"]["seconds"],
        # the "training" bar also spans round 0's labelling: time the loop from its step rate
        "loop_s": cfg.training.steps / rec.rate("training") if rec.rate("training") else float("nan"),
        "export_serve_s": st["export"]["seconds"] + st["serve"]["seconds"],
        "process_s": t.seconds,
        "queries": len(train_q),
    }
    res["train_s"] = res["train_stage_s"] - res["labels_s"]  # model load + loop + save, as GPL's "train"
    return res, train_q


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--work", type=Path, default=Path("runs/bench-vs-gpl"))
    p.add_argument("--out", type=Path, default=None, help="JSON (default: <work>/vs_gpl.json)")
    p.add_argument("--venv", type=Path, default=Path("/tmp/gpl-venv"), help="GPL's virtual environment")
    p.add_argument("--scale", choices=["cpu", "full"], default="cpu")
    p.add_argument("--cache", type=Path, default=None)
    p.add_argument("--student", help="default: packaged all-MiniLM-L6-v2")
    p.add_argument("--retriever", help="negative miner (default: the student)")
    p.add_argument("--teacher", help="a cross-encoder folder (default: built from MiniLM, random head)")
    p.add_argument("--generator", help="default: packaged Gemma-3-270M")
    p.add_argument("--generator-kind", default="auto", choices=["auto", "seq2seq", "causal"])
    p.add_argument("--docs", type=int, default=None, help="sub-corpus size (cpu 500, full 0 = all)")
    p.add_argument("--passages", type=int, default=32, help="passages that get a query (cpu scale)")
    p.add_argument("--gen-batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=None, help="cpu 20, full 140000")
    p.add_argument("--batch-size", type=int, default=None, help="cpu 8, full 32")
    p.add_argument("--max-seq-len", type=int, default=None, help="cpu 128, full 350")
    p.add_argument("--k", type=int, default=None, help="negatives per query (cpu 10, full 50)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=42)
    args = p.parse_args(argv)
    cpu = args.scale == "cpu"
    args.docs = (500 if cpu else 0) if args.docs is None else args.docs
    args.steps = args.steps or (20 if cpu else 140_000)
    args.batch_size = args.batch_size or (8 if cpu else 32)
    args.max_seq_len = args.max_seq_len or (128 if cpu else 350)
    args.k = args.k or (10 if cpu else 50)
    args.warmup = max(1, min(1000, args.steps // 10))
    if not (args.student and args.generator):
        models = offline_models(args.cache)
        args.student = args.student or models["student"]
        args.generator = args.generator or models["generator"]
    args.retriever = args.retriever or args.student
    args.out = args.out or args.work / "vs_gpl.json"
    return args


def main(argv: list[str] | None = None, *, gpl_runner: Any = None) -> dict[str, Any]:
    """``gpl_runner(data_dir, model_out_dir, args) -> timings`` replaces the GPL venv run (tests)."""
    args = parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if gpl_runner is None:
        py = ensure_venv(args.venv)

        def gpl_runner(data: Path, out: Path, a: argparse.Namespace) -> dict[str, Any]:
            return run_gpl(py, data, out, a)
    sub = make_sub_corpus(args.data.resolve(), work / "data", args.docs, args.seed)
    print(sub.note, flush=True)
    built_teacher = args.teacher is None
    if built_teacher:
        args.teacher = str(build_cross_encoder_from(args.student, work / "teacher-ce", seed=args.seed))
    before = machine_info()
    print("rgpl-adapt (remining off) ...", flush=True)
    ours, train_q = run_ours(our_config(args, sub.path / "corpus.jsonl"), work / "ours")
    write_gpl_data(work / "gpl" / "data", sub.path / "corpus.jsonl", train_q)
    print(f"gpl 0.1.4 on the same {len(train_q)} queries ...", flush=True)
    theirs = gpl_runner(work / "gpl" / "data", work / "gpl" / "model", args)
    quality = {
        "zero-shot": evaluate_model(args.student, sub.path, sub.qrels, sub.queries, max_seq_len=args.max_seq_len),
        "rgpl-adapt": evaluate_model(work / "ours" / "train" / "final", sub.path, sub.qrels, sub.queries,
                                     max_seq_len=args.max_seq_len),
        "gpl 0.1.4": evaluate_model(work / "gpl" / "model", sub.path, sub.qrels, sub.queries,
                                    max_seq_len=args.max_seq_len),
    }
    after = machine_info()
    rows = []
    for label, key in (("negative mining", "negatives_s"), ("pseudo-labelling", "labels_s"), ("training", "train_s")):
        rows.append({"stage": label, "rgpl-adapt s": ours[key], "gpl s": theirs[key], "ours/gpl": ours[key] / theirs[key]})
    tot_o = sum(ours[k] for k in ("negatives_s", "labels_s", "train_s"))
    tot_g = sum(theirs[k] for k in ("negatives_s", "labels_s", "train_s"))
    rows.append({"stage": "total (these stages)", "rgpl-adapt s": tot_o, "gpl s": tot_g, "ours/gpl": tot_o / tot_g})
    rows.append({"stage": "  of which the step loop", "rgpl-adapt s": ours["loop_s"], "gpl s": theirs["fit_s"],
                 "ours/gpl": ours["loop_s"] / theirs["fit_s"]})
    rows.append({"stage": "teacher pairs scored", "rgpl-adapt s": float(ours["pairs_scored"]),
                 "gpl s": float(theirs["pairs_scored"]), "ours/gpl": ours["pairs_scored"] / theirs["pairs_scored"]})
    qrows = [{"system": k, **v} for k, v in quality.items()]
    result = {
        "benchmark": "vs_gpl", "corpus": sub.note, "scale": args.scale,
        "settings": {"steps": args.steps, "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "k": args.k,
                     "warmup": args.warmup, "seed": args.seed, "queries": len(train_q), "device": args.device},
        "models": {"student": args.student, "retriever": args.retriever, "teacher": args.teacher,
                   "teacher_note": NOT_COMPARED["teacher"] if built_teacher else "given", "generator": args.generator},
        "gpl_env": {"venv": str(args.venv), "pins": list(GPL_PINS)},
        "ours": ours, "gpl": theirs, "quality": quality, "not_compared": NOT_COMPARED,
        "not_in_gpl": {"query_generation_s": ours["queries_s"], "export_serve_s": ours["export_serve_s"]},
        "machine_before": before, "machine_after": after,
    }
    print(f"\n{sub.note}; {len(train_q)} training queries, {args.steps} steps at batch {args.batch_size}, "
          f"max_seq_len {args.max_seq_len}, k {args.k}; load average before {before['loadavg']}, after {after['loadavg']}")
    print(format_table(rows, ["stage", "rgpl-adapt s", "gpl s", "ours/gpl"], digits=2))
    print()
    print(format_table(qrows, ["system", "ndcg@10", "recall@100", "mrr@10"], digits=4))
    print("\nnot compared: " + "; ".join(f"{k}: {v}" for k, v in NOT_COMPARED.items()))
    write_json(args.out, {**result, "table": rows, "quality_table": qrows})
    print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
