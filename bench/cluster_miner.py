"""Cluster miner vs local miner on the real test OpenSearch node (tests/cluster/node.py), and hybrid vs BM25
query latency on that node.

Synthetic documents (random words) with random unit 384-d vectors stand in for an encoded corpus: what is
timed is the nearest-neighbour search the miner does, not the encoder. For each size:

* cluster mining: write the vectors into a k-NN shadow index (``put_vectors``), then ``knn_search`` the
  queries in batches (initial mining = the load + the searches; one remining round = a new space written and
  searched again, as remining with a new student does);
* local mining: exact inner-product top-k with numpy over the same vectors (what ``--miner local`` does in
  memory, encoder aside);
* query latency: p50 of single ``hybrid`` (BM25 + k-NN, min-max) and single BM25 queries on the shadow index.

Usage: nice -n 10 python bench/cluster_miner.py [--sizes 5000,50000] [--queries 500]
Writes bench/out/cluster_miner.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgpl_plugin.base import Document  # noqa: E402
from rgpl_plugin.opensearch import OpenSearchBackend  # noqa: E402

from tests.cluster.node import NodeSpec, start_node  # noqa: E402

WORDS = [f"w{i}" for i in range(5000)]
DIM, K = 384, 20


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def load_source(client, index: str, n: int, rng: np.random.Generator) -> list[Document]:
    from opensearchpy import helpers

    client.indices.create(index=index, body={"settings": {"number_of_shards": 1, "number_of_replicas": 0},
                                             "mappings": {"properties": {"text": {"type": "text"}}}})
    docs = [Document(id=f"d{i}", text=" ".join(rng.choice(WORDS, 40))) for i in range(n)]
    helpers.bulk(client, ({"_index": index, "_id": d.id, "_source": {"text": d.text}} for d in docs),
                 chunk_size=2000, refresh=True)
    return docs


def cluster_round(backend: OpenSearchBackend, space: str, ids: list[str], vecs: np.ndarray,
                  queries: np.ndarray) -> dict:
    t0 = time.perf_counter()
    backend.put_vectors(space, ids, vecs)
    backend.finish_vectors(space)
    load_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    for start in range(0, len(queries), 100):
        backend.knn_search(space, queries[start:start + 100], K)
    search_s = time.perf_counter() - t1
    return {"load_s": load_s, "search_s": search_s, "queries_per_s": len(queries) / (load_s + search_s),
            "search_only_queries_per_s": len(queries) / search_s}


def local_round(vecs: np.ndarray, queries: np.ndarray) -> dict:
    t0 = time.perf_counter()
    for start in range(0, len(queries), 100):
        scores = queries[start:start + 100] @ vecs.T
        np.argpartition(-scores, K, axis=1)[:, :K]
    s = time.perf_counter() - t0
    return {"search_s": s, "queries_per_s": len(queries) / s}


def latency(fn, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,50000")
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--latency-queries", type=int, default=100)
    args = ap.parse_args()
    node = start_node(NodeSpec())
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[node.url], timeout=300)
    results = {"node": node.version, "dim": DIM, "k": K, "queries": args.queries, "sizes": {}}
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            rng = np.random.default_rng(n)
            index = f"bench-{n}"
            docs = load_source(client, index, n, rng)
            ids = [d.id for d in docs]
            backend = OpenSearchBackend(client, index, text_fields=["text"], title_field=None)
            queries = unit(rng, args.queries)
            row = {"cluster_initial": cluster_round(backend, "initial", ids, unit(rng, n), queries)}
            row["cluster_remine"] = cluster_round(backend, "remine", ids, unit(rng, n), queries)
            row["local_initial"] = local_round(unit(rng, n), queries)
            row["local_remine"] = local_round(unit(rng, n), queries)
            texts = [" ".join(rng.choice(WORDS, 4)) for _ in range(args.latency_queries)]
            n_lat = len(texts)
            row["bm25_p50_ms"] = latency(lambda i: backend.bm25_search([texts[i]], 10), n_lat)
            row["hybrid_p50_ms"] = latency(
                lambda i: backend.hybrid_search("remine", [texts[i]], queries[i:i + 1], 10, weight=0.5), n_lat)
            row["knn_p50_ms"] = latency(lambda i: backend.knn_search("remine", queries[i:i + 1], 10), n_lat)
            results["sizes"][n] = row
            print(json.dumps({n: row}, indent=1), flush=True)
            for space in ("initial", "remine"):
                backend.drop_vectors(space)
            client.indices.delete(index=index)
    finally:
        client.close()
        node.stop()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster_miner.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
