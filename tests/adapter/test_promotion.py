"""Promotion evaluation streams the store: candidates by ord, chunked resumable encoding, the same MRR as before."""

from __future__ import annotations

import random
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from rgpl_adapt.promotion import candidate_ords, encoder_mrr
from rgpl_adapt.records import Document, GeneratedQuery
from rgpl_adapt.versions import mrr_at_k

from tests.conftest import make_documents
from tests.kill9 import done_files, kill_when, python


class WordsEncoder:
    """Bag of hashed words (deterministic across processes); records the size of every call."""

    def __init__(self, dim: int = 32, delay: float = 0.0) -> None:
        self.dim, self.delay, self.calls = dim, delay, []

    def encode(self, texts, batch_size=64, progress=None):
        self.calls.append(len(texts))
        time.sleep(self.delay)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1.0
        return out


# the list-based implementation this module replaced: the oracle the streamed one must match


def old_candidate_documents(docs, held_out, max_docs, seed=0):
    if len(docs) <= max_docs:
        return list(docs)
    positives = {q.doc_id for q in held_out}
    keep = [d for d in docs if d.id in positives]
    rest = [d for d in docs if d.id not in positives]
    keep += random.Random(seed).sample(rest, max(0, min(len(rest), max_docs - len(keep))))
    return keep


def old_encoder_mrr(encoder, docs, held_out, k=10):
    d = np.asarray(encoder.encode([x.full_text() for x in docs], batch_size=64), dtype=np.float32)
    q = np.asarray(encoder.encode([x.text for x in held_out], batch_size=64), dtype=np.float32)
    top = np.argsort(-(q @ d.T), axis=1, kind="stable")[:, :k]
    ids = [x.id for x in docs]
    return mrr_at_k([[ids[j] for j in row] for row in top], [x.doc_id for x in held_out], k)


def build_store(path: Path, docs: list[Document]) -> Path:
    from rgpl_plugin.embedded import EmbeddedBackend

    EmbeddedBackend.create(path, iter(docs)).close()
    return path


def held_out(docs: list[Document], n: int, seed: int = 5) -> list[GeneratedQuery]:
    rng = random.Random(seed)
    picks = rng.sample(docs, n)
    return [GeneratedQuery(qid=f"q{i}", text=" ".join(d.text.split()[:6]), doc_id=d.id) for i, d in enumerate(picks)]


@pytest.mark.parametrize("max_docs", [10_000, 120, 45])
def test_streamed_candidates_and_mrr_match_the_list_based_evaluation(tmp_path, max_docs):
    from rgpl_plugin.docstore import DocStore

    docs = make_documents(400, seed=11)
    store_dir = build_store(tmp_path / "index", docs)
    held = held_out(docs, 40)
    old_cands = old_candidate_documents(docs, held, max_docs, seed=7)
    with DocStore(store_dir) as store:
        ords = candidate_ords(store, held, max_docs, seed=7)
        assert store.ids_of_ords(ords) == [d.id for d in old_cands]  # the same documents in the same order
    assert isinstance(ords, range) == (max_docs >= len(docs))  # every document: a range, no list of the corpus
    enc = WordsEncoder()
    new = encoder_mrr(enc, store_dir, ords, held, out=tmp_path / "vec", key="m", chunk_size=32)
    old = old_encoder_mrr(WordsEncoder(), old_cands, held)
    assert new == pytest.approx(old, abs=1e-6) and old > 0.05
    assert max(enc.calls[1:]) <= 32 and sum(enc.calls[1:]) == len(ords)  # queries once, then store chunks


def test_kill_9_mid_promotion_encoding_resumes_from_the_finished_chunks(tmp_path):
    from rgpl_plugin.docstore import DocStore

    docs = make_documents(600, seed=2)
    store_dir = build_store(tmp_path / "index", docs)
    held = held_out(docs, 30)
    with DocStore(store_dir) as store:
        ords = candidate_ords(store, held, 500, seed=1)
    out = tmp_path / "vec"
    code = (
        "import sys, pickle; sys.path[:0] = sys.argv[1:2]; from test_promotion import WordsEncoder; "
        "from rgpl_adapt.promotion import encoder_mrr; held, ords = pickle.loads(bytes.fromhex(sys.argv[2])); "
        f"encoder_mrr(WordsEncoder(delay=0.4), {str(store_dir)!r}, ords, held, out={str(out)!r}, key='m', chunk_size=50)"
    )
    import pickle

    proc = python(code, str(Path(__file__).parent), pickle.dumps((held, ords)).hex())
    kill_when(proc, lambda: done_files(out / "done") >= 3, "the encoding")
    finished = done_files(out / "done")
    assert 3 <= finished < 10
    enc = WordsEncoder()
    mrr = encoder_mrr(enc, store_dir, ords, held, out=out, key="m", chunk_size=50)
    assert sum(enc.calls[1:]) == 500 - 50 * finished  # resumed, not from zero
    by_id = {d.id: d for d in docs}
    with DocStore(store_dir) as store:
        cands = [by_id[i] for i in store.ids_of_ords(ords)]
    assert mrr == pytest.approx(old_encoder_mrr(WordsEncoder(), cands, held), abs=1e-6)
    again = WordsEncoder()  # another model key: encoded again, never mixed
    encoder_mrr(again, store_dir, ords, held, out=out, key="m2", chunk_size=50)
    assert sum(again.calls[1:]) == 500


def test_stable_topk_in_row_chunks_equals_one_stable_sort_with_many_ties():
    from rgpl_adapt.promotion import stable_topk

    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 3, (103, 4)).astype(np.float32)  # few distinct scores: ties everywhere
    queries = rng.integers(0, 3, (9, 4)).astype(np.float32)
    want = np.argsort(-(queries @ matrix.T), axis=1, kind="stable")[:, :10]
    for chunk in (7, 10, 64, 1000):
        np.testing.assert_array_equal(stable_topk(matrix, queries, 10, chunk_rows=chunk), want)
