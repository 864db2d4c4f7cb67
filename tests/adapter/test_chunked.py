"""Chunked, resumable encoding of a whole store: bounded chunks, kill -9 and resume, ranks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from rgpl_adapt.chunked import StoreReader, encode_store, encode_store_all_ranks
from rgpl_adapt.distributed import DistInfo
from rgpl_adapt.records import Document


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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(Path(__file__).parent), str(Path(__file__).parent)], env=env)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if (out / "done").exists() and len(list((out / "done").iterdir())) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the encoding ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((out / "done").iterdir()))
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
