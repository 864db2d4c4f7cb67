"""Exact top-k search speed: numpy on the CPU (rgpl_plugin.vectors.exact_topk) vs TorchTopk on a device.

    python bench/topk_speed.py --rows 1000000 --dim 32 --queries 24000 --k 51 --device cuda [--cpu-queries 1024]

Random float32 vectors (a memory map is not needed for the comparison). The CPU side searches
``--cpu-queries`` of the queries and is extrapolated linearly to all of them (search cost is linear in
the queries); the device side searches all, after a warm-up call that also moves the vectors there.
Prints one JSON line: seconds and inner products per second of each, the speed-up, and how far the
device's rows equal numpy's on the CPU's queries (near-ties can swap: the two sum in other orders).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--queries", type=int, default=4096)
    ap.add_argument("--cpu-queries", type=int, default=512)
    ap.add_argument("--k", type=int, default=51)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--memmap", help="save the vectors to this .npy and search its memory map (as mining does)")
    args = ap.parse_args()
    from rgpl_plugin.vectors import exact_topk

    from rgpl_adapt.torch_topk import TorchTopk

    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(args.rows, args.dim)).astype(np.float32)
    queries = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
    if args.memmap:
        np.save(args.memmap, matrix)
        matrix = np.load(args.memmap, mmap_mode="r")
    cpu_q = queries[: args.cpu_queries]
    t0 = time.perf_counter()
    cpu_rows, _ = exact_topk(matrix, cpu_q, args.k)
    cpu_s = (time.perf_counter() - t0) * args.queries / len(cpu_q)
    search = TorchTopk(matrix, args.device)
    t0 = time.perf_counter()
    search(queries[:32], args.k)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows, _ = search(queries, args.k)
    dev_s = time.perf_counter() - t0
    products = args.rows * args.queries
    print(json.dumps({
        "rows": args.rows, "dim": args.dim, "queries": args.queries, "k": args.k, "device": args.device,
        "cpu_s_extrapolated": round(cpu_s, 2), "cpu_products_per_s": round(products / cpu_s),
        "device_s": round(dev_s, 3), "device_warmup_s": round(warm_s, 3), "device_products_per_s": round(products / dev_s),
        "speedup": round(cpu_s / dev_s, 1), "resident": search.resident, "memmap": bool(args.memmap),
        "rows_equal_on_cpu_queries": bool(np.array_equal(rows[: len(cpu_q)], cpu_rows)),
        "overlap_at_k": round(float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(rows[: len(cpu_q)].tolist(),
                                                                                     cpu_rows.tolist())])), 6),
    }))


if __name__ == "__main__":
    main()
