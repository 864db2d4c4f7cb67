"""Export the adapted student: a sentence-transformers folder plus ONNX graphs checked against torch.

Layout written by :func:`export_model` under ``out_dir``::

    sentence-transformers/   model.save() of the student (torch, for further training)
    onnx/model.onnx          portable graph: transformer + Pooling (+ Normalize), standard ONNX ops only,
                             opset 17 / IR <= 8 (what OpenSearch ML Commons' onnxruntime 1.14/1.16 loads)
    onnx/model_opt.onnx      the same graph fused by onnxruntime's transformer optimizer (Attention,
                             SkipLayerNormalization, BiasGelu, ...): what OnnxEncoder serves with by default
    onnx/model_int8.onnx     optional dynamic int8 quantization of the fused graph
    onnx/model_fp16.onnx     optional float16 copy of the fused graph (float32 inputs/outputs) for CUDA
    onnx/tokenizer.json      the fast tokenizer, truncation set to the model's max_seq_length
    onnx/rgpl_onnx.json      pooling, normalize, dim, max_seq_len, similarity "dot", input names, graphs...

Inference needs only ``tokenizers`` + ``onnxruntime`` (:class:`rgpl_adapt.onnx_encoder.OnnxEncoder`).

Exporter choice. The model is switched to eager attention and exported with the TorchScript exporter
(opset 17): that writes the MatMul/Softmax attention pattern which onnxruntime's optimizer fuses into
one ``Attention`` node per layer (the dynamo exporter's SDPA decomposition is not recognised: 0 of 6
MiniLM layers fused), and an IR version old runtimes accept. The tracer's known weakness, freezing
Python branches on tensor values such as "is there any padding?", is covered: the sample batch has two
texts of different lengths (the padded path is traced), and the parity check encodes padded batches
*and* single unpadded texts. When tracing fails, the dynamo exporter (opset 18) is the fallback, its
IR version capped at ``max_ir_version``.

Graph outputs. Output 0 is ``token_embeddings`` (batch, seq, hidden) and output 1
``sentence_embedding`` (batch, dim). Our encoder asks for ``sentence_embedding`` by name; OpenSearch
ML Commons' ONNX text-embedding translator reads output 0 as token embeddings and pools it itself
(see :func:`package_for_ml_commons`), so the order matters.

Parity. At export time ``sample_texts`` are encoded by the torch model (``SentenceTransformer.encode``,
eval, fp32) and by onnxruntime through the shipped tokenizer.json, with the portable and with the fused
graph; the max abs difference must not exceed ``cfg.tolerance``, or :class:`ExportError` is raised
(portable graph) or the fused graph is dropped with a warning. Long texts check truncation too.

int8. ``onnxruntime.quantization.quantize_dynamic`` of the fused graph, per-channel QInt8 weights on
``MatMul`` and the fused ``Attention`` projections (per-tensor scales lost too much, see
:func:`quantize_int8`). ``Gather`` (the embedding lookup) stays fp32: a lookup costs no arithmetic. The
int8 graph's max abs diff and mean cosine to the fp32 graph are recorded. We fail only when the mean
cosine is below :data:`INT8_MIN_COSINE` (0.95): at that point int8 vectors no longer rank like the fp32
ones; anything above is reported, not enforced, because the acceptable loss is a retrieval-quality
decision (bench/encode_speed.py --ndcg measures it on SciFact).

fp16 (``cfg.fp16``). The fused graph converted to float16 with float32 inputs and outputs
(:func:`rgpl_adapt.onnx_graphs.to_fp16`), for serving on a GPU, where OnnxEncoder picks it by default.
It is run on CPU at export against torch fp32 (onnxruntime has CPU kernels or casts for every operator
in it); a mean cosine below :data:`FP16_MIN_COSINE` (0.999) fails the export, since float16 should
only cost rounding.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rgpl_adapt.config import ExportConfig
from rgpl_adapt.devices import require
from rgpl_adapt.onnx_graphs import cap_ir_version, optimize_graph, quantize_int8, to_fp16
from rgpl_adapt.progress import ProgressFactory, silent

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

ONNX_META = "rgpl_onnx.json"
ST_SUBDIR = "sentence-transformers"
ONNX_SUBDIR = "onnx"
INT8_MIN_COSINE = 0.95
DYNAMO_MIN_OPSET = 18
OUTPUT_NAMES = ("token_embeddings", "sentence_embedding")
OPT_FILE = "model_opt.onnx"
INT8_FILE = "model_int8.onnx"
FP16_FILE = "model_fp16.onnx"
FP16_MIN_COSINE = 0.999
# ML Commons pooling names (TextEmbeddingModelConfig.PoolingMode) for sentence-transformers' modes.
_ML_COMMONS_POOLING = {
    "mean": "mean",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "max": "max",
    "weightedmean": "weightedmean",
    "cls": "cls",
    "lasttoken": "lasttoken",
}


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model (or cannot be packaged)."""


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_model` wrote and how close the ONNX graphs are to torch."""

    out_dir: str
    st_dir: str
    onnx_dir: str
    onnx_path: str
    int8_path: str | None
    dim: int
    pooling: str
    normalize: bool
    max_seq_len: int
    input_names: tuple[str, ...]
    exporter: str  # "dynamo" or "torchscript"
    opset: int
    max_abs_diff: float  # ONNX fp32 vs torch fp32 on sample_texts
    tolerance: float
    onnx_sha256: str
    ir_version: int = 0
    optimized_path: str | None = None  # the fused graph (onnxruntime-only operators) served by default
    fused_ops: dict[str, int] = field(default_factory=dict)
    optimized_max_abs_diff: float | None = None  # fused graph vs torch
    int8_max_abs_diff: float | None = None  # int8 graph vs fp32 graph
    int8_cosine: float | None = None  # mean cosine int8 vs fp32
    int8_sha256: str | None = None
    fp16_path: str | None = None
    fp16_max_abs_diff: float | None = None  # fp16 graph (run on CPU at export) vs torch fp32
    fp16_cosine: float | None = None


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest element-wise absolute difference of two same-shape arrays."""
    if a.shape != b.shape:
        raise ValueError(f"shape mismatch: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def mean_cosine(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> float:
    """Mean over rows of the cosine similarity between matching rows of ``a`` and ``b``."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    num = np.sum(a64 * b64, axis=1)
    den = np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), eps)
    return float(np.mean(num / den)) if len(a) else 1.0


# --------------------------------------------------------------------------------------------------
# model inspection


def _describe(model: SentenceTransformer) -> dict[str, Any]:
    """Pooling mode, Normalize presence, module types and tokenizer facts of an ST model."""
    modules = list(model)
    names = [type(m).__name__ for m in modules]
    first = modules[0]
    hf_model = getattr(first, "auto_model", None) or getattr(first, "model", None)
    tokenizer = getattr(model, "tokenizer", None)
    if hf_model is None or tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise ExportError(
            "export needs a sentence-transformers model whose first module is a Transformer with a fast "
            f"(tokenizers-backed) tokenizer; got modules {names}"
        )
    pooling = "none"
    for m in modules:
        if type(m).__name__ == "Pooling":
            mode = m.pooling_mode
            pooling = mode if isinstance(mode, str) else "+".join(mode)
    return {
        "modules": names,
        "pooling": pooling,
        "normalize": any(type(m).__name__ == "Normalize" for m in modules),
        "hf_model": hf_model,
        "tokenizer": tokenizer,
        "model_type": getattr(hf_model.config, "model_type", "unknown"),
    }


def _input_names(hf_model: Any, tokenizer: Any) -> tuple[str, ...]:
    """input_ids, attention_mask, plus token_type_ids when the model takes them.

    BERT-like models get token_type_ids even when the tokenizer does not emit them (it then means
    all zeros, BERT's own default), because ML Commons feeds token_type_ids to "bert"/"albert" models.
    """
    import inspect

    params = set(inspect.signature(hf_model.forward).parameters)
    names = ["input_ids", "attention_mask"]
    model_type = getattr(hf_model.config, "model_type", "")
    if "token_type_ids" in params and (
        "token_type_ids" in getattr(tokenizer, "model_input_names", []) or model_type in ("bert", "albert")
    ):
        names.append("token_type_ids")
    return tuple(names)


class _SentenceEmbeddingGraph:
    """Factory for the nn.Module exported: ST modules on explicit tensor inputs."""

    @staticmethod
    def build(model: SentenceTransformer, input_names: tuple[str, ...]) -> Any:
        import torch

        class Graph(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.st = model

            def forward(self, input_ids, attention_mask, token_type_ids=None):  # noqa: ANN001
                features = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    features["token_type_ids"] = token_type_ids
                out = self.st(features)
                return out["token_embeddings"], out["sentence_embedding"]

        return Graph().eval()


def _configured_tokenizer(tokenizer: Any, max_seq_len: int) -> Any:
    """A copy of the backend ``tokenizers.Tokenizer`` truncating/padding like sentence-transformers."""
    backend = copy.deepcopy(tokenizer.backend_tokenizer)
    direction = getattr(tokenizer, "truncation_side", "right") or "right"
    backend.enable_truncation(max_length=max_seq_len, strategy="longest_first", direction=direction)
    pad_token = tokenizer.pad_token or tokenizer.unk_token
    pad_id = tokenizer.convert_tokens_to_ids(pad_token) if pad_token is not None else 0
    backend.enable_padding(
        pad_id=int(pad_id), pad_token=pad_token or "[PAD]", direction=getattr(tokenizer, "padding_side", "right")
    )
    return backend


def _eager_attention(hf_model: Any) -> None:
    """Switch a transformers model to the plain ("eager") attention implementation.

    SDPA and flash attention export as a decomposed softmax with data-dependent masking that
    onnxruntime's transformer optimizer cannot recognise; the eager implementation exports as the
    MatMul/Softmax pattern that it fuses into one ``Attention`` node (measured on all-MiniLM-L6-v2:
    6 of 6 layers fused with eager attention, 0 with SDPA). Numerically the implementations agree.
    """
    setter = getattr(hf_model, "set_attn_implementation", None)
    try:
        if callable(setter):
            setter("eager")
            return
    except (ValueError, TypeError, AttributeError) as exc:  # an architecture without the switch
        logger.info("could not switch attention to eager (%s); exporting as loaded", exc)
        return
    config = getattr(hf_model, "config", None)
    if config is not None and hasattr(config, "_attn_implementation"):
        config._attn_implementation = "eager"


def _export_torchscript(graph: Any, sample: tuple[Any, ...], input_names: tuple[str, ...], path: Path,
                        opset: int) -> None:
    import torch

    axes = {name: {0: "batch", 1: "sequence"} for name in input_names}
    axes["token_embeddings"] = {0: "batch", 1: "sequence"}
    axes["sentence_embedding"] = {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            sample,
            str(path),
            input_names=list(input_names),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )


def _export_dynamo(graph: Any, sample: tuple[Any, ...], input_names: tuple[str, ...], path: Path,
                   opset: int) -> int:
    """The torch.export-based exporter; it implements opset >= 18 only (returns the opset used)."""
    import torch

    dynamo_opset = max(opset, DYNAMO_MIN_OPSET)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {name: {0: batch, 1: seq} for name in input_names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph,
            sample,
            None,
            input_names=list(input_names),
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=shapes,
            opset_version=dynamo_opset,
            dynamo=True,
            verbose=False,
        )
        program.save(str(path), external_data=False)
    return dynamo_opset


def _export_graph(
    graph: Any, sample: tuple[Any, ...], input_names: tuple[str, ...], path: Path, opset: int,
    order: Sequence[str] = ("torchscript", "dynamo"),
) -> tuple[str, int]:
    """Export with the first exporter of ``order`` that succeeds. Returns (exporter, opset) used.

    TorchScript comes first: it writes the classic attention pattern that onnxruntime's transformer
    optimizer fuses, at opset 17 / IR 8, which every onnxruntime since 1.14 loads (OpenSearch ML
    Commons ships 1.14 before 2.16 and 1.16.3 since). Its known weakness, tracing Python branches on
    tensor values (e.g. "is there padding?") into the graph, is covered by the sample batch (two texts
    of different lengths, so the padded path is traced) and by the parity checks in
    :func:`export_model`, which encode padded batches *and* single unpadded texts. The dynamo exporter
    (symbolic shapes, opset >= 18, IR 10) is the fallback for architectures the tracer cannot handle.
    """
    errors = []
    for exporter in order:
        try:
            if exporter == "torchscript":
                _export_torchscript(graph, sample, input_names, path, opset)
                return "torchscript", opset
            return "dynamo", _export_dynamo(graph, sample, input_names, path, opset)
        except Exception as exc:  # noqa: BLE001 - the exporters raise many kinds; try the next and log why
            errors.append(f"{exporter}: {type(exc).__name__}: {exc}")
            logger.warning("%s ONNX export failed (%s: %s)", exporter, type(exc).__name__, exc)
    raise ExportError("every ONNX exporter failed: " + "; ".join(errors))


def _write_meta(onnx_dir: Path, meta: dict[str, Any]) -> None:
    (onnx_dir / ONNX_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _parity(onnx_dir: Path, texts: list[str], ref: np.ndarray, *, optimized: bool) -> tuple[np.ndarray, float]:
    """Encode ``texts`` with a graph of ``onnx_dir`` in padded batches and the first two one by one;
    return (batched vectors, max abs diff to ``ref`` over both)."""
    from rgpl_adapt.onnx_encoder import OnnxEncoder

    enc = OnnxEncoder(onnx_dir, optimized=optimized, providers=["CPUExecutionProvider"])
    got = enc.encode(texts, batch_size=32)
    single = np.concatenate([enc.encode([t], batch_size=1) for t in texts[:2]])
    return got, max(max_abs_diff(ref, got), max_abs_diff(ref[:2], single))


# --------------------------------------------------------------------------------------------------
# public API


def export_model(
    model_or_path: SentenceTransformer | str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: ExportConfig = ExportConfig(),
    *,
    sample_texts: Sequence[str],
    progress: ProgressFactory = silent,
) -> ExportResult:
    """Save the student to ``out_dir`` as sentence-transformers and ONNX, checked against torch.

    ``model_or_path`` is a SentenceTransformer (left untouched: the export works on a fp32 CPU copy
    reloaded from the saved folder) or a path to one. ``sample_texts`` (a few, some longer than
    max_seq_length) drive the parity check. Raises :class:`ExportError` when the ONNX embeddings differ
    from torch by more than ``cfg.tolerance``, or the int8 graph's mean cosine is below 0.95.
    """
    from sentence_transformers import SentenceTransformer

    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_adapt.onnx_encoder import OnnxEncoder

    if not sample_texts:
        raise ValueError("export_model needs sample_texts for the ONNX-vs-torch parity check")
    require("onnxruntime")
    out = Path(out_dir)
    st_dir, onnx_dir = out / ST_SUBDIR, out / ONNX_SUBDIR
    steps = 4 + int(cfg.int8) + int(cfg.fp16)
    with progress(total=steps, desc="export", unit="step") as bar:
        # 1. sentence-transformers folder, then a fresh fp32 CPU copy of it for the export
        st_dir.mkdir(parents=True, exist_ok=True)
        if isinstance(model_or_path, SentenceTransformer):
            model_or_path.save(str(st_dir))
        else:
            src = Path(model_or_path)
            if src.resolve() != st_dir.resolve():
                load_sentence_transformer(str(src), device="cpu").save(str(st_dir))
        model = load_sentence_transformer(str(st_dir), device="cpu").float().eval()
        info = _describe(model)
        max_seq_len = int(model.max_seq_length)
        input_names = _input_names(info["hf_model"], info["tokenizer"])
        dim = int(model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension")
                  else model.get_sentence_embedding_dimension())
        bar.update(1)

        # 2. tokenizer files + metadata
        onnx_dir.mkdir(parents=True, exist_ok=True)
        for stale in (INT8_FILE, OPT_FILE, FP16_FILE):  # never leave a stale derived graph behind
            (onnx_dir / stale).unlink(missing_ok=True)
        info["tokenizer"].save_pretrained(str(onnx_dir))
        backend = _configured_tokenizer(info["tokenizer"], max_seq_len)
        backend.save(str(onnx_dir / "tokenizer.json"))
        info["hf_model"].config.to_json_file(str(onnx_dir / "config.json"))
        meta = {
            "format": 1,
            "model_type": info["model_type"],
            "modules": info["modules"],
            "pooling": info["pooling"],
            "normalize": info["normalize"],
            "dim": dim,
            "max_seq_len": max_seq_len,
            "similarity": "dot",
            "input_names": list(input_names),
            "output_names": list(OUTPUT_NAMES),
        }
        bar.update(1)

        # 3. the graph
        import torch

        _eager_attention(info["hf_model"])
        graph = _SentenceEmbeddingGraph.build(model, input_names)
        sample_texts_export = [sample_texts[0], " ".join(sample_texts)]  # batch 2, different lengths
        enc = backend.encode_batch(sample_texts_export)
        arrays = {
            "input_ids": [e.ids for e in enc],
            "attention_mask": [e.attention_mask for e in enc],
            "token_type_ids": [e.type_ids for e in enc],
        }
        sample = tuple(torch.tensor(arrays[name], dtype=torch.long) for name in input_names)
        onnx_path = onnx_dir / "model.onnx"
        exporter, opset = _export_graph(graph, sample, input_names, onnx_path, cfg.opset)
        ir_version = cap_ir_version(onnx_path, cfg.max_ir_version)
        meta.update(exporter=exporter, opset=opset, ir_version=ir_version, optimized=None)
        _write_meta(onnx_dir, meta)
        bar.update(1)

        # 4. parity: torch (ST encode, fp32, eval) vs onnxruntime through tokenizer.json, on padded
        #    batches and on single (unpadded) texts, so a traced padding branch cannot slip through
        texts = list(sample_texts)
        ref = np.asarray(model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False),
                         dtype=np.float32)
        got, diff = _parity(onnx_dir, texts, ref, optimized=False)
        logger.info("ONNX (%s exporter, IR %d) vs torch: max abs diff %.3g on %d texts",
                    exporter, ir_version, diff, len(texts))
        if not diff <= cfg.tolerance:  # also catches NaN
            raise ExportError(
                f"ONNX embeddings differ from torch by max abs {diff:.3g}, above the tolerance "
                f"{cfg.tolerance:g} ({len(texts)} sample texts, {exporter} exporter, graph at {onnx_path}). "
                "Check the model's modules for ops that do not export, or raise export.tolerance if the "
                "difference is acceptable."
            )
        # 4b. the fused graph that onnxruntime serves with; dropped (with a warning) if it drifts
        fused: dict[str, int] = {}
        opt_diff = None
        if cfg.optimize:
            hf_config = info["hf_model"].config
            fused = optimize_graph(onnx_path, onnx_dir / OPT_FILE, info["model_type"],
                                   num_heads=int(getattr(hf_config, "num_attention_heads", 0) or 0),
                                   hidden_size=int(getattr(hf_config, "hidden_size", 0) or 0))
            if (onnx_dir / OPT_FILE).exists():
                cap_ir_version(onnx_dir / OPT_FILE, cfg.max_ir_version)
                _, opt_diff = _parity(onnx_dir, texts, ref, optimized=True)
                if opt_diff <= cfg.tolerance:
                    meta["optimized"] = {"file": OPT_FILE, "fused": fused, "max_abs_diff": opt_diff}
                    _write_meta(onnx_dir, meta)
                    logger.info("fused ONNX graph %s: max abs diff to torch %.3g", fused, opt_diff)
                else:
                    logger.warning("fused ONNX graph differs from torch by %.3g (> %g): serving the unfused "
                                   "graph", opt_diff, cfg.tolerance)
                    (onnx_dir / OPT_FILE).unlink()
                    fused, opt_diff = {}, None
        bar.update(1)
        served = onnx_dir / OPT_FILE if (onnx_dir / OPT_FILE).exists() else onnx_path  # int8 and fp16 start here

        # 5. optional int8
        int8_path = int8_diff = int8_cos = int8_sha = None
        if cfg.int8:
            int8_file = onnx_dir / INT8_FILE
            quantize_int8(served, int8_file)
            cap_ir_version(int8_file, cfg.max_ir_version)
            q = OnnxEncoder(onnx_dir, int8=True, providers=["CPUExecutionProvider"]).encode(texts, batch_size=32)
            int8_diff, int8_cos = max_abs_diff(got, q), mean_cosine(got, q)
            logger.info("int8 vs fp32 ONNX: max abs diff %.3g, mean cosine %.5f", int8_diff, int8_cos)
            if not int8_cos >= INT8_MIN_COSINE:
                raise ExportError(
                    f"the int8 graph's mean cosine to fp32 is {int8_cos:.4f}, below {INT8_MIN_COSINE}: its "
                    "vectors would rank documents differently. Export without int8 (export.int8 = false)."
                )
            int8_path, int8_sha = str(int8_file), sha256_file(int8_file)
            bar.update(1)

        # 6. optional fp16 (GPU serving), checked against torch on CPU
        fp16_path = fp16_diff = fp16_cos = None
        if cfg.fp16:
            fp16_file = onnx_dir / FP16_FILE
            to_fp16(served, fp16_file)
            cap_ir_version(fp16_file, cfg.max_ir_version)
            h = OnnxEncoder(onnx_dir, fp16=True, providers=["CPUExecutionProvider"]).encode(texts, batch_size=32)
            fp16_diff, fp16_cos = max_abs_diff(ref, h), mean_cosine(ref, h)
            logger.info("fp16 vs torch fp32: max abs diff %.3g, mean cosine %.6f", fp16_diff, fp16_cos)
            if not fp16_cos >= FP16_MIN_COSINE:
                fp16_file.unlink()
                raise ExportError(
                    f"the fp16 graph's mean cosine to torch is {fp16_cos:.5f}, below {FP16_MIN_COSINE} (activations "
                    "out of float16 range?). Export without fp16 (export.fp16 = false) and serve fp32."
                )
            fp16_path = str(fp16_file)
            meta["fp16"] = {"file": FP16_FILE, "max_abs_diff": fp16_diff, "cosine": fp16_cos}
            _write_meta(onnx_dir, meta)
            bar.update(1)

    return ExportResult(
        out_dir=str(out),
        st_dir=str(st_dir),
        onnx_dir=str(onnx_dir),
        onnx_path=str(onnx_path),
        int8_path=int8_path,
        dim=dim,
        pooling=info["pooling"],
        normalize=info["normalize"],
        max_seq_len=max_seq_len,
        input_names=input_names,
        exporter=exporter,
        opset=opset,
        ir_version=ir_version,
        max_abs_diff=diff,
        optimized_path=str(onnx_dir / OPT_FILE) if fused else None,
        fused_ops=fused,
        optimized_max_abs_diff=opt_diff,
        tolerance=cfg.tolerance,
        onnx_sha256=sha256_file(onnx_path),
        int8_max_abs_diff=int8_diff,
        int8_cosine=int8_cos,
        int8_sha256=int8_sha,
        fp16_path=fp16_path,
        fp16_max_abs_diff=fp16_diff,
        fp16_cosine=fp16_cos,
    )


def package_for_ml_commons(
    export_dir: str | os.PathLike, out_zip: str | os.PathLike, *, int8: bool = False
) -> tuple[str, str, dict[str, Any]]:
    """Zip ``model.onnx`` + ``tokenizer.json`` for OpenSearch ML Commons; return (zip, sha256, model_config).

    The zip holds the graph (as ``model.onnx``) and ``tokenizer.json`` at its root, as ML Commons'
    local ONNX text-embedding models expect. ``sha256`` is the value for the register request's
    ``model_content_hash_value`` (with ``model_format: "ONNX"``). ``model_config`` follows ML Commons'
    ``TextEmbeddingModelConfig``: ``model_type``, ``embedding_dimension``, ``framework_type``
    ("sentence_transformers"), ``pooling_mode``, ``normalize_result``, ``all_config`` (the HF
    config.json as a JSON string) and ``model_max_length``.

    ML Commons' ONNX translator pools output 0 of the graph itself (pooling_mode) and L2-normalizes when
    normalize_result is true, so this only works for Transformer + Pooling (+ Normalize) models; others
    raise :class:`ExportError`. Sources: https://opensearch.org/docs/latest/ml-commons-plugin/api/model-apis/register-model/
    and ml-commons' TextEmbeddingModelConfig.java / ONNXSentenceTransformerTextEmbeddingTranslator.java.
    """
    root = Path(export_dir)
    onnx_dir = root / ONNX_SUBDIR if (root / ONNX_SUBDIR / ONNX_META).exists() else root
    meta_path = onnx_dir / ONNX_META
    if not meta_path.exists():
        raise ExportError(f"{export_dir} is not an export folder (no {ONNX_SUBDIR}/{ONNX_META}); run export first")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    extra = [m for m in meta["modules"][1:] if m not in ("Pooling", "Normalize")]
    if extra or meta["pooling"] not in _ML_COMMONS_POOLING or meta["pooling"] == "lasttoken":
        raise ExportError(
            f"ML Commons pools token embeddings itself and supports only Transformer + Pooling "
            f"(mean/mean_sqrt_len_tokens/max/weightedmean/cls) + optional Normalize; this model has modules "
            f"{meta['modules']} with pooling {meta['pooling']!r}. Serve it with OnnxEncoder instead."
        )
    graph = onnx_dir / ("model_int8.onnx" if int8 else "model.onnx")
    if not graph.exists():
        raise ExportError(f"{graph} does not exist" + (" (export with export.int8 = true)" if int8 else ""))
    out = Path(out_zip)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.write(graph, "model.onnx")
        zf.write(onnx_dir / "tokenizer.json", "tokenizer.json")
    shutil.move(str(tmp), str(out))
    config_json = onnx_dir / "config.json"
    all_config = config_json.read_text(encoding="utf-8") if config_json.exists() else "{}"
    model_config = {
        "model_type": meta["model_type"],
        "embedding_dimension": meta["dim"],
        "framework_type": "sentence_transformers",
        "pooling_mode": _ML_COMMONS_POOLING[meta["pooling"]],
        "normalize_result": bool(meta["normalize"]),
        "all_config": json.dumps(json.loads(all_config), separators=(",", ":")),
        "model_max_length": meta["max_seq_len"],
    }
    return str(out), sha256_file(out), model_config
