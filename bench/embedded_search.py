"""Benchmark the embedded backend: build, BM25, exact and HNSW k-NN, hybrid search.

Builds an :class:`rgpl_plugin.embedded.EmbeddedBackend` over ``--docs`` synthetic documents
(topic words + Zipf filler) with random clustered, normalised ``--dim``-d vectors, then times
single-query latencies (p50/p99 over ``--queries`` queries) and HNSW recall@10 against exact
search. Prints a table and writes every number as JSON to ``--out``.

    python bench/embedded_search.py --docs 50000 --out runs/bench/embedded.json

Single-query latencies are sensitive to BLAS threading: on a small or shared machine, run with
``OPENBLAS_NUM_THREADS=1`` (a 1-row matrix product gains nothing from threads, and idle BLAS
threads competing with tantivy's inflate p50/p99 several-fold); batched search benefits from them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from rgpl_plugin.base import Document
from rgpl_plugin.embedded import EmbeddedBackend

VOCAB_SIZE = 20_000
TOPICS = 50


def synthetic_documents(n: int, seed: int) -> tuple[Iterator[Document], np.ndarray]:
    """Documents whose words mix a topic's 30-word vocabulary with Zipf-distributed filler."""
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(VOCAB_SIZE)])
    topic_words = rng.integers(0, VOCAB_SIZE, size=(TOPICS, 30))
    topics = rng.integers(0, TOPICS, size=n)

    def gen() -> Iterator[Document]:
        for i in range(n):
            length = int(rng.integers(40, 120))
            filler = np.minimum(rng.zipf(1.3, size=length // 2), VOCAB_SIZE) - 1
            words = np.concatenate([rng.choice(topic_words[topics[i]], size=length - len(filler)), filler])
            rng.shuffle(words)
            yield Document(
                id=f"doc{i}",
                title=f"topic {topics[i]} " + " ".join(vocab[words[:4]]),
                text=" ".join(vocab[words]),
            )

    return gen(), topics


def clustered_vectors(topics: np.ndarray, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(TOPICS, dim)).astype(np.float32)
    x = centers[topics] + 0.6 * rng.normal(size=(len(topics), dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def latencies(fn: Callable[[int], object], n: int) -> dict[str, float]:
    times = []
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t) * 1000)
    a = np.array(times)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }


def hybrid_split(path: Path, texts: list[str], qvecs: np.ndarray, k: int, rounds: int = 3) -> dict:
    """Where a hybrid query's time goes: each leg, the fusion and the whole call with its legs in
    sequence and in two threads (``EmbeddedBackend.open(legs=...)``, :mod:`rgpl_plugin.legs`), timed in
    a shuffled order per query so load hits them alike."""
    from rgpl_plugin.fusion import fuse

    backend = EmbeddedBackend.open(path, hnsw_threshold=0, legs="sequential")
    threaded = EmbeddedBackend.open(path, hnsw_threshold=0, legs="threads")
    for i in range(len(texts)):  # same results both ways
        one = (texts[i : i + 1], qvecs[i : i + 1])
        assert threaded.hybrid_search("dense", *one, k) == backend.hybrid_search("dense", *one, k)
    legs = {i: (backend.bm25_search([texts[i]], k)[0], backend.knn_search("dense", qvecs[i : i + 1], k)[0])
            for i in range(len(texts))}
    fns: dict[str, Callable[[int], object]] = {
        "bm25_leg": lambda i: backend.bm25_search([texts[i]], k),
        "dense_leg": lambda i: backend.knn_search("dense", qvecs[i : i + 1], k),
        "fusion": lambda i: fuse(*legs[i], k),
        "hybrid": lambda i: backend.hybrid_search("dense", texts[i : i + 1], qvecs[i : i + 1], k),
        "hybrid_legs_in_threads": lambda i: threaded.hybrid_search("dense", texts[i : i + 1], qvecs[i : i + 1], k),
    }
    times: dict[str, list[float]] = {name: [] for name in fns}
    rng = np.random.default_rng(0)
    names = list(fns)
    for _ in range(rounds):
        for i in range(len(texts)):
            for j in rng.permutation(len(names)):
                t = time.perf_counter()
                fns[names[j]](i)
                times[names[j]].append((time.perf_counter() - t) * 1000)
    backend.close()
    threaded.close()
    out = {name: float(np.median(v)) for name, v in times.items()}
    out["python_overhead_ms"] = out["hybrid"] - out["bm25_leg"] - out["dense_leg"] - out["fusion"]
    out["ratio_to_bm25"] = out["hybrid"] / out["bm25_leg"]
    out["threads_ratio_to_bm25"] = out["hybrid_legs_in_threads"] / out["bm25_leg"]
    return out


def run(args: argparse.Namespace) -> dict:
    root = Path(args.workdir or tempfile.mkdtemp(prefix="rgpl-bench-"))
    path = root / "index"
    results: dict = {
        "docs": args.docs,
        "dim": args.dim,
        "queries": args.queries,
        "k": args.k,
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count()},
    }
    docs, topics = synthetic_documents(args.docs, args.seed)
    t = time.perf_counter()
    backend = EmbeddedBackend.create(path, docs, overwrite=True)
    results["build_s"] = time.perf_counter() - t
    ids = [f"doc{i}" for i in range(args.docs)]
    vectors = clustered_vectors(topics, args.dim, args.seed + 1)
    t = time.perf_counter()
    for start in range(0, args.docs, 10_000):
        backend.put_vectors("dense", ids[start : start + 10_000], vectors[start : start + 10_000])
    results["put_vectors_s"] = time.perf_counter() - t

    rng = np.random.default_rng(args.seed + 2)
    sample = backend.get_documents([ids[i] for i in rng.integers(0, args.docs, args.queries)])
    texts = [" ".join(d.text.split()[:6]) for d in sample]
    qtopics = rng.integers(0, TOPICS, args.queries)
    qvecs = clustered_vectors(qtopics, args.dim, args.seed + 1)  # same centers as the documents
    k = args.k

    t = time.perf_counter()
    backend.knn_search("dense", qvecs[:1], k)  # merges the put() segments once
    results["first_search_merge_s"] = time.perf_counter() - t
    results["bm25"] = latencies(lambda i: backend.bm25_search([texts[i]], k), args.queries)
    results["exact_knn"] = latencies(lambda i: backend.knn_search("dense", qvecs[i : i + 1], k), args.queries)
    t = time.perf_counter()
    exact = backend.knn_search("dense", qvecs, k)
    results["exact_knn_batch_per_query_ms"] = (time.perf_counter() - t) * 1000 / args.queries
    results["hybrid_min_max_exact"] = latencies(
        lambda i: backend.hybrid_search("dense", texts[i : i + 1], qvecs[i : i + 1], k), args.queries
    )
    results["get_documents_10"] = latencies(
        lambda i: backend.get_documents([ids[(i * 7919 + j) % args.docs] for j in range(10)]), args.queries
    )
    t = time.perf_counter()
    n_iter = sum(1 for _ in backend.iter_documents())
    results["iter_documents_docs_per_s"] = n_iter / (time.perf_counter() - t)
    backend.close()

    hnsw = EmbeddedBackend.open(path, hnsw_threshold=0)
    t = time.perf_counter()
    hnsw.knn_search("dense", qvecs[:1], k)
    results["hnsw_build_s"] = time.perf_counter() - t
    results["hnsw_knn"] = latencies(lambda i: hnsw.knn_search("dense", qvecs[i : i + 1], k), args.queries)
    def recall(approx: list[list]) -> float:
        return float(np.mean([len({h.doc_id for h in a} & {h.doc_id for h in e}) / len(e)
                              for a, e in zip(approx, exact)]))

    # the serving path (one query per call) and the batched one (mining) against exact top-k
    results["hnsw_recall_at_k"] = recall([hnsw.knn_search("dense", qvecs[i : i + 1], k)[0]
                                          for i in range(args.queries)])
    results["hnsw_recall_at_k_batched"] = recall(hnsw.knn_search("dense", qvecs, k))
    results["hybrid_min_max_hnsw"] = latencies(
        lambda i: hnsw.hybrid_search("dense", texts[i : i + 1], qvecs[i : i + 1], k), args.queries
    )
    # BM25 and hybrid alternated query by query, so machine load hits both alike: the ratio is the number
    bm, hy = [], []
    for rnd in range(3):
        for i in range(args.queries):
            pair = [("bm25", lambda i=i: hnsw.bm25_search([texts[i]], k)),
                    ("hybrid", lambda i=i: hnsw.hybrid_search("dense", texts[i : i + 1], qvecs[i : i + 1], k))]
            for name, fn in pair if (i + rnd) % 2 else pair[::-1]:
                t = time.perf_counter()
                fn()
                (bm if name == "bm25" else hy).append((time.perf_counter() - t) * 1000)
    results["interleaved"] = {"bm25_p50_ms": float(np.median(bm)), "hybrid_hnsw_p50_ms": float(np.median(hy)),
                              "ratio": float(np.median(hy) / np.median(bm)),
                              "legs_chosen": hnsw.legs.preferred, "legs_median_ms": hnsw.legs.medians_ms()}
    results["hybrid_split"] = hybrid_split(path, texts, qvecs, k)
    hnsw.close()
    results["index_size_mb"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6
    if not args.keep and not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    return results


def table(r: dict) -> str:
    rows = [
        ("documents", f"{r['docs']:,} x {r['dim']}-d"),
        ("build (tantivy + sqlite)", f"{r['build_s']:.2f} s ({r['docs'] / r['build_s']:,.0f} docs/s)"),
        ("put_vectors (10k batches)", f"{r['put_vectors_s']:.2f} s"),
        ("first search (segment merge)", f"{r['first_search_merge_s']:.2f} s"),
        ("index size", f"{r['index_size_mb']:.1f} MB"),
    ]
    for key, label in [
        ("bm25", "BM25"),
        ("exact_knn", "exact k-NN"),
        ("hnsw_knn", "HNSW k-NN"),
        ("hybrid_min_max_exact", "hybrid (exact)"),
        ("hybrid_min_max_hnsw", "hybrid (HNSW)"),
        ("get_documents_10", "get_documents(10)"),
    ]:
        rows.append((f"{label} p50 / p99", f"{r[key]['p50_ms']:.2f} / {r[key]['p99_ms']:.2f} ms"))
    rows += [
        ("exact k-NN batched", f"{r['exact_knn_batch_per_query_ms']:.3f} ms/query"),
        ("HNSW build", f"{r['hnsw_build_s']:.2f} s"),
        (f"HNSW recall@{r['k']} vs exact: one query / batched", f"{r['hnsw_recall_at_k']:.4f} / "
         f"{r['hnsw_recall_at_k_batched']:.4f} (target >= 0.99)"),
        ("iter_documents", f"{r['iter_documents_docs_per_s']:,.0f} docs/s"),
        ("interleaved p50 BM25 / hybrid HNSW", f"{r['interleaved']['bm25_p50_ms']:.2f} / "
         f"{r['interleaved']['hybrid_hnsw_p50_ms']:.2f} ms ({r['interleaved']['ratio']:.2f}x, "
         f"legs: {r['interleaved']['legs_chosen']})"),
        ("hybrid split p50: BM25 + dense + fusion + rest",
         "{bm25_leg:.2f} + {dense_leg:.2f} + {fusion:.3f} + {python_overhead_ms:.3f} = {hybrid:.2f} ms "
         "({ratio_to_bm25:.2f}x BM25)".format(**r["hybrid_split"])),
        ("hybrid with the legs in two threads p50", f"{r['hybrid_split']['hybrid_legs_in_threads']:.2f} ms "
         f"({r['hybrid_split']['threads_ratio_to_bm25']:.2f}x BM25)"),
        ("load average (1 min) before / after", f"{r['load_avg'][0]:.1f} / {r['load_avg'][1]:.1f}"),
    ]
    width = max(len(a) for a, _ in rows)
    return "\n".join(f"{a:<{width}}  {b}" for a, b in rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=50_000, help="number of synthetic documents")
    parser.add_argument("--dim", type=int, default=384, help="vector dimension")
    parser.add_argument("--queries", type=int, default=200, help="queries timed per measurement")
    parser.add_argument("--k", type=int, default=10, help="hits per query")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("embedded_search.json"), help="JSON results path")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the index here (default: temp dir)")
    parser.add_argument("--keep", action="store_true", help="do not delete the temporary index")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    results = run(args)
    results["load_avg"] = [load, os.getloadavg()[0]]
    print(table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
