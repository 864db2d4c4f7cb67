"""Scale: peak memory and throughput of the streaming stages at 100k, 1M (and 10M) documents.

Synthetic passages (50-250 words drawn from a fixed 30k-word vocabulary with Zipf frequencies)
are written to a JSONL file as a stream; then each stage runs in a fresh process, so its peak
RSS is its own:

* ``store``: the corpus is read once (``corpus.iter_corpus``, a generator) into the embedded
  store (SQLite + tantivy) by ``EmbeddedBackend.create``;
* ``encode``: every document is encoded in resumable chunks into a memory-mapped vector file
  (``chunked.encode_store``) by a tiny random-weight BERT (like the test fixtures), so the
  pipeline's own costs show rather than a real model's.

``--kill-test`` runs the encode stage in a subprocess, ``kill -9``s it once some chunks are
done, reruns it and checks that it resumed (skipped the finished chunks) and that the counts
match.

Usage::

    nice -n 10 python bench/scale.py --docs 100000 --out bench/out/scale
    nice -n 10 python bench/scale.py --docs 1000000 --out bench/out/scale --kill-test
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, format_table, machine_info, run_isolated, write_json  # noqa: E402

VOCAB = 30000


def vocabulary(seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words: set[str] = set()
    while len(words) < VOCAB:
        words.add("".join(rng.choice(letters) for _ in range(rng.randint(2, 10))))
    return sorted(words, key=lambda w: (len(w), w))


def write_corpus(path: Path, n: int, seed: int = 0) -> dict:
    """``n`` passages of 50-250 Zipf-distributed words, streamed to ``path`` (JSONL)."""
    if path.exists() and path.with_suffix(".ok").exists():
        return json.loads(path.with_suffix(".ok").read_text())
    words = np.array(vocabulary(seed))
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    total_words = 0
    with open(path, "w", encoding="utf-8") as fh:
        for start in range(0, n, 10000):
            m = min(n, start + 10000) - start
            lengths = rng.integers(50, 251, size=m)
            ranks = np.minimum(rng.zipf(1.1, size=int(lengths.sum())), VOCAB) - 1
            flat = words[ranks]
            pos = 0
            for i, length in enumerate(lengths):
                text = " ".join(flat[pos : pos + length])
                pos += length
                fh.write(json.dumps({"_id": f"d{start + i}", "title": "", "text": text}) + "\n")
            total_words += int(lengths.sum())
    info = {"docs": n, "words": total_words, "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 1)}
    path.with_suffix(".ok").write_text(json.dumps(info))
    return info


def build_model(out: Path) -> Path:
    """A 2-layer, 32-wide BERT with random weights (tests/conftest.py's tiny student)."""
    if (out / "modules.json").exists():
        return out
    sys.path.insert(0, str(REPO))
    from tests.conftest import build_tiny_student

    from rgpl_adapt.records import Document

    words = vocabulary()
    docs = [Document(id=str(i), text=" ".join(words[i : i + 200])) for i in range(0, VOCAB, 100)]
    return build_tiny_student(out, docs)


def stage_store(corpus: str, index: str) -> dict:
    from rgpl_plugin.embedded import EmbeddedBackend

    from rgpl_adapt.config import CorpusConfig
    from rgpl_adapt.corpus import iter_corpus

    t0 = time.perf_counter()
    backend = EmbeddedBackend.create(index, iter_corpus(CorpusConfig(path=corpus)), overwrite=True)
    n = backend.count()
    backend.close()
    dt = time.perf_counter() - t0
    return {"stage": "store", "docs": n, "seconds": round(dt, 1), "docs_per_s": round(n / dt)}


def stage_encode(model: str, index: str, vectors: str, chunk: int) -> dict:
    import torch

    from rgpl_adapt.chunked import encode_store
    from rgpl_adapt.encoding import SentenceTransformerEncoder, embedding_dim
    from rgpl_adapt.models import load_sentence_transformer

    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    st = load_sentence_transformer(model, max_seq_len=64)
    t0 = time.perf_counter()
    res = encode_store(SentenceTransformerEncoder(st), index, vectors, dim=embedding_dim(st), chunk_size=chunk,
                       batch_size=256)
    dt = time.perf_counter() - t0
    done = res.encoded_chunks * chunk
    return {"stage": "encode", "docs": res.count, "seconds": round(dt, 1), "docs_per_s": round(min(done, res.count) / dt),
            "chunks": res.chunks, "encoded_chunks": res.encoded_chunks, "skipped_chunks": res.skipped_chunks,
            "vectors_mb": round(res.count * res.dim * 4 / 2**20, 1)}


def kill_test(model: Path, index: Path, vectors: Path, chunk: int) -> dict:
    """Kill -9 the encode stage once a chunk is done, rerun it; it must resume and the counts match.

    Needs at least two chunks (``--chunk`` below half the corpus), else nothing is left to kill.
    """
    import shutil

    shutil.rmtree(vectors, ignore_errors=True)
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import scale; "
            f"print(scale.stage_encode({str(model)!r}, {str(index)!r}, {str(vectors)!r}, {chunk}))")
    proc = subprocess.Popen([sys.executable, "-c", code])
    done = vectors / "done"
    while proc.poll() is None and (not done.exists() or len(list(done.iterdir())) < 1):
        time.sleep(0.2)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = len(list(done.iterdir())) if done.exists() else 0
    rerun = run_isolated(stage_encode, str(model), str(index), str(vectors), chunk)
    ok = killed and rerun["skipped_chunks"] == killed_after > 0 and rerun["skipped_chunks"] + rerun["encoded_chunks"] == rerun["chunks"]
    vec = np.load(vectors / "vectors.npy", mmap_mode="r")
    nonzero = int(np.count_nonzero(np.abs(vec).sum(axis=1) > 0))
    return {"killed": killed, "chunks_done_when_killed": killed_after, "rerun_skipped": rerun["skipped_chunks"],
            "rerun_encoded": rerun["encoded_chunks"], "docs": rerun["docs"], "vectors_filled": nonzero,
            "resumed": ok and nonzero == rerun["docs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[100000])
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "scale"))
    ap.add_argument("--chunk", type=int, default=65536)
    ap.add_argument("--kill-test", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(out / "tiny-model")
    rows, results = [], {"machine": machine_info(), "runs": []}
    for n in args.docs:
        run = out / f"n{n}"
        run.mkdir(exist_ok=True)
        corpus = write_corpus(run / "corpus.jsonl", n)
        for res in (run_isolated(stage_store, str(run / "corpus.jsonl"), str(run / "index")),
                    run_isolated(stage_encode, str(model), str(run / "index"), str(run / "vectors"), args.chunk)):
            res["corpus_mb"] = round(corpus["bytes"] / 2**20, 1)
            rows.append(res)
            results["runs"].append(res)
        if args.kill_test:
            kt = kill_test(model, run / "index", run / "vectors-kill", args.chunk)
            results.setdefault("kill_test", {})[n] = kt
            print(f"kill test at {n} docs: {kt}")
        write_json(out / "scale.json", results)
    print(format_table(rows, ["stage", "docs", "corpus_mb", "seconds", "docs_per_s", "peak_rss_mb", "vectors_mb"]))


if __name__ == "__main__":
    main()
