"""Hard-negative mining through a fake in-memory backend (exact numpy k-NN, token-overlap "BM25")."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from rgpl_adapt.mining import (
    BM25_SOURCE,
    STUDENT_SOURCE,
    churn,
    exclude_positive,
    mine_negatives,
    remine_pools,
    space_name,
)
from rgpl_adapt.records import GeneratedQuery, Hit, NegativePool
from rgpl_plugin.base import Document


class FakeBackend:
    """A tiny exact backend that records what the miner asked of it."""

    name = "fake"

    def __init__(self, docs: Sequence[Document]) -> None:
        self.docs = list(docs)
        self.spaces: dict[str, dict[str, np.ndarray]] = {}
        self.put_calls: list[tuple[str, int]] = []
        self.knn_ks: list[int] = []
        self.bm25_ks: list[int] = []
        self.dropped: list[str] = []
        self.spaces_seen: set[str] = set()

    def count(self) -> int:
        return len(self.docs)

    def iter_documents(self, batch_size: int = 1000) -> Iterator[Document]:
        yield from self.docs

    def get_documents(self, ids: Sequence[str]) -> list[Document]:
        by_id = {d.id: d for d in self.docs}
        return [by_id[i] for i in ids]

    def bm25_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        self.bm25_ks.append(k)
        out = []
        for q in queries:
            terms = set(q.lower().split())
            scored = [
                (len(terms & set(d.full_text().lower().split())), -i, d.id) for i, d in enumerate(self.docs)
            ]
            scored.sort(reverse=True)
            out.append([Hit(doc_id, float(s)) for s, _, doc_id in scored[:k]])
        return out

    def put_vectors(self, space: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        assert len(ids) == len(vectors)
        self.put_calls.append((space, len(ids)))
        self.spaces_seen.add(space)
        store = self.spaces.setdefault(space, {})
        for doc_id, vec in zip(ids, vectors):
            store[doc_id] = np.asarray(vec, dtype=np.float32)

    def knn_search(self, space: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        self.knn_ks.append(k)
        ids = list(self.spaces[space])
        matrix = np.stack([self.spaces[space][i] for i in ids])
        scores = queries @ matrix.T
        out = []
        for row in scores:
            top = np.argsort(-row, kind="stable")[:k]
            out.append([Hit(ids[j], float(row[j])) for j in top])
        return out

    def has_vectors(self, space: str) -> bool:
        return space in self.spaces

    def drop_vectors(self, space: str) -> None:
        self.dropped.append(space)
        self.spaces.pop(space, None)

    def hybrid_search(self, *args, **kwargs):  # pragma: no cover - not used by mining
        raise NotImplementedError

    def close(self) -> None:
        pass


VOCAB = "vitamin calcium bone tumor cancer cell heart artery blood brain memory neuron virus gene dna".split()


class BagOfWordsEncoder:
    """A deterministic TextEncoder: counts of VOCAB words (so neighbours can be derived by hand)."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts, batch_size=64, progress=None) -> np.ndarray:
        self.calls += 1
        out = np.zeros((len(texts), len(VOCAB)), dtype=np.float32)
        for i, text in enumerate(texts):
            words = text.lower().split()
            for j, w in enumerate(VOCAB):
                out[i, j] = words.count(w)
        return out


class STEncoder:
    """A TextEncoder over a real sentence-transformers model, through its own ``encode``.

    (``rgpl_adapt.encoding.SentenceTransformerEncoder`` would be the natural choice, but its
    ``encode_texts`` moves every feature to the device and sentence-transformers 6.2 adds a
    string ``modality`` feature, so it fails there; mining itself does not care which encoder.)
    """

    def __init__(self, model) -> None:
        self.model = model

    def encode(self, texts, batch_size=64, progress=None) -> np.ndarray:
        return self.model.encode(
            list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False
        )


def _queries(documents: Sequence[Document], n: int = 12) -> list[GeneratedQuery]:
    # Query i is built from the first three words of document i's body; that document is its positive.
    return [
        GeneratedQuery(qid=f"q{i}", text=" ".join(documents[i].text.split()[:3]), doc_id=documents[i].id)
        for i in range(n)
    ]


def _brute_force_topk(encoder, docs, text: str, positive: str, k: int) -> list[str]:
    d = encoder.encode([x.full_text() for x in docs])
    q = encoder.encode([text])[0]
    order = np.argsort(-(d @ q), kind="stable")
    return [docs[j].id for j in order if docs[j].id != positive][:k]


def test_space_name_is_a_safe_distinct_slug():
    assert space_name("msmarco-distilbert-base-v3") == "miner-msmarco-distilbert-base-v3"
    a, b = space_name("/models/My Retriever"), space_name("/models/my-retriever")
    assert a != b
    for name in (a, b, space_name("x" * 200)):
        assert name.startswith("miner-") and len(name) <= 64
        assert all(c.isalnum() and c.islower() or c.isdigit() or c == "-" for c in name)


def test_exclude_positive_keeps_order_and_k():
    hits = [Hit("a", 3), Hit("pos", 2.5), Hit("b", 2), Hit("b", 2), Hit("c", 1)]
    assert exclude_positive(hits, "pos", 2) == ["a", "b"]
    assert exclude_positive(hits, "pos", 10) == ["a", "b", "c"]


def test_bm25_mining_excludes_positive_and_respects_k(documents):
    backend = FakeBackend(documents)
    queries = _queries(documents)
    pools = mine_negatives(queries, backend, bm25=True, k=5)
    assert [p.qid for p in pools] == [q.qid for q in queries]
    assert backend.bm25_ks and set(backend.bm25_ks) == {6}  # k + 1 asked, room for the positive
    for q, pool in zip(queries, pools):
        assert list(pool.negatives) == [BM25_SOURCE]
        negs = pool.negatives[BM25_SOURCE]
        assert len(negs) == 5 and q.doc_id not in negs
        # The positive shares all three query words, so BM25 ranks it among the top 6.
        full = [h.doc_id for h in backend.bm25_search([q.text], 6)[0]]
        assert negs == [d for d in full if d != q.doc_id][:5]


def test_dense_mining_matches_brute_force_and_drops_space(documents):
    backend = FakeBackend(documents)
    queries = _queries(documents)
    enc = BagOfWordsEncoder()
    pools = mine_negatives(queries, backend, retrievers=[("bow", enc)], bm25=False, k=4, encode_batch_size=8)
    space = space_name("bow")
    assert space in backend.spaces_seen and not backend.has_vectors(space)
    assert sum(n for s, n in backend.put_calls if s == space) == len(documents)
    assert set(backend.knn_ks) == {5}
    for q, pool in zip(queries, pools):
        assert list(pool.negatives) == ["bow"]
        assert pool.negatives["bow"] == _brute_force_topk(enc, documents, q.text, q.doc_id, 4)


def test_all_sources_in_one_pool_with_real_student(documents, tiny_student):
    from rgpl_adapt.models import load_sentence_transformer

    st = STEncoder(load_sentence_transformer(str(tiny_student), "cpu"))
    backend = FakeBackend(documents)
    queries = _queries(documents, n=6)
    calls = []

    def record(total=None, desc="", unit="it"):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            class B:
                def update(self, n=1):
                    calls.append((desc, n))

                def set_postfix(self, **kw):
                    pass

            yield B()

        return bar()

    pools = mine_negatives(
        queries,
        backend,
        retrievers=[("tiny", st), ("bow", BagOfWordsEncoder())],
        bm25=True,
        k=3,
        progress=record,
    )
    for q, pool in zip(queries, pools):
        assert list(pool.negatives) == [BM25_SOURCE, "tiny", "bow"]
        assert all(len(ids) == 3 and q.doc_id not in ids for ids in pool.negatives.values())
        assert pool.negatives["tiny"] == _brute_force_topk(st, documents, q.text, q.doc_id, 3)
    assert backend.spaces == {}  # every scratch space dropped
    # progress was reported for corpus encoding of each retriever, in documents
    corpus = sum(n for desc, n in calls if desc.startswith("encoding corpus (tiny)"))
    assert corpus == len(documents)


def test_query_texts_override_and_duplicate_texts(documents):
    backend = FakeBackend(documents)
    queries = [
        GeneratedQuery("a", "ignored", documents[0].id),
        GeneratedQuery("b", "ignored", documents[1].id),
    ]
    texts = {"a": "brain memory neuron", "b": "brain memory neuron"}
    pools = mine_negatives(
        queries, backend, retrievers=[("bow", BagOfWordsEncoder())], bm25=False, k=3, query_texts=texts
    )
    enc = BagOfWordsEncoder()
    assert pools[0].negatives["bow"] == _brute_force_topk(enc, documents, texts["a"], documents[0].id, 3)
    assert pools[1].negatives["bow"] == _brute_force_topk(enc, documents, texts["b"], documents[1].id, 3)
    with pytest.raises(KeyError, match="query_texts"):
        mine_negatives(queries, backend, bm25=True, k=3, query_texts={"a": "x"})


def test_k_larger_than_corpus_is_capped(documents):
    small = documents[:4]
    backend = FakeBackend(small)
    pools = mine_negatives(_queries(small, n=2), backend, bm25=True, k=10)
    assert set(backend.bm25_ks) == {4}
    assert all(len(p.negatives[BM25_SOURCE]) == 3 for p in pools)


def test_stale_space_is_replaced_and_dropped_on_failure(documents):
    backend = FakeBackend(documents)
    space = space_name("bow")
    backend.put_vectors(space, ["ghost"], np.full((1, len(VOCAB)), 100.0, dtype=np.float32))
    pools = mine_negatives(
        _queries(documents, 2), backend, retrievers=[("bow", BagOfWordsEncoder())], bm25=False, k=3
    )
    assert all("ghost" not in p.all_ids() for p in pools)

    class Broken(BagOfWordsEncoder):
        def encode(self, texts, batch_size=64, progress=None):
            if len(texts) < len(documents):  # the query batch
                raise RuntimeError("boom")
            return super().encode(texts)

    with pytest.raises(RuntimeError, match="boom"):
        mine_negatives(_queries(documents, 2), backend, retrievers=[("bow", Broken())], bm25=False, k=3)
    assert not backend.has_vectors(space)


def test_invalid_arguments(documents):
    backend = FakeBackend(documents)
    qs = _queries(documents, 1)
    with pytest.raises(ValueError, match="no negative source"):
        mine_negatives(qs, backend, bm25=False)
    with pytest.raises(ValueError, match="distinct"):
        mine_negatives(qs, backend, retrievers=[("a", BagOfWordsEncoder()), ("a", BagOfWordsEncoder())])
    with pytest.raises(ValueError, match="bm25"):
        mine_negatives(qs, backend, retrievers=[("bm25", BagOfWordsEncoder())])
    with pytest.raises(ValueError, match="k must"):
        mine_negatives(qs, backend, k=0)


def test_remine_pools_uses_given_space_and_vectors(documents):
    backend = FakeBackend(documents)
    enc = BagOfWordsEncoder()
    backend.put_vectors(
        "student-r1", [d.id for d in documents], enc.encode([d.full_text() for d in documents])
    )
    queries = _queries(documents, 5)
    qvecs = enc.encode([q.text for q in queries])
    pools = remine_pools(queries, backend, "student-r1", qvecs, 4)
    for q, pool in zip(queries, pools):
        assert list(pool.negatives) == [STUDENT_SOURCE]
        assert pool.negatives[STUDENT_SOURCE] == _brute_force_topk(enc, documents, q.text, q.doc_id, 4)
    assert backend.has_vectors("student-r1")  # the caller's space is left alone
    with pytest.raises(ValueError, match="one row per query"):
        remine_pools(queries, backend, "student-r1", qvecs[:2], 4)
    with pytest.raises(ValueError, match="does not exist"):
        remine_pools(queries, backend, "nope", qvecs, 4)


def test_churn_math():
    old = [NegativePool("q1", {"bm25": ["a", "b"], "x": ["c", "d"]}), NegativePool("q2", {"bm25": ["a"]})]
    new = [
        NegativePool("q1", {"student": ["a", "e", "f", "c"]}),  # e, f new: 2/4
        NegativePool("q2", {"student": ["a"]}),  # 0/1
        NegativePool("q3", {"student": ["z", "y"]}),  # absent from old: 2/2
        NegativePool("q4", {"student": []}),  # empty: left out
    ]
    assert churn(old, new) == pytest.approx((0.5 + 0.0 + 1.0) / 3)
    assert churn(old, old) == 0.0
    assert churn([], []) == 0.0
