"""Chunked, resumable encoding of a whole store: bounded chunks, kill -9 and resume, ranks."""

from __future__ import annotations

import json
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from rgpl_adapt.chunked import StoreReader, encode_store, encode_store_all_ranks
from rgpl_adapt.distributed import DistInfo
from rgpl_adapt.records import Document

from tests.kill9 import done_files, kill_when, python
from tests.plugin.conftest import os_client, osmem, osmem_url  # noqa: F401 (fixtures of the kill test)


class HashEncoder:
    """A deterministic (across processes) stand-in encoder that records the size of every call."""

    def __init__(self, dim: int = 8, delay: float = 0.0) -> None:
        self.dim, self.delay, self.calls = dim, delay, []

    def encode(self, texts, batch_size=64, progress=None):
        self.calls.append(len(texts))
        time.sleep(self.delay)
        return np.array([[float((zlib.crc32(t.encode()) >> k) % 97) + 1 for k in range(self.dim)] for t in texts], dtype=np.float32)


def build_store(path: Path, n: int) -> Path:
    from rgpl_plugin.embedded import EmbeddedBackend

    docs = (Document(id=f"d{i}", text=f"passage number {i} about topic {i % 7}", title="" if i % 3 else "T") for i in range(n))
    EmbeddedBackend.create(path, docs).close()  # a generator: the store is written as a stream
    return path


def test_every_document_is_encoded_in_bounded_chunks_in_store_order(tmp_path):
    index = build_store(tmp_path / "index", 250)
    enc = HashEncoder()
    res = encode_store(enc, index, tmp_path / "vec", dim=8, chunk_size=100)
    assert (res.count, res.chunks, res.encoded_chunks, res.skipped_chunks) == (250, 3, 3, 0)
    assert enc.calls == [100, 100, 50]  # never more than one chunk of texts at a time
    vec = np.load(res.path)
    reader = StoreReader(index)
    assert reader.ids(0, 3) == ["d0", "d1", "d2"]
    np.testing.assert_array_equal(vec[100:200], HashEncoder().encode(reader.texts(100, 200)))
    assert reader.texts(0, 1) == ["T passage number 0 about topic 0"]  # title and text, as encoded
    again = encode_store(HashEncoder(), index, tmp_path / "vec", dim=8, chunk_size=100)
    assert (again.encoded_chunks, again.skipped_chunks) == (0, 3)


def test_ranks_encode_disjoint_shares_of_one_file(tmp_path):
    index = build_store(tmp_path / "index", 250)
    encode_store(HashEncoder(), index, tmp_path / "vec", dim=8, chunk_size=50, info=DistInfo(rank=0, world=2))
    r1 = encode_store(HashEncoder(), index, tmp_path / "vec", dim=8, chunk_size=50, info=DistInfo(rank=1, world=2))
    assert r1.encoded_chunks == 2  # chunks 1 and 3 of 0..4
    full = encode_store(HashEncoder(), tmp_path / "index", tmp_path / "single", dim=8, chunk_size=50)
    np.testing.assert_array_equal(np.load(r1.path), np.load(full.path))


def test_a_rank_that_finds_no_file_says_rank_0_creates_it(tmp_path):
    index = build_store(tmp_path / "index", 120)
    with pytest.raises(RuntimeError, match="rank 1: .* is not ready .* rank 0 creates it first"):
        encode_store(HashEncoder(), index, tmp_path / "vec", dim=8, chunk_size=50, info=DistInfo(rank=1, world=2))
    encode_store(HashEncoder(), index, tmp_path / "vec", dim=8, chunk_size=50, key="a", info=DistInfo(rank=0, world=2))
    with pytest.raises(RuntimeError, match="not ready"):  # made for another model (key): not this rank's to reset
        encode_store(HashEncoder(), index, tmp_path / "vec", dim=8, chunk_size=50, key="b", info=DistInfo(rank=1, world=2))


def test_one_process_encodes_all_ranks_share_as_encode_store_does(tmp_path):
    index = build_store(tmp_path / "index", 120)
    enc = HashEncoder()
    res = encode_store_all_ranks(enc, index, tmp_path / "vec", dim=8, chunk_size=50, info=DistInfo())
    assert (res.chunks, res.encoded_chunks, enc.calls) == (3, 3, [50, 50, 20])
    plain = encode_store(HashEncoder(), index, tmp_path / "plain", dim=8, chunk_size=50)
    assert np.load(res.path).tobytes() == np.load(plain.path).tobytes()


def test_a_changed_store_starts_over_instead_of_mixing_vectors(tmp_path):
    encode_store(HashEncoder(), build_store(tmp_path / "a", 120), tmp_path / "vec", dim=8, chunk_size=50)
    res = encode_store(HashEncoder(), build_store(tmp_path / "b", 130), tmp_path / "vec", dim=8, chunk_size=50)
    assert (res.count, res.encoded_chunks, res.skipped_chunks) == (130, 3, 0)


def test_kill_9_mid_encoding_resumes_from_the_finished_chunks(tmp_path):
    index = build_store(tmp_path / "index", 3000)
    out = tmp_path / "vec"
    code = (
        "import sys; sys.path[:0] = sys.argv[1:3]; from test_chunked import HashEncoder; "
        "from rgpl_adapt.chunked import encode_store; "
        f"encode_store(HashEncoder(delay=0.5), {str(index)!r}, {str(out)!r}, dim=8, chunk_size=200)"
    )
    here = str(Path(__file__).parent)
    kill_when(python(code, here, here), lambda: done_files(out / "done") >= 3, "the encoding")
    finished = done_files(out / "done")
    assert 3 <= finished < 15
    enc = HashEncoder()
    res = encode_store(enc, index, out, dim=8, chunk_size=200)
    assert res.skipped_chunks == finished and res.encoded_chunks == 15 - finished  # resumed, not from zero
    assert sum(enc.calls) == 3000 - 200 * finished
    vec = np.load(res.path)
    reader = StoreReader(index)
    assert vec.shape == (3000, 8) and reader.count() == 3000
    np.testing.assert_array_equal(vec, HashEncoder().encode(reader.texts(0, 3000)))  # counts and values match


def test_missing_store_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="build the index first"):
        StoreReader(tmp_path)


# -- copying a source's documents into a store, resumably ----------------------------------------------


class PitSource:
    """A backend-like source whose read has a cursor (the last sort value) and can resume from one,
    unless its point in time is ``gone``; ``fail_after`` documents raises (an interrupted copy)."""

    def __init__(self, docs, *, fail_after=None, gone=False) -> None:
        self.docs, self.fail_after, self.gone = docs, fail_after, gone
        self.cursor, self.resumed, self.read, self.resume_given = None, False, 0, None

    def iter_documents(self, batch_size=1000, resume=None):
        self.resume_given = resume
        self.resumed = bool(resume) and not self.gone
        start = resume["after"][0] + 1 if self.resumed else 0
        for n in range(start, len(self.docs)):
            if self.fail_after is not None and self.read >= self.fail_after:
                raise ConnectionError("the cluster went away")
            self.cursor = {"pit_id": "p1", "after": [n]}
            self.read += 1
            yield self.docs[n]


def _docs(n: int) -> list[Document]:
    return [Document(id=f"d{i}", text=f"passage {i}", title="T" if i % 2 else "") for i in range(n)]


def _stored(store: Path) -> list[Document]:
    reader = StoreReader(store)
    try:
        return reader.documents(0, reader.count())
    finally:
        reader.close()


def test_copy_continues_an_interrupted_read_from_its_cursor(tmp_path):
    from rgpl_adapt.chunked import copy_documents
    from rgpl_adapt.cluster import docs_fingerprint

    docs = _docs(250)
    with pytest.raises(ConnectionError):
        copy_documents(PitSource(docs, fail_after=130), tmp_path / "store", key="idx:250", chunk_size=50)
    assert not (tmp_path / "store" / "fingerprint.json").exists()
    source = PitSource(docs)
    res = copy_documents(source, tmp_path / "store", key="idx:250", chunk_size=50)
    assert source.resume_given == {"pit_id": "p1", "after": [99]}  # the last document of the last finished chunk
    assert (res.reused, res.resumed, res.skipped_written, source.read) == (100, True, 0, 150)
    assert _stored(tmp_path / "store") == docs
    whole = copy_documents(PitSource(docs), tmp_path / "whole", key="idx:250", chunk_size=50)
    assert (res.count, res.sha) == (whole.count, whole.sha) == (250, docs_fingerprint(docs))
    assert json.loads((tmp_path / "store" / "fingerprint.json").read_text()) == {"count": 250, "sha": whole.sha}


def test_copy_reads_again_and_skips_written_documents_when_the_point_in_time_is_gone(tmp_path):
    from rgpl_adapt.chunked import copy_documents

    docs = _docs(250)
    with pytest.raises(ConnectionError):
        copy_documents(PitSource(docs, fail_after=120), tmp_path / "store", key="k", chunk_size=50)
    source = PitSource(docs, gone=True)
    res = copy_documents(source, tmp_path / "store", key="k", chunk_size=50)
    assert source.resume_given is not None and not res.resumed
    assert (res.reused, res.skipped_written, source.read, res.count) == (100, 100, 250, 250)
    assert _stored(tmp_path / "store") == docs  # nothing written twice, store order kept
    assert res.sha == copy_documents(iter(docs), tmp_path / "plain", key="k", chunk_size=50).sha


def test_a_finished_copy_or_another_key_starts_over(tmp_path):
    from rgpl_adapt.chunked import copy_documents

    copy_documents(PitSource(_docs(120)), tmp_path / "store", key="idx:120", chunk_size=50)
    again = PitSource(_docs(120))
    res = copy_documents(again, tmp_path / "store", key="idx:120", chunk_size=50)
    assert (res.reused, again.resume_given, again.read) == (0, None, 120)  # finished: the index is read again
    with pytest.raises(ConnectionError):
        copy_documents(PitSource(_docs(120), fail_after=60), tmp_path / "store", key="idx:120", chunk_size=50)
    other = PitSource(_docs(90))
    res = copy_documents(other, tmp_path / "store", key="idx:90", chunk_size=50)
    assert (res.reused, other.resume_given, res.count) == (0, None, 90)
    assert _stored(tmp_path / "store") == _docs(90)


def test_kill_9_mid_copy_from_a_cluster_continues_in_the_point_in_time(tmp_path, os_client, osmem_url):
    """A real PIT read (osmem-server, another process) killed with SIGKILL after some chunks: the rerun
    continues the same point in time after the last finished chunk and ends with the uninterrupted copy."""
    from rgpl_adapt.chunked import copy_documents
    from rgpl_plugin.opensearch import OpenSearchBackend

    from tests.kill9 import kill_copy_after_chunks
    from tests.plugin.conftest import load_corpus

    docs = [Document(id=d.id, text=d.text, title=f"Title {d.id}") for d in _docs(600)]
    load_corpus(os_client, "corpus", docs)
    store = tmp_path / "store"
    kill_copy_after_chunks(osmem_url, "corpus", store, key="c:600", chunk_size=50)
    backend = OpenSearchBackend(os_client, "corpus")
    read = []

    class Counting:
        def iter_documents(self, **kw):
            for d in backend.iter_documents(batch_size=40, **kw):
                read.append(d.id)
                yield d

        cursor = property(lambda self: backend.cursor)
        resumed = property(lambda self: backend.resumed)

    res = copy_documents(Counting(), store, key="c:600", chunk_size=50)
    assert res.resumed and backend.read_with == "pit"
    assert 150 <= res.reused < 600 and len(read) == 600 - res.reused and res.skipped_written == 0
    whole = copy_documents(OpenSearchBackend(os_client, "corpus"), tmp_path / "whole", key="c:600", chunk_size=50)
    assert _stored(store) == _stored(tmp_path / "whole") and res.sha == whole.sha and res.count == 600
