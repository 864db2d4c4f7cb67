"""The ONNX graph variants an export writes next to the portable ``model.onnx``, and the fixes it needs.

* :func:`optimize_graph` -> ``model_opt.onnx``: onnxruntime's transformer fusion (Attention,
  SkipLayerNormalization, BiasGelu), what :class:`~rgpl_adapt.onnx_encoder.OnnxEncoder` serves on CPU.
* :func:`quantize_int8` -> ``model_int8.onnx``: dynamic int8 of the fused graph (CPU, VNNI).
* :func:`to_fp16` -> ``model_fp16.onnx``: the fused graph in float16 with float32 inputs and outputs,
  for onnxruntime's CUDA provider (half the memory traffic, tensor cores); on CPU onnxruntime runs it
  too (the parity check at export does), but slower than fp32 (bench/RESULTS.md).
* :func:`cap_ir_version`: an IR version and opset imports that old onnxruntime builds accept.

:mod:`rgpl_adapt.export` runs them and checks each graph's vectors against torch.
"""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from rgpl_adapt.devices import require

__all__ = ["cap_ir_version", "optimize_graph", "quantize_int8", "to_fp16"]

logger = logging.getLogger(__name__)


def cap_ir_version(path: str | os.PathLike, max_ir: int) -> int:
    """Lower the graph's IR version to ``max_ir`` and drop opset imports of domains no node uses.

    Returns the IR version written.

    An old onnxruntime refuses any model whose IR version is above what it knows, even when the graph
    uses nothing newer (the dynamo exporter stamps IR 10 on opset-18 graphs). Opset 18 needs IR >= 8,
    so capping at 8 or 9 is safe for the opsets we export; the loaders checked in the tests decide.
    """
    import onnx

    model = onnx.load(str(path))
    changed = False
    if model.ir_version > max_ir:
        model.ir_version = max_ir
        changed = True
    # onnxruntime's tools stamp e.g. ai.onnx.ml opset 5 without using it; 1.16 refuses that import
    used = {node.domain or "" for node in model.graph.node}
    keep = [imp for imp in model.opset_import if (imp.domain or "") in used or (imp.domain or "") == ""]
    if len(keep) != len(model.opset_import):
        del model.opset_import[:]
        model.opset_import.extend(keep)
        changed = True
    if changed:
        onnx.save(model, str(path))
    return int(model.ir_version)


# Architectures whose encoder layers match onnxruntime's BERT fusion patterns.
_FUSABLE = {"bert", "roberta", "xlm-roberta", "distilbert", "camembert", "electra", "albert", "mpnet"}


def optimize_graph(src: str | os.PathLike, dst: str | os.PathLike, model_type: str, *, num_heads: int = 0,
                   hidden_size: int = 0) -> dict[str, int]:
    """onnxruntime's transformer optimizer: fuse attention, LayerNorm (+ residual), GELU; save to ``dst``.

    Returns the counts of fused operators (empty when the architecture is not one it knows; then nothing
    is written). The fused graph uses onnxruntime's ``com.microsoft`` operators, so it is for
    onnxruntime only; ``model.onnx`` stays the portable graph.
    """
    if model_type not in _FUSABLE:
        logger.info("no transformer fusion for model type %r: serving the unfused graph", model_type)
        return {}
    opt_mod = require("onnxruntime.transformers.optimizer", package="onnxruntime")
    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)  # the optimizer logs shape-inference chatter at WARNING on the root logger
        try:
            optimized = opt_mod.optimize_model(str(src), model_type="bert", num_heads=num_heads,
                                               hidden_size=hidden_size, opt_level=1)
        finally:
            root.setLevel(level)
    stats = {k: int(v) for k, v in optimized.get_fused_operator_statistics().items() if v}
    optimized.save_model_to_file(str(dst))
    return stats


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Dynamic int8 quantization (QInt8 per-channel weights; MatMul and fused Attention) of an ONNX graph.

    Applied to the fused graph (:func:`optimize_graph`) when there is one: quantizing the fused
    ``Attention`` nodes' projection weights is where int8 pays on CPUs with VNNI (see bench/RESULTS.md).

    Per-channel scales matter: on all-MiniLM-L6-v2 per-tensor QInt8 gave a mean cosine to fp32 of only
    0.925 on synthetic 128-token texts (0.963 on real sentences), per-channel 0.9935 (0.994);
    ``reduce_range`` made it worse (0.77).
    """
    quant = require("onnxruntime.quantization", package="onnxruntime")
    import onnx

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "Please consider to run pre-processing before quantization": not for our users
    try:
        _quantize(quant, onnx, src, dst)
    finally:
        root.setLevel(level)


def _quantize(quant: Any, onnx: Any, src: str | os.PathLike, dst: str | os.PathLike) -> None:
    quant.quantize_dynamic(
        model_input=str(src),
        model_output=str(dst),
        op_types_to_quantize=["MatMul", "Attention"],
        weight_type=quant.QuantType.QInt8,
        per_channel=True,
        reduce_range=False,
        # outputs of fused com.microsoft operators have no inferred type; they are float
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def to_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``src`` with its float32 weights and activations in float16, inputs and outputs kept float32
    (callers feed and read the same arrays as for the fp32 graph). Operators onnxruntime keeps in
    float32 for accuracy (its ``float16`` converter's block list, e.g. the L2 normalisation's
    reductions) get casts around them."""
    onnx_model = require("onnxruntime.transformers.onnx_model", package="onnxruntime")
    import onnx

    model = onnx_model.OnnxModel(onnx.load(str(src)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the value is out of float16 range, clamped": reported per tensor
        model.convert_float_to_float16(keep_io_types=True)
    model.save_model_to_file(str(dst))
