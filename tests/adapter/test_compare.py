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


# -- streaming the corpus: chunks from the store, a memory map, resumable ---------------------------


class ListBackend:
    """A backend that keeps its vectors elsewhere (like a cluster): documents only, no local spaces."""

    name = "list"

    def __init__(self, docs) -> None:
        self.docs = docs

    def count(self) -> int:
        return len(self.docs)

    def iter_documents(self, batch_size: int = 1000):
        yield from self.docs


def test_corpus_vectors_stream_the_store_in_chunks_and_search_like_the_whole_matrix(tmp_path, documents, monkeypatch):
    from contextlib import ExitStack

    import numpy as np

    from rgpl_adapt import compare
    from rgpl_adapt.neighbours import exact_search
    from rgpl_adapt.progress import silent
    from tests.adapter.test_chunked import HashEncoder

    monkeypatch.setattr(compare, "ENCODE_CHUNK", 16)
    queries = HashEncoder().encode([f"query about topic {i}" for i in range(7)])
    whole = HashEncoder().encode([d.full_text() for d in documents])  # the old way: every text at once
    want = exact_search([d.id for d in documents], whole, queries, 11)
    enc = HashEncoder()
    with ExitStack() as scratch:
        ids, matrix = compare.corpus_vectors(ListBackend(documents), "zero-shot", enc, silent, scratch,
                                             out=tmp_path / "eval", model="m")
        assert isinstance(matrix, np.memmap) and len(ids) == len(documents)
        assert enc.calls[0] == 1 and max(enc.calls[1:]) <= 16 and sum(enc.calls[1:]) == len(documents)
        assert exact_search(ids, matrix, queries, 11) == want
        again = HashEncoder()  # the same model and store: the finished vectors are reused
        compare.corpus_vectors(ListBackend(documents), "zero-shot", again, silent, scratch,
                               out=tmp_path / "eval", model="m")
    assert again.calls == [1]


def test_an_interrupted_evaluation_encoding_resumes_from_its_finished_chunks(tmp_path, backend, documents, monkeypatch):
    from contextlib import ExitStack

    from rgpl_adapt import compare
    from rgpl_adapt.progress import silent
    from tests.adapter.test_chunked import HashEncoder

    monkeypatch.setattr(compare, "ENCODE_CHUNK", 16)

    class Dies(HashEncoder):
        def encode(self, texts, batch_size=64, progress=None):
            if len(self.calls) == 3:  # the probe and two chunks, then the process is gone
                raise KeyboardInterrupt
            return super().encode(texts, batch_size, progress)

    with pytest.raises(KeyboardInterrupt), ExitStack() as scratch:
        compare.corpus_vectors(backend, "zero-shot", Dies(), silent, scratch, out=tmp_path / "eval", model="m")
    enc = HashEncoder()
    with ExitStack() as scratch:  # the embedded backend's own store is encoded; its space is never written
        ids, matrix = compare.corpus_vectors(backend, "zero-shot", enc, silent, scratch, out=tmp_path / "eval",
                                             model="m")
        assert sum(enc.calls[1:]) == len(documents) - 32 and not backend.has_vectors("zero-shot")
        assert ids.many([0, len(documents) - 1]) == [documents[0].id, documents[-1].id]
        np_whole = HashEncoder().encode([d.full_text() for d in documents])
        assert (matrix == np_whole).all()
    other = HashEncoder()
    with ExitStack() as scratch:  # another model: encoded again, not mixed
        compare.corpus_vectors(backend, "zero-shot", other, silent, scratch, out=tmp_path / "eval", model="m2")
    assert sum(other.calls[1:]) == len(documents)


def test_training_evaluator_encodes_in_store_chunks_with_the_same_metrics(backend, beir_dir, tiny_student, monkeypatch):
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from rgpl_adapt import compare
    from rgpl_adapt.encoding import encode_texts
    from rgpl_adapt.evaluation import evaluate, load_qrels, load_queries
    from rgpl_adapt.neighbours import exact_search

    qrels = load_qrels(beir_dir / "qrels" / "test.tsv")
    queries = load_queries(beir_dir / "queries.jsonl")
    model = SentenceTransformer(str(tiny_student), device="cpu")
    docs = list(backend.iter_documents())  # the old evaluator: the whole corpus in memory
    qids = [q for q in queries if q in qrels]
    vecs = encode_texts(model, [d.full_text() for d in docs], 128)
    hits = exact_search([d.id for d in docs], vecs, encode_texts(model, [queries[q] for q in qids], 128), 101)
    want = evaluate(compare._as_results(qids, hits, 100), qrels)
    monkeypatch.setattr(compare, "ENCODE_CHUNK", 16)
    sizes = []
    real = compare._ModelEncoder.encode
    monkeypatch.setattr(compare._ModelEncoder, "encode", lambda self, texts, batch_size=64, progress=None: (
        sizes.append(len(texts)), real(self, texts, batch_size))[1])
    got = compare.make_training_evaluator(backend, qrels, queries)(model)
    assert max(sizes) <= 16 and sum(sizes) == len(docs) + 1  # chunks of the store (and one dimension probe)
    assert got == pytest.approx(want, abs=1e-6)
    assert np.isfinite(list(got.values())).all()
