"""The document store and the resumable embedded build: chunks recorded in SQLite, ids de-duplicated
by the store, a killed build continuing after its last chunk, vectors adopted without an id list."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from rgpl_plugin.base import Document
from rgpl_plugin.docstore import DocStore, DocStoreWriter, TextsById
from rgpl_plugin.embedded import EmbeddedBackend


def docs(n: int, start: int = 0) -> list[Document]:
    return [Document(id=f"d{i}", text=f"passage {i} word{i}x about topic {i % 5}", title="T" if i % 2 else "")
            for i in range(start, start + n)]


class Crash(RuntimeError):
    pass


def crashing(items, after: int):
    """Yield ``after`` items, then fail: a build interrupted mid-chunk."""
    for i, item in enumerate(items):
        if i == after:
            raise Crash
        yield item


def test_writer_resumes_after_the_last_committed_chunk_and_dedups_by_the_unique_key(tmp_path):
    path = tmp_path / "docs.sqlite"
    data = docs(45) + [Document(id="d3", text="a repeat")]
    w = DocStoreWriter(path, key="k1")
    with pytest.raises(Crash):
        for _ in w.append(crashing(data, 25), 10):  # chunks 0 and 1 committed; 5 of chunk 2 lost
            pass
    w.close()
    w = DocStoreWriter(path, key="k1")
    assert (w.resumed.chunks, w.resumed.consumed, w.resumed.docs) == (2, 20, 20)
    kept = [rows for _, rows in w.append(data, 10)]
    assert [len(rows) for rows in kept] == [10, 10, 5]  # the last chunk: 5 documents, then the repeat skipped
    total = w.finish()
    assert (total.docs, total.duplicates, total.chunks) == (45, 1, 5)
    store = DocStore(path)
    assert store.count() == 45 and store.ids(0, 45) == [f"d{i}" for i in range(45)]
    assert store.texts_of(["d3"]) == {"d3": "T passage 3 word3x about topic 3"}  # the first d3 kept
    assert DocStoreWriter(path, key="another input").resumed.docs == 0  # a new key starts over


def test_store_reads_by_ord_and_id_and_samples_like_plan_generation(tmp_path):
    from rgpl_adapt.config import GenerationConfig
    from rgpl_adapt.generation import plan_generation

    w = DocStoreWriter(tmp_path / "docs.sqlite")
    for chunk in (docs(300)[i : i + 100] for i in range(0, 300, 100)):
        w.append_chunk(chunk)
    w.finish()
    store = DocStore(tmp_path)
    gc = GenerationConfig(queries_per_passage=3, max_queries=60)
    expected, _ = plan_generation(docs(300), gc, random.Random(gc.seed))
    picked = store.by_ords(store.sample_ords(20, random.Random(gc.seed)))
    assert [d.id for d in picked] == [d.id for d in expected]  # the same seeded sample, without the corpus
    assert store.ids_of_ords([7, 2, 7]) == ["d7", "d2", "d7"]
    texts = TextsById(store)
    assert texts.load(["d1", "d2", "d1"]) == 2 and texts["d1"] == "T passage 1 word1x about topic 1"
    assert texts(["d5", "d1"]) == [docs(6)[5].full_text(), docs(2)[1].full_text()]
    with pytest.raises(KeyError, match="unknown document id"):
        texts(["nope"])


def test_killed_embedded_build_continues_and_indexes_each_document_once(tmp_path, monkeypatch):
    import rgpl_plugin.docstore as docstore

    path = tmp_path / "index"
    real = docstore.DocStoreWriter.append_chunk
    calls = []

    def append_then_die(self, chunk):  # chunk 2 reaches SQLite, then the process "dies" before tantivy
        rows = real(self, chunk)
        calls.append(len(rows))
        if len(calls) == 3:
            raise Crash
        return rows

    monkeypatch.setattr(docstore.DocStoreWriter, "append_chunk", append_then_die)
    with pytest.raises(Crash):
        EmbeddedBackend.create(path, iter(docs(95)), resume_key="fp", chunk_size=20)
    assert not path.exists() and (tmp_path / ".index.building" / "docs.sqlite").exists()
    monkeypatch.setattr(docstore.DocStoreWriter, "append_chunk", real)

    backend = EmbeddedBackend.create(path, iter(docs(95)), resume_key="fp", chunk_size=20)
    assert backend.count() == 95 and not (tmp_path / ".index.building").exists()
    build = backend.meta["build"]
    assert (build["chunks"], build["chunks_resumed"], build["chunks_built"]) == (5, 3, 2)
    for i in (5, 45, 90):  # before, in (caught up from SQLite) and after the interrupted chunk
        hits = backend.bm25_search([f"word{i}x"], 5)[0]
        assert [h.doc_id for h in hits] == [f"d{i}"]  # found once: no document indexed twice
    assert backend._index.searcher().num_docs == 95


def test_another_resume_key_rebuilds_from_scratch(tmp_path):
    path = tmp_path / "index"
    with pytest.raises(Crash):
        EmbeddedBackend.create(path, crashing(docs(50), 30), resume_key="old", chunk_size=10)
    backend = EmbeddedBackend.create(path, iter(docs(12, start=100)), resume_key="new", chunk_size=10)
    assert backend.count() == 12 and backend.meta["build"]["chunks_resumed"] == 0
    assert backend.get_documents(["d100"])[0].text.startswith("passage 100")


def test_adopted_vectors_resolve_ids_by_ord_and_accept_later_writes(tmp_path):
    backend = EmbeddedBackend.create(tmp_path / "index", iter(docs(50)))
    vecs = np.eye(50, 8, dtype=np.float32) + np.arange(50, dtype=np.float32)[:, None] / 1000
    np.save(tmp_path / "v.npy", vecs)
    assert backend.adopt_vectors("dense", tmp_path / "v.npy") == 50
    folder = tmp_path / "index" / "vectors" / "dense"
    assert (folder / "rows.json").exists() and not (folder / "ids.json").exists()  # no id list written
    hits = backend.knn_search("dense", vecs[[3, 0]], 2)
    assert [h[0].doc_id for h in hits] == ["d3", "d0"]
    assert json.loads((tmp_path / "index" / "backend.json").read_text())["spaces"]["dense"] == {"dim": 8}
    backend.put_vectors("dense", ["d7"], -np.ones((1, 8), np.float32))  # a later write by id still works
    assert backend.knn_search("dense", -np.ones((1, 8), np.float32), 1)[0][0].doc_id == "d7"
    np.save(tmp_path / "short.npy", vecs[:10])
    with pytest.raises(ValueError, match="10 rows for 50 documents"):
        backend.adopt_vectors("other", tmp_path / "short.npy")
    assert not backend.has_vectors("other")
