"""Retrieval quality of each encoding path: nDCG@10 on SciFact with torch fp32/bf16 and the ONNX graphs.

Speed is only worth having at equal quality. This encodes a SciFact (sub-)corpus (every document
judged for a test query plus a seeded sample of the rest, ``--docs``; ``0`` = all 5,183) and the 300
test queries with each path of an export folder (``bench/encode_speed.py --keep-export DIR`` or
``rgpl-adapt export``), ranks by dot product, and reports nDCG@10 and its difference to torch fp32.

    python bench/encode_ndcg.py --export runs/bench/export --docs 0 --out runs/bench/encode_ndcg.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import make_sub_corpus, read_beir_records  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", required=True, help="export folder (sentence-transformers/ + onnx/)")
    parser.add_argument("--data", default="../shared/data/scifact", help="BEIR SciFact folder")
    parser.add_argument("--docs", type=int, default=0, help="sub-corpus size (0: the whole corpus)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--work", default="runs/bench/encode_ndcg_corpus")
    parser.add_argument("--out", default="runs/bench/encode_ndcg.json")
    parser.add_argument("--paths", default=None,
                        help="comma-separated subset of the paths (default: all; torch fp32 always runs first)")
    args = parser.parse_args()

    import torch

    from rgpl_adapt.encoding import encode_texts
    from rgpl_adapt.evaluation import ndcg_at_k
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_adapt.onnx_encoder import OnnxEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    sub = make_sub_corpus(Path(args.data), Path(args.work), args.docs)
    records = read_beir_records(sub.path)
    doc_ids = list(records)
    docs = [f"{records[d].get('title', '')} {records[d].get('text', '')}".strip() for d in doc_ids]
    qids = list(sub.queries)
    queries = [sub.queries[q] for q in qids]
    model = load_sentence_transformer(str(Path(args.export) / "sentence-transformers"), device="cpu").eval()
    cpu = ["CPUExecutionProvider"]
    fused = OnnxEncoder(args.export, providers=cpu, threads=args.threads)
    int8 = OnnxEncoder(args.export, int8=True, providers=cpu, threads=args.threads)
    half = (OnnxEncoder(args.export, fp16=True, providers=cpu, threads=args.threads)
            if (Path(args.export) / "onnx" / "model_fp16.onnx").is_file() else None)

    def bf16(x: list[str]) -> np.ndarray:
        return encode_texts(model, x, args.batch_size, autocast_bf16=True)

    # name -> (documents' encoder, queries' encoder); the reference first, then the serving paths, so a run
    # cut short still has the numbers that matter most
    paths = {
        "torch fp32": (lambda x: encode_texts(model, x, args.batch_size),) * 2,
        "onnx int8": (lambda x: int8.encode(x, batch_size=args.batch_size),) * 2,
        "onnx fused fp32": (lambda x: fused.encode(x, batch_size=args.batch_size),) * 2,
        "torch bf16 autocast": (bf16, bf16),
        # what the serve stage does on a bf16 CPU: documents by torch bf16 (runfolder.corpus_encoder), queries by ONNX
        "served: bf16 docs + onnx queries": (bf16, lambda x: fused.encode(x, batch_size=args.batch_size)),
    }
    if half is not None:
        paths["onnx fp16 (on CPU)"] = (lambda x: half.encode(x, batch_size=args.batch_size),) * 2
    if args.paths:
        wanted = {"torch fp32", *(p.strip() for p in args.paths.split(","))}
        unknown = wanted - set(paths)
        if unknown:
            raise SystemExit(f"unknown path(s) {sorted(unknown)}; choose from {sorted(paths)}")
        paths = {k: v for k, v in paths.items() if k in wanted}
    rows: dict[str, dict] = {}
    out = {"corpus": sub.note, "export": args.export, "load_avg_before": os.getloadavg(), "runs": rows}
    print(sub.note)
    print(f"{'path':<34}{'nDCG@10':>9}{'delta (points)':>16}{'seconds':>9}", flush=True)
    for name, (doc_fn, query_fn) in paths.items():
        t = time.perf_counter()
        d, q = doc_fn(docs), query_fn(queries)
        secs = time.perf_counter() - t
        scores = q @ d.T
        top = np.argsort(-scores, axis=1)[:, :100]
        results = {qid: {doc_ids[j]: float(scores[i, j]) for j in top[i]} for i, qid in enumerate(qids)}
        ndcg = ndcg_at_k(results, sub.qrels, 10)
        ref = rows["torch fp32"]["ndcg@10"] if rows else ndcg
        rows[name] = {"ndcg@10": ndcg, "seconds": secs, "delta_points": 100 * (ndcg - ref)}
        print(f"{name:<34}{ndcg:>9.4f}{rows[name]['delta_points']:>16.2f}{secs:>9.1f}", flush=True)
        out["load_avg_after"] = os.getloadavg()
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # written after every path
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
