"""Publishing a version index on the real test OpenSearch node (tests/cluster/node.py): the two write paths.

* ``reindex``: ``_reindex`` task (``slices=auto``, polled) copies the sources, then a second pass of bulk
  partial updates adds the vectors: every document is written twice;
* ``bulk``: one read of the source (scroll below 3.3, PIT above), the vectors of each page fetched from
  the space's shadow index by ``_id``, ``_source`` + vector indexed in one write through parallel bulk
  streams (``--threads``, several values compare stream counts).

Both publish the same precomputed vectors (random unit 384-d, written once into the ``dense`` space's shadow
index beforehand, as the serve stage does), so only the write path differs. Each run is a whole
``publish_version`` (create the version index, load, restore settings, refresh, count check, alias swap); runs
of the paths are interleaved (the order alternates per repeat) because the machine is shared, and the version
index is deleted after each run. Prints docs/s and wall seconds per run and the median per path.

Usage: nice -n 10 python bench/publish_paths.py [--sizes 5000,20000] [--repeats 2] [--threads 1,4]
Writes bench/out/publish_paths.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rgpl_plugin.opensearch import OpenSearchBackend  # noqa: E402
from rgpl_plugin.opensearch_publish import publish_version  # noqa: E402

from tests.cluster.node import NodeSpec, start_node  # noqa: E402

WORDS = [f"w{i}" for i in range(5000)]
DIM = 384


def load_source(client, index: str, n: int, rng: np.random.Generator) -> list[str]:
    from opensearchpy import helpers

    client.indices.create(index=index, body={
        "settings": {"number_of_shards": 1, "number_of_replicas": 0},
        "mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"},
                                    "year": {"type": "integer"}}}})
    ids = [f"d{i}" for i in range(n)]
    helpers.bulk(client, ({"_index": index, "_id": i, "_source": {
        "title": " ".join(rng.choice(WORDS, 6)), "text": " ".join(rng.choice(WORDS, 60)), "year": int(y)}}
        for i, y in zip(ids, rng.integers(1990, 2025, n))), chunk_size=2000, refresh=True)
    return ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="5000,20000")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", default="1,4", help="bulk stream counts to run (comma-separated)")
    args = ap.parse_args()
    paths = [("reindex", 0)] + [("bulk", int(t)) for t in args.threads.split(",")]
    node = start_node(NodeSpec())
    from opensearchpy import OpenSearch

    client = OpenSearch(hosts=[node.url], timeout=300)
    results = {"node": node.version, "dim": DIM, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(),
               "runs": []}
    try:
        for n in (int(s) for s in args.sizes.split(",")):
            rng = np.random.default_rng(n)
            index = f"bench-src-{n}"
            ids = load_source(client, index, n, rng)
            backend = OpenSearchBackend(client, index, text_fields=["text"], title_field="title",
                                        replicas_after_load=0)
            vecs = rng.standard_normal((n, DIM)).astype(np.float32)
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
            backend.put_vectors("dense", ids, vecs)
            backend.finish_vectors("dense")
            for rep in range(args.repeats):
                for write, threads in (paths if rep % 2 == 0 else paths[::-1]):
                    name = f"{write}{threads or ''}-{rep}"
                    load = os.getloadavg()[0]
                    t0 = time.perf_counter()
                    result = publish_version(backend, "dense", name, alias=f"bench-live-{n}-{name}",
                                             write=write, threads=threads or 4)
                    wall = time.perf_counter() - t0
                    assert result.documents == n and result.vectors == n, result
                    row = {"n": n, "path": f"{write}" + (f" x{threads}" if threads else ""), "repeat": rep,
                           "wall_s": round(wall, 2), "load_s": result.seconds, "docs_per_s": round(n / wall),
                           "loadavg_1m": round(load, 2)}
                    results["runs"].append(row)
                    print(json.dumps(row), flush=True)
                    client.indices.delete(index=result.index)
            backend.drop_vectors("dense")
            client.indices.delete(index=index)
    finally:
        client.close()
        node.stop()
    print("\nmedian per size and path:")
    summary = {}
    for n in sorted({r["n"] for r in results["runs"]}):
        for path in dict.fromkeys(r["path"] for r in results["runs"]):
            walls = [r["wall_s"] for r in results["runs"] if r["n"] == n and r["path"] == path]
            if walls:
                wall = statistics.median(walls)
                summary[f"{n} {path}"] = {"wall_s": wall, "docs_per_s": round(n / wall)}
                print(f"{n:>6} docs  {path:<10} {wall:8.2f} s  {n / wall:8.0f} docs/s  (runs: {walls})")
    results["median"] = summary
    results["loadavg_end"] = os.getloadavg()
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "publish_paths.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
