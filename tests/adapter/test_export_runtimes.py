"""The exported graphs load in the onnxruntime that OpenSearch ML Commons ships, not only in ours.

ML Commons runs ONNX text-embedding models with onnxruntime 1.16.3 (OpenSearch 2.16 and later; 1.14
before): a graph with a newer IR version or opset is refused at deploy time. The test installs that
onnxruntime into its own virtual environment (cached under ~/.cache/rgpl-adapt/, built once), runs the
portable, fused and int8 graphs and the ML Commons zip's graph there in a subprocess, and compares the
vectors with torch. onnxruntime 1.14 has no wheel for this Python, so 1.14 is covered by the IR/opset
check (IR <= 8, opset 17) in test_export.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from rgpl_adapt.config import ExportConfig
from rgpl_adapt.export import export_model, package_for_ml_commons

ML_COMMONS_ORT = "1.16.3"

RUNNER = r"""
import json, sys
import numpy as np, onnxruntime as ort
feed = dict(np.load(sys.argv[1]))
out = {"version": ort.__version__}
for name, path in json.loads(sys.argv[2]).items():
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = {i.name for i in sess.get_inputs()}
    (emb,) = sess.run(["sentence_embedding"], {k: v for k, v in feed.items() if k in names})
    np.save(sys.argv[3] + "/" + name + ".npy", emb)
print(json.dumps(out))
"""


def _runtime_python() -> Path:
    """python of a venv holding onnxruntime==1.16.3 (built once, cached); skips when pip cannot get it."""
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "rgpl-adapt" / f"onnxruntime-{ML_COMMONS_ORT}"
    python = root / "bin" / "python"
    marker = root / ".complete"
    if not marker.exists():
        try:
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(root)], check=True, capture_output=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", f"onnxruntime=={ML_COMMONS_ORT}", "numpy<2"],
                           check=True, capture_output=True, timeout=600)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            stderr = getattr(exc, "stderr", b"") or b""
            pytest.skip(f"could not install onnxruntime=={ML_COMMONS_ORT} into a venv (no package index?): "
                        f"{stderr.decode(errors='replace')[-300:]}")
        marker.write_text(ML_COMMONS_ORT)
    return python


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_student, documents):
    out = tmp_path_factory.mktemp("export-ort116")
    texts = [d.full_text() for d in documents[:10]] + ["short", " ".join(d.full_text() for d in documents[:6])]
    return export_model(tiny_student, out, ExportConfig(int8=True), sample_texts=texts), texts


def test_every_graph_runs_in_ml_commons_onnxruntime(exported, tiny_student, tmp_path):
    from sentence_transformers import SentenceTransformer
    from tokenizers import Tokenizer

    result, texts = exported
    python = _runtime_python()
    zip_path, _, _ = package_for_ml_commons(result.out_dir, tmp_path / "model.zip")
    with zipfile.ZipFile(zip_path) as zf:
        zf.extract("model.onnx", tmp_path / "zip")
    graphs = {
        "portable": result.onnx_path,
        "fused": result.optimized_path,
        "int8": result.int8_path,
        "ml_commons_zip": str(tmp_path / "zip" / "model.onnx"),
    }
    assert all(graphs.values()), graphs
    tok = Tokenizer.from_file(str(Path(result.onnx_dir) / "tokenizer.json"))
    enc = tok.encode_batch(texts)  # one padded batch: the padding path too
    np.savez(tmp_path / "feed.npz",
             input_ids=np.array([e.ids for e in enc], dtype=np.int64),
             attention_mask=np.array([e.attention_mask for e in enc], dtype=np.int64),
             token_type_ids=np.array([e.type_ids for e in enc], dtype=np.int64))
    proc = subprocess.run([str(python), "-c", RUNNER, str(tmp_path / "feed.npz"), json.dumps(graphs), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["version"] == ML_COMMONS_ORT

    ref = SentenceTransformer(str(tiny_student), device="cpu").encode(texts, convert_to_numpy=True)
    for name in ("portable", "fused", "ml_commons_zip"):
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), ref, atol=1e-5, rtol=0, err_msg=name)
    q = np.load(tmp_path / "int8.npy")
    cos = np.sum(q * ref, axis=1) / (np.linalg.norm(q, axis=1) * np.linalg.norm(ref, axis=1))
    assert cos.min() > 0.95, cos
