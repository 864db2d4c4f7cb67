import pytest

from rgpl_adapt.compare import make_training_evaluator


@pytest.fixture()
def backend(tmp_path, documents):
    from rgpl_plugin.embedded import EmbeddedBackend

    with EmbeddedBackend.create(tmp_path / "index", documents) as b:
        yield b


def test_training_evaluator_scores_the_current_model_and_cleans_up(backend, beir_dir, tiny_student):
    from sentence_transformers import SentenceTransformer

    from rgpl_adapt.evaluation import load_qrels, load_queries

    qrels = load_qrels(beir_dir / "qrels" / "test.tsv")
    queries = load_queries(beir_dir / "queries.jsonl")
    evaluator = make_training_evaluator(backend, qrels, queries)
    model = SentenceTransformer(str(tiny_student), device="cpu")
    model.train()
    metrics = evaluator(model)
    assert set(metrics) >= {"ndcg@10", "recall@100", "mrr@10"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    # the synthetic corpus has 60 docs: recall@100 covers everything
    assert metrics["recall@100"] == pytest.approx(1.0)
    assert model.training  # the student is handed back in train mode
    assert not backend.has_vectors("eval-student")


def test_evaluator_needs_judged_queries(backend):
    with pytest.raises(ValueError, match="judgements"):
        make_training_evaluator(backend, {"q1": {"d1": 1}}, {"other": "text"})
