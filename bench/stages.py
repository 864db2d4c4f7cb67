"""Stage throughput of the pipeline on a BEIR folder, each stage with its own peak memory.

Measures, with the models given by flags (default: the packaged offline models on CPU, a
sub-corpus of SciFact):

* index: documents indexed/s (tantivy + SQLite);
* queries: pseudo queries generated/s (``--generator none`` makes synthetic queries instead);
* negatives: queries mined/s through the embedded backend, exact k-NN and HNSW (usearch, by
  opening the index with ``hnsw_threshold=0``), BM25 + one dense retriever, split into corpus
  encoding, BM25 and k-NN time;
* labels: teacher pairs scored/s with a cold score cache, and triples labelled/s with it warm
  (what a remining round pays for pairs it has already seen);
* train: MarginMSE steps/s of the real trainer (fp32, and bf16 autocast on CPU), timed between
  the first and last step, so model loading and labelling are excluded;
* encode: corpus docs/s with torch fp32, torch bf16 autocast, ONNX fp32 and ONNX int8, with the
  mean cosine of each to torch fp32;
* vectors: vectors written/s (``put_vectors``), and with the merge done by the first search;
* search: single-query latency p50/p99 of BM25, exact k-NN, hybrid (exact) and hybrid (HNSW).

Every stage runs in a fresh spawned process (``--no-isolate``: all in this one), so its peak RSS
is its own. Prints a table and writes every number as JSON to ``--out``.

    python bench/stages.py --out runs/bench/stages.json                  # CPU, offline models
    python bench/stages.py --docs 5183 --passages 256 --device cuda --out stages-gpu.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    DEFAULT_DATA,
    RecordingProgress,
    Timer,
    format_table,
    latency_stats,
    machine_info,
    make_sub_corpus,
    offline_models,
    run_isolated,
    write_json,
)

STAGES = ("index", "queries", "negatives", "labels", "train", "encode", "vectors", "search")
SEARCH_SPACE = "bench-dense"


def _docs(work: Path):
    from rgpl_plugin.embedded import EmbeddedBackend

    backend = EmbeddedBackend.open(work / "index")
    return backend, list(backend.iter_documents())


def _queries(work: Path):
    from rgpl_adapt.records import GeneratedQuery, read_jsonl

    return list(read_jsonl(work / "queries.jsonl", GeneratedQuery))


# --------------------------------------------------------------------------- stages (module level: spawnable)


def stage_index(work: str, corpus: str) -> dict[str, Any]:
    from rgpl_adapt.config import CorpusConfig
    from rgpl_adapt.corpus import read_corpus
    from rgpl_plugin.embedded import EmbeddedBackend

    docs, _ = read_corpus(CorpusConfig(path=corpus))
    with Timer() as t:
        EmbeddedBackend.create(Path(work) / "index", docs, overwrite=True).close()
    return {"documents": len(docs), "seconds": t.seconds, "docs_per_s": len(docs) / t.seconds}


def stage_queries(work: str, generator: str, kind: str, passages: int, batch_size: int, device: str,
                  seed: int) -> dict[str, Any]:
    from rgpl_adapt.config import GenerationConfig
    from rgpl_adapt.generation import generate_queries
    from rgpl_adapt.generators import load_generator
    from rgpl_adapt.records import GeneratedQuery, write_jsonl

    backend, docs = _docs(Path(work))
    backend.close()
    chosen = random.Random(seed).sample(docs, min(passages, len(docs)))
    if generator == "none":  # synthetic: the title's first words (for a quick run of the other stages)
        queries = [GeneratedQuery(qid=f"{d.id}-q0", text=" ".join((d.title or d.text).split()[:8]), doc_id=d.id)
                   for d in chosen]
        write_jsonl(Path(work) / "queries.jsonl", queries)
        return {"generator": "synthetic (title words)", "queries": len(queries), "passages": len(chosen)}
    cfg = GenerationConfig(model=generator, kind=kind, queries_per_passage=1, batch_size=batch_size,
                           max_input_len=256, max_query_len=32, seed=seed)
    with Timer() as load:
        gen = load_generator(cfg, device)
    with Timer() as t:
        queries, stats = generate_queries(chosen, gen, cfg, qpp=1, seen=set())
    write_jsonl(Path(work) / "queries.jsonl", queries)
    return {"generator": generator, "load_s": load.seconds, "seconds": t.seconds, "passages": len(chosen),
            "generated": stats.generated, "queries": len(queries), "dropped": stats.dropped,
            "queries_per_s": len(queries) / t.seconds, "passages_per_s": len(chosen) / t.seconds}


def stage_negatives(work: str, retriever: str, k: int, hnsw: bool, device: str) -> dict[str, Any]:
    from rgpl_adapt.encoding import SentenceTransformerEncoder
    from rgpl_adapt.mining import mine_negatives
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_adapt.records import write_jsonl
    from rgpl_plugin.embedded import EmbeddedBackend

    queries = _queries(Path(work))
    backend = EmbeddedBackend.open(Path(work) / "index", hnsw_threshold=0 if hnsw else 10**9)
    with Timer() as load:
        enc = SentenceTransformerEncoder(load_sentence_transformer(retriever, device, 256))
    rec = RecordingProgress()
    with Timer() as t:
        pools = mine_negatives(queries, backend, retrievers=[("dense", enc)], bm25=True, k=k, progress=rec)
    if not hnsw:
        write_jsonl(Path(work) / "pools.jsonl", pools)
    backend.close()
    return {"index": "HNSW (usearch)" if hnsw else "exact", "queries": len(queries), "documents": backend.count(),
            "k": k, "load_s": load.seconds, "seconds": t.seconds, "queries_per_s": len(queries) / t.seconds,
            "encode_corpus_s": rec.seconds("encoding corpus"), "bm25_s": rec.seconds("mining bm25"),
            "knn_s": rec.seconds("mining dense"),
            "knn_queries_per_s": len(queries) / max(rec.seconds("mining dense"), 1e-9)}


def _label_setup(work: Path, steps: int, batch_size: int, seed: int):
    from rgpl_adapt.labeling import sample_triples
    from rgpl_adapt.records import NegativePool, read_jsonl

    queries = _queries(work)
    pools = list(read_jsonl(work / "pools.jsonl", NegativePool))
    # exactly the triples the trainer's round 0 draws (seed + round 0), so training finds them cached
    return queries, pools, sample_triples(queries, pools, steps * batch_size, seed=seed)


def stage_labels(work: str, teacher: str, kind: str, steps: int, batch_size: int, seq_len: int, device: str,
                 seed: int) -> dict[str, Any]:
    from rgpl_adapt.config import LabelConfig
    from rgpl_adapt.labeling import ScoreCache, label_triples, load_teacher

    w = Path(work)
    queries, _, triples = _label_setup(w, steps, batch_size, seed)
    _, docs = _docs(w)
    text_of = {d.id: d.full_text() for d in docs}
    qtext = {q.qid: q.text for q in queries}
    with Timer() as load:
        model = load_teacher(LabelConfig(teacher=teacher, kind=kind, batch_size=32, max_seq_len=seq_len), device)
    (w / "scores.jsonl").unlink(missing_ok=True)
    cache = ScoreCache(w / "scores.jsonl", key="bench")
    with Timer() as cold:
        label_triples(triples, model, query_text=qtext, doc_text=text_of, cache=cache, batch_size=32)
    pairs = cache.stats()["misses"]
    with Timer() as warm:
        label_triples(triples, model, query_text=qtext, doc_text=text_of, cache=cache, batch_size=32)
    return {"teacher": teacher, "kind": type(model).__name__, "triples": len(triples), "pairs_scored": pairs,
            "load_s": load.seconds, "cold_s": cold.seconds, "pairs_per_s": pairs / cold.seconds,
            "triples_per_s_cold": len(triples) / cold.seconds, "warm_s": warm.seconds,
            "triples_per_s_warm": len(triples) / max(warm.seconds, 1e-9)}


class _CachedOnly:
    """A teacher for the training stage: every pair it needs is in the score cache already."""

    def score(self, queries, passages):  # pragma: no cover - would mean the triples differ
        raise RuntimeError("bench: the training stage met a pair the labels stage did not score")


def stage_train(work: str, student: str, steps: int, batch_size: int, seq_len: int, precision: str, device: str,
                seed: int) -> dict[str, Any]:
    import shutil

    from rgpl_adapt.config import AdaptConfig
    from rgpl_adapt.labeling import ScoreCache
    from rgpl_adapt.training import Trainer, TrainingData

    w = Path(work)
    queries, pools, _ = _label_setup(w, steps, batch_size, seed)
    backend, docs = _docs(w)
    base = AdaptConfig()
    cfg = replace(base, training=replace(base.training, student=student, steps=steps, batch_size=batch_size,
                                         max_seq_len=seq_len, warmup_steps=max(1, steps // 10),
                                         checkpoint_every=10**9, precision=precision, seed=seed),
                  remine=replace(base.remine, every=0))
    out = w / f"train-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    rec = RecordingProgress()
    data = TrainingData(queries=queries, doc_ids=[d.id for d in docs], doc_texts=[d.full_text() for d in docs])
    with Timer() as t:
        result = Trainer(cfg, out, student_path=student, backend=backend, data=data, initial_pools=pools,
                         teacher=_CachedOnly(), cache=ScoreCache(w / "scores.jsonl", key="bench"), device=device,
                         progress=rec).run()
    backend.close()
    rate = rec.rate("training")
    return {"precision": precision, "steps": result.steps, "batch_size": batch_size, "max_seq_len": seq_len,
            "seconds": t.seconds, "loop_s": rec.seconds("training"), "steps_per_s": rate,
            "final_loss": result.final_loss}


def stage_encode(work: str, student: str, n: int, seq_len: int, device: str) -> dict[str, Any]:
    from rgpl_adapt.config import ExportConfig
    from rgpl_adapt.encoding import encode_texts
    from rgpl_adapt.export import export_model
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_adapt.onnx_encoder import OnnxEncoder

    w = Path(work)
    _, docs = _docs(w)
    texts = [d.full_text() for d in docs[:n]] if n > 0 else [d.full_text() for d in docs]
    model = load_sentence_transformer(student, device, seq_len)
    with Timer() as ex:
        # exported from the loaded model, so ONNX truncates at the same max_seq_len as torch
        export = export_model(model, w / "export", ExportConfig(int8=True), sample_texts=texts[:16])
    runs: dict[str, Any] = {
        "torch fp32": lambda x: encode_texts(model, x, 64),
        "torch bf16 autocast": lambda x: encode_texts(model, x, 64, autocast_bf16=True),
        "onnx fp32": OnnxEncoder(w / "export", providers=["CPUExecutionProvider"]).encode,
        "onnx int8": OnnxEncoder(w / "export", int8=True, providers=["CPUExecutionProvider"]).encode,
    }
    if device != "cpu":
        del runs["onnx fp32"], runs["onnx int8"]  # the GPU comparison is torch's
    out: dict[str, Any] = {"documents": len(texts), "export_s": ex.seconds, "onnx_max_seq_len": export.max_seq_len,
                           "runs": {}}
    ref = None
    for name, fn in runs.items():
        fn(texts[:32])  # warm-up
        with Timer() as t:
            vecs = fn(texts)
        ref = vecs if ref is None else ref
        cos = np.sum(vecs * ref, axis=1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(ref, axis=1) + 1e-12)
        out["runs"][name] = {"seconds": t.seconds, "docs_per_s": len(texts) / t.seconds, "cosine_to_fp32": float(cos.mean())}
    np.save(w / "vectors.npy", ref)
    (w / "vector_ids.json").write_text(json.dumps([d.id for d in docs[: len(texts)]]))
    return out


def stage_vectors(work: str) -> dict[str, Any]:
    from rgpl_plugin.embedded import EmbeddedBackend

    w = Path(work)
    vecs = np.load(w / "vectors.npy")
    ids = json.loads((w / "vector_ids.json").read_text())
    backend = EmbeddedBackend.open(w / "index")
    backend.drop_vectors(SEARCH_SPACE)
    with Timer() as put:
        for s in range(0, len(ids), 10_000):
            backend.put_vectors(SEARCH_SPACE, ids[s : s + 10_000], vecs[s : s + 10_000])
    with Timer() as merge:
        backend.knn_search(SEARCH_SPACE, vecs[:1], 1)
    backend.close()
    return {"vectors": len(ids), "dim": int(vecs.shape[1]), "put_s": put.seconds,
            "vectors_per_s": len(ids) / put.seconds, "merge_s": merge.seconds,
            "vectors_per_s_with_merge": len(ids) / (put.seconds + merge.seconds)}


def stage_search(work: str, student: str, n_queries: int, k: int, device: str) -> dict[str, Any]:
    from rgpl_adapt.encoding import encode_texts
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_plugin.embedded import EmbeddedBackend

    w = Path(work)
    queries = _queries(w)
    texts = [queries[i % len(queries)].text for i in range(n_queries)]
    qvecs = encode_texts(load_sentence_transformer(student, device, 64), texts, 64)
    out: dict[str, Any] = {"queries": n_queries, "k": k}
    for label, threshold in (("exact", 10**9), ("hnsw", 0)):
        backend = EmbeddedBackend.open(w / "index", hnsw_threshold=threshold)
        backend.hybrid_search(SEARCH_SPACE, texts[:1], qvecs[:1], k)  # loads vectors (and builds HNSW)
        calls = {"bm25": lambda i: backend.bm25_search([texts[i]], k),
                 f"knn {label}": lambda i: backend.knn_search(SEARCH_SPACE, qvecs[i : i + 1], k),
                 f"hybrid {label}": lambda i: backend.hybrid_search(SEARCH_SPACE, texts[i : i + 1], qvecs[i : i + 1], k)}
        for name, fn in calls.items():
            if name in out:
                continue
            times = []
            for i in range(n_queries):
                t0 = time.perf_counter()
                fn(i)
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = latency_stats(times)
        backend.close()
    return out


# --------------------------------------------------------------------------- driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder")
    p.add_argument("--docs", type=int, default=500, help="sub-corpus size (0 = all)")
    p.add_argument("--work", type=Path, default=Path("runs/bench-stages"))
    p.add_argument("--out", type=Path, default=None, help="JSON (default: <work>/stages.json)")
    p.add_argument("--cache", type=Path, default=None, help="prepared offline models (rgpl_adapt.offline)")
    p.add_argument("--student", help="default: packaged all-MiniLM-L6-v2 (also the negative miner)")
    p.add_argument("--teacher", help="default: packaged all-mpnet-base-v2 (bi-encoder)")
    p.add_argument("--teacher-kind", default="auto", choices=["auto", "cross-encoder", "bi-encoder"])
    p.add_argument("--generator", help="default: packaged Gemma-3-270M; 'none' = synthetic queries")
    p.add_argument("--generator-kind", default="auto", choices=["auto", "seq2seq", "causal"])
    p.add_argument("--passages", type=int, default=16, help="passages that get a query (1 each)")
    p.add_argument("--gen-batch-size", type=int, default=8)
    p.add_argument("--k", type=int, default=20, help="negatives per source")
    p.add_argument("--steps", type=int, default=10, help="training steps timed per precision")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=128)
    p.add_argument("--encode-docs", type=int, default=300, help="documents encoded per runtime (0 = all)")
    p.add_argument("--search-queries", type=int, default=200)
    p.add_argument("--precisions", default="fp32,bf16", help="training precisions to time")
    p.add_argument("--stages", default=",".join(STAGES), help=f"subset of {','.join(STAGES)}")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--no-isolate", action="store_true", help="run every stage in this process")
    args = p.parse_args(argv)
    if not (args.student and args.teacher and args.generator):
        models = offline_models(args.cache)
        args.student = args.student or models["student"]
        args.teacher = args.teacher or models["teacher"]
        args.generator = args.generator or models["generator"]
    args.out = args.out or args.work / "stages.json"
    return args


def summary_rows(res: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(stage: str, what: str, value: float | None, unit: str, r: dict[str, Any]) -> None:
        rows.append({"stage": stage, "measure": what, "value": value, "unit": unit, "peak MB": r.get("peak_rss_mb")})

    s = res["stages"]
    if "index" in s:
        row("index", f"{s['index']['documents']} docs", s["index"]["docs_per_s"], "docs/s", s["index"])
    if "queries" in s and "queries_per_s" in s["queries"]:
        row("queries", "generated", s["queries"]["queries_per_s"], "queries/s", s["queries"])
    for key in ("negatives exact", "negatives hnsw"):
        if key in s:
            row("negatives", f"{s[key]['index']} (bm25+dense)", s[key]["queries_per_s"], "queries/s", s[key])
            row("negatives", f"  k-NN only, {s[key]['index']}", s[key]["knn_queries_per_s"], "queries/s", s[key])
    if "labels" in s:
        row("labels", "teacher pairs, cold cache", s["labels"]["pairs_per_s"], "pairs/s", s["labels"])
        row("labels", "triples, warm cache", s["labels"]["triples_per_s_warm"], "triples/s", s["labels"])
    for key, r in s.items():
        if key.startswith("train "):
            row("train", f"{r['precision']} batch {r['batch_size']}", r["steps_per_s"], "steps/s", r)
    if "encode" in s:
        for name, r in s["encode"]["runs"].items():
            row("encode", f"{name} (cos {r['cosine_to_fp32']:.4f})", r["docs_per_s"], "docs/s", s["encode"])
    if "vectors" in s:
        row("vectors", "put_vectors", s["vectors"]["vectors_per_s"], "vectors/s", s["vectors"])
        row("vectors", "put + merge", s["vectors"]["vectors_per_s_with_merge"], "vectors/s", s["vectors"])
    if "search" in s:
        for name, r in s["search"].items():
            if isinstance(r, dict):
                rows.append({"stage": "search", "measure": f"{name} p50 / p99", "value": r["p50_ms"],
                             "unit": f"ms / {r['p99_ms']:.2f} ms", "peak MB": s["search"].get("peak_rss_mb")})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = set(wanted) - set(STAGES)
    if unknown:
        raise SystemExit(f"unknown stage(s) {sorted(unknown)}; choose from {', '.join(STAGES)}")
    work = args.work.resolve()
    sub = make_sub_corpus(args.data.resolve(), work / "data", args.docs, args.seed)
    iso = not args.no_isolate
    res: dict[str, Any] = {"benchmark": "stages", "corpus": sub.note, "machine_before": machine_info(),
                           "models": {"student": args.student, "teacher": args.teacher, "generator": args.generator},
                           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                           "stages": {}}
    w = str(work)
    plan: list[tuple[str, Any, tuple]] = [
        ("index", stage_index, (w, str(sub.path))),
        ("queries", stage_queries, (w, args.generator, args.generator_kind, args.passages, args.gen_batch_size,
                                    args.device, args.seed)),
        ("negatives exact", stage_negatives, (w, args.student, args.k, False, args.device)),
        ("negatives hnsw", stage_negatives, (w, args.student, args.k, True, args.device)),
        ("labels", stage_labels, (w, args.teacher, args.teacher_kind, args.steps, args.batch_size,
                                  2 * args.max_seq_len, args.device, args.seed)),
        *[(f"train {p}", stage_train, (w, args.student, args.steps, args.batch_size, args.max_seq_len, p,
                                        args.device, args.seed)) for p in args.precisions.split(",") if p],
        ("encode", stage_encode, (w, args.student, args.encode_docs, args.max_seq_len, args.device)),
        ("vectors", stage_vectors, (w,)),
        ("search", stage_search, (w, args.student, args.search_queries, 10, args.device)),
    ]
    for name, fn, fargs in plan:
        if name.split()[0] not in wanted:
            continue
        t0 = time.perf_counter()
        res["stages"][name] = run_isolated(fn, *fargs, isolate=iso)
        res["stages"][name]["wall_s"] = time.perf_counter() - t0
        print(f"  {name}: done in {res['stages'][name]['wall_s']:.1f} s", flush=True)
    res["machine_after"] = machine_info()
    rows = summary_rows(res)
    print(f"\n{sub.note}; load average before {res['machine_before']['loadavg']}, after {res['machine_after']['loadavg']}")
    print(format_table(rows, ["stage", "measure", "value", "unit", "peak MB"], digits=2))
    write_json(args.out, {**res, "table": rows})
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
