"""Scale: peak memory and throughput of each streaming stage at 100k, 1M (and 10M) documents.

Synthetic passages (50-250 words drawn from a fixed 30k-word vocabulary with Zipf frequencies)
are written to a JSONL file as a stream; then each stage runs as its own process (``--stage``), so
its peak RSS (``VmHWM``, which a fresh exec resets) is its own:

* ``store``: the corpus read once (``corpus.iter_corpus``, a generator, no id set) into the embedded
  store (SQLite + tantivy) by ``EmbeddedBackend.create`` in resumable chunks (ids de-duplicated by SQLite);
* ``sample``: what generation and training read: GPL's seeded sample of passages (``plan_sample``: 250k
  queries' worth) read back by ord in generation-sized chunks, and one training round's triple texts by id;
* ``encode``: every document encoded in resumable chunks into a memory-mapped vector file
  (``chunked.encode_store``, what mining, remining and serving run) by a tiny random-weight BERT (2 layers,
  32-d, a whole-word vocabulary of the synthetic words), so the pipeline's own costs show, not a model's;
* ``serve``: the vector file adopted as the ``dense`` space (block copy; ids resolved by ord, no id list),
  then 1,000 k-NN queries (exact up to 200k vectors, usearch HNSW above: the index is built here);
* ``eval``: what ``rgpl-adapt eval`` and readapt's promotion read, with the ``bytes`` encoder (the pipeline's
  own cost): ``compare.corpus_vectors`` (the store encoded in resumable chunks into a memory map) and exact
  search of 1,000 queries (k = 101), then ``promotion.encoder_mrr`` over every document (its worst case).

* ``generate``, ``mine``, ``train``: the adaptation stages, run by the pipeline's own stage code in a run
  folder on this store (``scale_pipeline``: GPL's sample through a tiny T5, mining against the whole store,
  a few training steps reading their triples' texts by id).

``--kill`` (instead of the measurements) runs each stage from scratch, ``kill -9``s it as soon as its first chunk is recorded
(serve: once its vectors are adopted, during the index build; generate: its first part; mine: its first
encoded chunk; train: its first checkpoint), reruns it and checks that no finished chunk was redone and
that the counts match.

``--device`` (auto, cpu, cuda) runs the models of ``encode``, ``generate``, ``mine`` and ``train`` there; the
results record the device and the GPU's name, and on CUDA each stage's peak GPU memory
(``torch.cuda.max_memory_allocated``) next to its peak RSS (CPU memory).

Usage::

    nice -n 10 python bench/scale.py --docs 100000 1000000 --out bench/out/scale
    nice -n 10 python bench/scale.py --docs 1000000 --kill --stages store encode serve   # on its own copies
    nice -n 10 python bench/scale.py --docs 100000 1000000 --stages generate mine train --encoder bytes
    nice -n 10 python bench/scale.py --docs 1000000 --kill --stages generate mine train --encoder bytes
    python bench/scale.py --docs 1000000 --stages generate mine train --device cuda
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, format_table, machine_info, write_json  # noqa: E402
from scale_pipeline import (  # noqa: E402
    FOLDER,
    PIPE_STAGES,
    STAGE_FUNCTIONS,
    build_generator,
    build_teacher,
    kill_pipeline,
)

VOCAB = 30000
STAGES = ("store", "sample", "encode", "serve", "eval", *PIPE_STAGES)


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
    """A 2-layer, 32-wide BERT with random weights and a whole-word WordPiece vocabulary of the synthetic words.

    Each synthetic word is one token (as most words are for a real 30k-vocabulary tokenizer), so
    tokenizing costs what it costs on real text rather than the ~4 pieces per word that the test
    fixtures' 400-piece vocabulary would give.
    """
    if (out / "modules.json").exists():
        return out
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(specials + vocabulary())}
    tok = Tokenizer(WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    tok.decoder = decoders.WordPiece()
    hf_dir = out.parent / (out.name + "-hf")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]", model_max_length=512).save_pretrained(hf_dir)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=64)
    SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")],
                        device="cpu").save(str(out))
    return out


def _peak_mb() -> dict:
    """This process's peak and current resident memory (``/proc/self/status``, MB)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "RssAnon", "RssFile"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return {"peak_rss_mb": out.get("VmHWM"), "anon_mb_at_end": out.get("RssAnon"), "file_mb_at_end": out.get("RssFile")}


def stage_store(corpus: str, index: str, chunk: int) -> dict:
    from rgpl_plugin.embedded import EmbeddedBackend

    from rgpl_adapt.config import CorpusConfig
    from rgpl_adapt.corpus import iter_corpus

    t0 = time.perf_counter()
    backend = EmbeddedBackend.create(index, iter_corpus(CorpusConfig(path=corpus), dedup=False), overwrite=True,
                                     resume_key=f"scale:{corpus}", chunk_size=chunk)
    n, build, dups = backend.count(), backend.meta["build"], backend.duplicate_ids
    backend.close()
    dt = time.perf_counter() - t0
    done = min(n, build["chunks_built"] * chunk)
    return {"stage": "store", "docs": n, "duplicates": dups, "seconds": round(dt, 1), "docs_per_s": round(done / dt),
            "chunks": build["chunks"], "chunks_skipped": build["chunks_resumed"], "chunks_done": build["chunks_built"]}


def stage_sample(index: str) -> dict:
    from rgpl_plugin.docstore import DocStore, TextsById

    from rgpl_adapt.config import GenerationConfig
    from rgpl_adapt.generation import plan_sample

    gc = GenerationConfig()
    t0 = time.perf_counter()
    store = DocStore(index)
    n = store.count()
    sample, qpp = plan_sample(n, gc, random.Random(gc.seed))
    ords = range(n) if sample is None else sample
    chars = 0
    for start in range(0, len(ords), 256):  # the generation stage's chunk (max(batch 32 x 8, 256))
        chars += sum(len(d.full_text()) for d in store.by_ords(ords[start : start + 256]))
    t_gen = time.perf_counter() - t0
    rng = random.Random(1)  # one CPU-scale training round: 300 steps x 16 triples, positive + negative
    ids = [f"d{rng.randrange(n)}" for _ in range(2 * 300 * 16)]
    t1 = time.perf_counter()
    held = TextsById(store).load(ids)
    t_train = time.perf_counter() - t1
    return {"stage": "sample", "docs": n, "sampled": len(ords), "queries_per_passage": qpp,
            "seconds": round(t_gen + t_train, 1), "docs_per_s": round(len(ords) / t_gen),
            "train_texts": held, "train_texts_seconds": round(t_train, 2), "sample_mb": round(chars / 2**20, 1)}


class ByteEncoder:
    """No model at all (``--kill-encoder bytes``): a 32-d vector of each text's first 256 bytes, folded.

    For the kill runs, which test resumption rather than speed: it costs microseconds per text, so a
    1M kill run fits where the tiny BERT (~300 docs/s on this loaded machine) would take an hour.
    """

    def encode(self, texts, batch_size: int = 64, progress=None) -> np.ndarray:
        raw = b"".join(t.encode("utf-8")[:256].ljust(256, b" ") for t in texts)
        grid = np.frombuffer(raw, dtype=np.uint8).reshape(len(texts), 8, 32).astype(np.float32)
        return grid.sum(axis=1) / 2048.0


def stage_encode(model: str, index: str, vectors: str, chunk: int, device: str = "cpu") -> dict:
    from rgpl_adapt.chunked import encode_store

    if model == "bytes":
        encoder, dim = ByteEncoder(), 32
    else:
        import torch

        from rgpl_adapt.encoding import SentenceTransformerEncoder, embedding_dim
        from rgpl_adapt.models import load_sentence_transformer

        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
        st = load_sentence_transformer(model, device, max_seq_len=64)
        encoder, dim = SentenceTransformerEncoder(st), embedding_dim(st)
    t0 = time.perf_counter()
    res = encode_store(encoder, index, vectors, dim=dim, chunk_size=chunk, batch_size=256, key=f"scale:{model}")
    dt = time.perf_counter() - t0
    done = min(res.count, res.encoded_chunks * chunk)
    return {"stage": "encode", "docs": res.count, "seconds": round(dt, 1), "docs_per_s": round(done / dt),
            "chunks": res.chunks, "chunks_done": res.encoded_chunks, "chunks_skipped": res.skipped_chunks,
            "vectors_mb": round(res.count * res.dim * 4 / 2**20, 1)}


def stage_serve(index: str, vectors: str) -> dict:
    from rgpl_plugin.embedded import EmbeddedBackend

    t0 = time.perf_counter()
    backend = EmbeddedBackend.open(index)
    n = backend.adopt_vectors("dense", Path(vectors) / "vectors.npy")
    t_adopt = time.perf_counter() - t0
    queries = np.random.default_rng(0).standard_normal((1000, backend.meta["spaces"]["dense"]["dim"])).astype(np.float32)
    t1 = time.perf_counter()
    backend.knn_search("dense", queries[:1], 10)  # exact: loads the matrix; HNSW: builds (or loads) the graph
    t_index = time.perf_counter() - t1
    t2 = time.perf_counter()
    hits = backend.knn_search("dense", queries, 10)
    t_search = time.perf_counter() - t2
    backend.close()
    return {"stage": "serve", "docs": n, "seconds": round(time.perf_counter() - t0, 1), "docs_per_s": round(n / (t_adopt + t_index)),
            "adopt_seconds": round(t_adopt, 1), "index_seconds": round(t_index, 1),
            "knn_qps": round(1000 / t_search), "hits": sum(len(h) for h in hits),
            "search": "hnsw" if n > 200_000 else "exact"}


def stage_eval(index: str, out: str) -> dict:
    import shutil
    from contextlib import ExitStack

    from rgpl_plugin.docstore import DocStore
    from rgpl_plugin.embedded import EmbeddedBackend

    from rgpl_adapt.compare import corpus_vectors
    from rgpl_adapt.neighbours import exact_search
    from rgpl_adapt.progress import silent
    from rgpl_adapt.promotion import candidate_ords, encoder_mrr
    from rgpl_adapt.records import GeneratedQuery

    shutil.rmtree(out, ignore_errors=True)  # measure whole encodings, not reused ones
    enc = ByteEncoder()
    backend, store = EmbeddedBackend.open(index), DocStore(index)
    n = store.count()
    held_docs = store.by_ords(sorted(random.Random(0).sample(range(n), 1000)))
    held = [GeneratedQuery(f"q{i}", " ".join(d.text.split()[:12]), d.id) for i, d in enumerate(held_docs)]
    t0 = time.perf_counter()
    with ExitStack() as scratch:
        ids, matrix = corpus_vectors(backend, "zero-shot", enc, silent, scratch, out=Path(out), model="bytes")
        t_encode = time.perf_counter() - t0
        hits = exact_search(ids, matrix, enc.encode([q.text for q in held]), 101)
        t_search = time.perf_counter() - t0 - t_encode
    t1 = time.perf_counter()
    mrr = encoder_mrr(enc, index, candidate_ords(store, held, n), held, out=Path(out) / "promotion", key="bytes")
    t_mrr = time.perf_counter() - t1
    backend.close()
    store.close()
    return {"stage": "eval", "docs": n, "seconds": round(time.perf_counter() - t0, 1),
            "docs_per_s": round(n / t_encode), "search_seconds": round(t_search, 1), "hits": sum(map(len, hits)),
            "promotion_seconds": round(t_mrr, 1), "promotion_mrr": round(mrr, 4)}


def _stage_child(name: str, kwargs: dict) -> None:
    fn = {"store": stage_store, "sample": stage_sample, "encode": stage_encode, "serve": stage_serve,
          "eval": stage_eval, **STAGE_FUNCTIONS}[name]
    out = fn(**kwargs)
    out.update(_peak_mb())
    device = kwargs.get("device", "cpu")
    out["device"] = device
    if device.startswith("cuda"):
        out.update(_gpu_peak_mb())
    print("RESULT " + json.dumps(out), flush=True)


def _gpu_peak_mb() -> dict:
    """This process's peak GPU memory held by torch tensors (``max_memory_allocated``) and reserved, MB."""
    import torch

    return {"gpu_peak_allocated_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1),
            "gpu_peak_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1)}


def resolve_bench_device(spec: str) -> tuple[str, str | None]:
    """``auto`` / ``cpu`` / ``cuda`` to the device the stages get, and the GPU's name (None on CPU)."""
    import torch

    device = ("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no GPU is visible to torch (torch.cuda.is_available() is False)")
    return device, torch.cuda.get_device_name(0) if device == "cuda" else None


def run_stage(name: str, kwargs: dict, *, kill_when=None) -> dict:
    """Run a stage in a fresh process; with ``kill_when`` (a probe returning finished chunks), ``kill -9`` it
    as soon as the probe is positive and return ``{"killed": ..., "done_at_kill": ...}`` instead."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "adapter"), str(REPO / "plugin"),
                                                      os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--kwargs", json.dumps(kwargs)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    if kill_when is not None:
        while proc.poll() is None and kill_when() < 1:
            time.sleep(0.2)
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"killed": killed, "done_at_kill": kill_when()}
    out, _ = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"stage {name} failed (exit {proc.returncode})")
    return json.loads(next(line for line in out.splitlines()[::-1] if line.startswith("RESULT "))[7:])


def _sqlite_chunks(path: Path) -> int:
    try:
        db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=0.1)
    except (sqlite3.Error, OSError):
        return 0
    try:  # closed at once: an open reader would keep the builder from leaving WAL mode
        return int(db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        db.close()


def _markers(folder: Path) -> int:
    return len(list(folder.iterdir())) if folder.is_dir() else 0


def kill_run(run: Path, model: Path | str, stages, chunk: int, save) -> None:
    """kill -9 each stage after its first recorded chunk, rerun it: nothing finished is redone, counts match.

    ``save(stage, result)`` is called as each stage's check is done.
    """
    import shutil

    out = _Saving(save)
    corpus = run / "corpus.jsonl"
    index, vectors = run / "index-kill", run / "vectors-kill"
    building = run / ".index-kill.building"
    if not set(stages) & {"store", "encode", "serve"}:
        return  # the pipeline stages: kill_pipeline (they read the store; the corpus file may be gone)
    n_docs = sum(1 for _ in open(corpus, "rb"))
    if "store" in stages:
        shutil.rmtree(index, ignore_errors=True)
        shutil.rmtree(building, ignore_errors=True)
        kwargs = {"corpus": str(corpus), "index": str(index), "chunk": chunk}
        k = run_stage("store", kwargs, kill_when=lambda: _sqlite_chunks(building / "docs.sqlite"))
        r = run_stage("store", kwargs)
        out["store"] = {**k, **r, "resumed": k["killed"] and r["chunks_skipped"] == k["done_at_kill"] > 0
                        and r["chunks_skipped"] + r["chunks_done"] == r["chunks"] and r["docs"] == n_docs}
    if "encode" in stages:
        shutil.rmtree(vectors, ignore_errors=True)
        kwargs = {"model": str(model), "index": str(index), "vectors": str(vectors), "chunk": chunk}
        k = run_stage("encode", kwargs, kill_when=lambda: _markers(vectors / "done"))
        r = run_stage("encode", kwargs)
        vec = np.load(vectors / "vectors.npy", mmap_mode="r")
        filled = sum(int(np.count_nonzero(np.abs(vec[s : s + 65536]).sum(axis=1) > 0)) for s in range(0, len(vec), 65536))
        out["encode"] = {**k, **r, "vectors_filled": filled,
                         "resumed": k["killed"] and r["chunks_skipped"] == k["done_at_kill"] > 0
                         and r["chunks_skipped"] + r["chunks_done"] == r["chunks"] and filled == r["docs"] == n_docs}
    if "serve" in stages:
        kwargs = {"index": str(index), "vectors": str(vectors)}
        adopted = index / "vectors" / "dense" / "rows.json"
        adopted.unlink(missing_ok=True)
        k = run_stage("serve", kwargs, kill_when=lambda: int(adopted.exists()))
        r = run_stage("serve", kwargs)
        out["serve"] = {**k, **r, "resumed": r["docs"] == n_docs and r["hits"] == 10_000,
                        "note": "no chunks: adopting the vectors and building the index restart whole"}


class _Saving(dict):
    """A dict that hands each item to ``save`` as it is set."""

    def __init__(self, save) -> None:
        super().__init__()
        self.save = save

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.save(key, value)


def project(rows: list[dict], target: int = 10_000_000) -> list[dict]:
    """Per stage, a line through the two largest measured sizes: seconds = a + b N, peak = p + q N."""
    out = []
    def kind(r: dict) -> tuple:
        return r["stage"], r.get("encoder", ""), r.get("device", "cpu")

    for stage, encoder, device in dict.fromkeys(map(kind, rows)):
        pts = sorted(((r["docs"], r) for r in rows if kind(r) == (stage, encoder, device)), key=lambda p: p[0])
        if len(pts) < 2:
            continue
        (n1, r1), (n2, r2) = pts[-2], pts[-1]
        b = (r2["seconds"] - r1["seconds"]) / (n2 - n1)
        q = (r2["peak_rss_mb"] - r1["peak_rss_mb"]) / (n2 - n1)
        out.append({"stage": stage, "encoder": encoder, "device": device, "docs": target,
                    "seconds": round(r2["seconds"] + b * (target - n2)),
                    "peak_rss_mb": round(r2["peak_rss_mb"] + q * (target - n2)),
                    "formula": f"s = {r2['seconds']:.0f} + {b * 1e6:.1f} us x (N - {n2}); "
                               f"peak = {r2['peak_rss_mb']:.0f} MB + {q * 1e6:.1f} B x (N - {n2})"})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, nargs="+", default=[100000])
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "scale"))
    ap.add_argument("--chunk", type=int, default=50_000, help="documents per resumable chunk (store and encode)")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--kill", action="store_true", help="instead: kill -9 each stage after its first chunk, rerun it")
    ap.add_argument("--encoder", choices=["model", "bytes"], default="model",
                    help="the encode stage's encoder: the tiny BERT, or no model at all (bytes: the pipeline's own cost)")
    ap.add_argument("--train-steps", type=int, default=100,
                    help="the train stage's steps (a checkpoint every quarter)")
    ap.add_argument("--max-queries", type=int, default=250_000,
                    help="generation's query budget (GPL's 250k; lower only for smoke runs on small corpora)")
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu",
                    help="where the models of encode, generate, mine and train run (auto: cuda when visible)")
    ap.add_argument("--results", default="scale.json", help="JSON file under --out (kill runs: use another)")
    ap.add_argument("--stage", help=argparse.SUPPRESS)  # internal: run one stage in this process
    ap.add_argument("--kwargs", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        _stage_child(args.stage, json.loads(args.kwargs))
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_model(out / "tiny-model-words")
    models = {"student": str(model), "generator": str(build_generator(out / "tiny-t5-words", vocabulary())),
              "teacher": str(build_teacher(out / "tiny-ce-words", vocabulary()))}
    results_path = out / args.results
    results = json.loads(results_path.read_text()) if results_path.exists() else {"runs": []}
    results["machine"] = machine_info()
    device, gpu = resolve_bench_device(args.device)
    results["device"], results["gpu"] = device, gpu
    for n in args.docs:
        run = out / f"n{n}"
        run.mkdir(exist_ok=True)
        stored = (run / "corpus.ok").exists() and (run / "index" / "backend.json").exists()
        if "store" in args.stages or not stored:
            corpus = write_corpus(run / "corpus.jsonl", n)
        else:  # the other stages read the store: its corpus file may have been removed to save disk
            corpus = json.loads((run / "corpus.ok").read_text())
        idx, vec = str(run / "index"), str(run / "vectors")
        encoder = str(model) if args.encoder == "model" else "bytes"
        todo = {"store": {"corpus": str(run / "corpus.jsonl"), "index": idx, "chunk": args.chunk},
                "sample": {"index": idx},
                "encode": {"model": encoder, "index": idx, "vectors": vec, "chunk": args.chunk, "device": device},
                "serve": {"index": idx, "vectors": vec},
                "eval": {"index": idx, "out": str(run / "eval")}}
        pipe = {"corpus": str(run / "corpus.jsonl"), "index": idx, "models": models, "chunk": args.chunk,
                "steps": args.train_steps, "max_queries": args.max_queries, "device": device}
        todo.update({s: {**pipe, "run": str(run / "pipe"), "log": str(run / f"pipe-{s}.log")}
                     for s in PIPE_STAGES})
        todo["mine"]["encoder"] = args.encoder
        for stage in STAGES:
            if stage not in args.stages or args.kill:
                continue
            if stage == "encode":
                import shutil

                shutil.rmtree(vec, ignore_errors=True)  # measure a whole encode, not a resumed one
            if stage in PIPE_STAGES:  # a whole stage, not a resumed or skipped one (upstream stages are kept)
                import shutil

                shutil.rmtree(run / "pipe" / FOLDER[stage], ignore_errors=True)
                Path(todo[stage]["log"]).unlink(missing_ok=True)
            res = run_stage(stage, todo[stage])
            res.update(corpus_mb=round(corpus["bytes"] / 2**20, 1), loadavg=[round(x, 1) for x in os.getloadavg()],
                       encoder="tiny-bert" if args.encoder == "model" and stage != "eval" else "bytes (no model)")
            if stage in ("generate", "train"):
                res["encoder"] = {"generate": "tiny-t5", "train": "tiny-bert + tiny-ce"}[stage]
            res["gpu"] = gpu if res["device"].startswith("cuda") else None
            same = (stage, n, res["encoder"], res["device"])
            results["runs"] = [r for r in results["runs"]
                               if (r["stage"], r["docs"], r.get("encoder"), r.get("device", "cpu")) != same] + [res]
            print(json.dumps(res), flush=True)
            write_json(results_path, results)
        if args.kill:
            def save(stage: str, res: dict) -> None:
                results.setdefault("kill", {}).setdefault(str(n), {})[stage] = res
                print(json.dumps({stage: res}), flush=True)
                write_json(results_path, results)

            kill_run(run, encoder, args.stages, args.chunk, save)
            if set(args.stages) & set(PIPE_STAGES):
                if not (run / "index" / "backend.json").exists():
                    run_stage("store", todo["store"])
                kill_pipeline({**todo["mine"], "run": str(run / "pipe-kill")}, args.stages, run_stage, save)
    rows = sorted(results["runs"], key=lambda r: (STAGES.index(r["stage"]), r.get("encoder", ""),
                                                  r.get("device", "cpu"), r["docs"]))
    results["projection"] = project(rows)
    write_json(results_path, results)
    cols = ["stage", "encoder", "device", "docs", "corpus_mb", "seconds", "docs_per_s", "queries_per_s",
            "peak_rss_mb", "gpu_peak_allocated_mb", "vectors_mb"]
    print(format_table(rows, cols))
    print(format_table(results["projection"], ["stage", "encoder", "docs", "seconds", "peak_rss_mb", "formula"]))


if __name__ == "__main__":
    main()
