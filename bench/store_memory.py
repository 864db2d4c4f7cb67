"""Anonymous memory of the embedded store build (SQLite + sharded tantivy BM25) over time, by phase.

    python bench/store_memory.py --docs 1000000 4000000 [--out bench/out/store_memory] [--shard-docs 1000000]

For each N: writes the synthetic corpus of ``bench/scale.py`` (Zipf words, 50-250 per passage; reused
when present), runs ``EmbeddedBackend.create`` on it in a fresh process, and samples ``RssAnon`` (heap
and thread arenas; not the memory-mapped files the kernel can drop) every 0.2 s, labelled by phase:
build (chunks into SQLite and the BM25 shards), close writer (a shard's last merges), id table, opened.
Prints one JSON line per N: peak and last value per phase, and the seconds of the build. A flat build
has the same peak at every N (see bench/RESULTS.md, "The BM25 build made flat").
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _anon_mb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) // 1024
    raise RuntimeError("no RssAnon in /proc/self/status: Linux only")


def measure(corpus: Path, index: Path, shard_docs: int) -> dict:
    """One build of ``corpus`` into ``index`` in this process, sampled by phase."""
    import rgpl_plugin.bm25_index as bm25
    import rgpl_plugin.embedded as embedded
    from rgpl_adapt.config import CorpusConfig
    from rgpl_adapt.corpus import iter_corpus

    phase = ["build"]
    samples: list[tuple[str, int]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((phase[0], _anon_mb()))
            time.sleep(0.2)

    def labelled(owner, name: str, label: str, after: str | None = None) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            phase[0] = label
            try:
                return original(*args, **kwargs)
            finally:
                if after:
                    phase[0] = after

        setattr(owner, name, wrapper)

    labelled(bm25.ShardedBm25Writer, "_close_writer", "close writer", after="build")
    labelled(embedded, "_write_id_table", "id table")
    labelled(embedded.EmbeddedBackend, "__init__", "opened")
    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    backend = embedded.EmbeddedBackend.create(
        index, iter_corpus(CorpusConfig(path=str(corpus)), dedup=False), overwrite=True, bm25_shard_docs=shard_docs
    )
    seconds = time.perf_counter() - t0
    time.sleep(0.5)
    done.set()
    thread.join()
    by_phase: dict[str, list[int]] = {}
    for label, mb in samples:
        by_phase.setdefault(label, []).append(mb)
    return {
        "docs": backend.count(),
        "shard_docs": shard_docs,
        "seconds": round(seconds, 1),
        "build": backend.meta["build"],
        "peak_anon_mb": max(mb for _, mb in samples),
        "peak_anon_mb_by_phase": {k: max(v) for k, v in by_phase.items()},
        "last_anon_mb_by_phase": {k: v[-1] for k, v in by_phase.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--out", type=Path, default=HERE / "out" / "store_memory")
    ap.add_argument("--shard-docs", type=int, default=None, help="BM25 shard size (default: the library's)")
    ap.add_argument("--keep-index", action="store_true", help="keep each built index (disk: ~90 MB per million)")
    ap.add_argument("--one", nargs=3, metavar=("CORPUS", "INDEX", "SHARD_DOCS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:  # the child process: one build, one JSON line
        corpus, index, shard = args.one
        print(json.dumps(measure(Path(corpus), Path(index), int(shard))), flush=True)
        return
    sys.path.insert(0, str(HERE))
    import shutil

    import scale
    from rgpl_plugin.bm25_index import SHARD_DOCS

    args.out.mkdir(parents=True, exist_ok=True)
    for n in args.docs:
        corpus = args.out / f"corpus-{n}.jsonl"
        scale.write_corpus(corpus, n)
        index = args.out / f"index-{n}"
        line = subprocess.run(
            [sys.executable, __file__, "--one", str(corpus), str(index), str(args.shard_docs or SHARD_DOCS)],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]
        print(line, flush=True)
        if not args.keep_index:
            shutil.rmtree(index, ignore_errors=True)


if __name__ == "__main__":
    main()
