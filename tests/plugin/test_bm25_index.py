"""The sharded BM25 build: shards bounded in size, assembled into one index that scores exactly as one writer's."""

from __future__ import annotations

import json

import pytest
from rgpl_plugin.bm25_index import INDEX_DIR, SHARDS_DIR, ShardedBm25Writer, assemble, open_index
from rgpl_plugin.embedded import EmbeddedBackend

from tests.conftest import make_documents

QUERIES = ["protein binding membrane", "gene expression mutation", "patients trial reduced", "study 17", "cell"]


def _rows(docs, start=0):
    return [(start + i, d.id, d.title or "", d.text) for i, d in enumerate(docs)]


def _results(backend):
    """Every matching document's BM25 score per query (all of them: equal scores may come in any order)."""
    return [{h.doc_id: round(h.score, 4) for h in hits} for hits in backend.bm25_search(QUERIES, 100)]


@pytest.fixture(scope="module")
def corpus():
    return make_documents(83, seed=3)


@pytest.fixture(scope="module")
def one_writer(tmp_path_factory, corpus):
    return EmbeddedBackend.create(tmp_path_factory.mktemp("one") / "index", iter(corpus), chunk_size=20)


def test_shards_assemble_into_an_index_that_scores_like_one_writer(tmp_path, corpus, one_writer):
    sharded = EmbeddedBackend.create(tmp_path / "index", iter(corpus), chunk_size=10, bm25_shard_docs=7)
    build = sharded.meta["build"]
    assert build["bm25_shards"] == 12 and build["bm25_segments"] >= 12  # ceil(83 / 7) shards, one segment or more each
    assert one_writer.meta["build"]["bm25_shards"] == 1
    assert not (tmp_path / "index" / SHARDS_DIR).exists()
    assert sharded._index.searcher().num_docs == 83
    assert len(json.loads((tmp_path / "index" / INDEX_DIR / "meta.json").read_text())["segments"]) == build["bm25_segments"]
    got, want = _results(sharded), _results(one_writer)
    assert got == want  # same hits, same BM25 scores: statistics are over all segments
    assert all(hits for hits in want)


def test_each_shard_holds_at_most_shard_docs_documents_in_ord_order(tmp_path, corpus):
    writer = ShardedBm25Writer(tmp_path, shard_docs=30, fresh=True)
    for start in range(0, 83, 25):  # chunks that straddle shard boundaries
        writer.add(_rows(corpus[start : start + 25], start))
    assert writer.docs == 83 and writer.shards == 3
    counts = [open_index(p).searcher().num_docs for p in sorted((tmp_path / SHARDS_DIR).iterdir())]
    assert counts == [30, 30, 23]
    shard1 = open_index(tmp_path / SHARDS_DIR / "0001").searcher()
    hits = shard1.search(open_index(tmp_path / SHARDS_DIR / "0001").parse_query("*"), 100).hits
    ords = sorted(shard1.fast_field_values("ord", [a for _, a in hits]))
    assert ords == list(range(30, 60))
    info = writer.finish()
    assert info["bm25_shards"] == 3 and open_index(tmp_path / INDEX_DIR).searcher().num_docs == 83


def test_a_resumed_writer_continues_the_last_shard(tmp_path, corpus):
    first = ShardedBm25Writer(tmp_path, shard_docs=30, fresh=True)
    first.add(_rows(corpus[:40]))
    first._close_writer()  # the process ends here (a kill leaves the same committed state)
    again = ShardedBm25Writer(tmp_path, shard_docs=30)
    assert (again.docs, again.shards) == (40, 2)
    again.add(_rows(corpus[40:], 40))
    assert again.finish()["bm25_shards"] == 3
    assert open_index(tmp_path / INDEX_DIR).searcher().num_docs == 83


def test_a_build_killed_around_assembly_is_redone_from_the_shards(tmp_path, corpus):
    writer = ShardedBm25Writer(tmp_path, shard_docs=30, fresh=True)
    writer.add(_rows(corpus))
    writer._close_writer()
    shards = sorted((tmp_path / SHARDS_DIR).iterdir())
    assemble(shards, tmp_path / INDEX_DIR)  # killed after assembling, before the shards were removed
    again = ShardedBm25Writer(tmp_path, shard_docs=30)
    assert not (tmp_path / INDEX_DIR).exists() and again.docs == 83 and again.shards == 3
    again.finish()
    # killed after the shards were removed, before the build was swapped into place: the assembled
    # index becomes the first shard of the resumed writer, nothing is lost or indexed twice
    resumed = ShardedBm25Writer(tmp_path, shard_docs=30)
    assert (resumed.docs, resumed.shards) == (83, 1)
    resumed.finish()
    assert open_index(tmp_path / INDEX_DIR).searcher().num_docs == 83


def test_killed_sharded_embedded_build_resumes_to_the_same_index(tmp_path, corpus, one_writer):
    class Crash(Exception):
        pass

    def crashing(docs, after):
        for i, d in enumerate(docs):
            if i == after:
                raise Crash
            yield d

    path = tmp_path / "index"
    with pytest.raises(Crash):
        EmbeddedBackend.create(path, crashing(corpus, 50), resume_key="fp", chunk_size=10, bm25_shard_docs=15)
    assert (tmp_path / ".index.building" / SHARDS_DIR).exists()
    backend = EmbeddedBackend.create(path, iter(corpus), resume_key="fp", chunk_size=10, bm25_shard_docs=15)
    assert backend.meta["build"]["chunks_resumed"] == 5 and backend.meta["build"]["bm25_shards"] == 6
    assert _results(backend) == _results(one_writer)


def test_an_empty_corpus_gets_an_empty_index(tmp_path):
    backend = EmbeddedBackend.create(tmp_path / "index", iter([]), bm25_shard_docs=5)
    assert backend.count() == 0 and backend.bm25_search(["anything"], 3) == [[]]


def test_shard_docs_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="shard_docs must be >= 1"):
        ShardedBm25Writer(tmp_path, shard_docs=0)


def test_a_build_killed_with_sigkill_across_shards_resumes_to_the_same_index(tmp_path, corpus, one_writer):
    """A real ``kill -9`` after the shards 0000 and 0001 are full (15 documents each) and 0002 has begun."""
    import os
    import signal
    import subprocess

    from tests.kill9 import python

    path = tmp_path / "index"
    code = (
        "import time, rgpl_plugin.bm25_index as b\n"
        "from rgpl_plugin.embedded import EmbeddedBackend\n"
        "from tests.conftest import make_documents\n"
        "add = b.ShardedBm25Writer.add\n"
        "def slow(self, rows):\n"
        "    add(self, rows); print(self.docs, self.shards, flush=True); time.sleep(0.3)\n"
        "b.ShardedBm25Writer.add = slow\n"
        f"EmbeddedBackend.create({str(path)!r}, iter(make_documents(83, seed=3)), resume_key='fp', chunk_size=10,"
        " bm25_shard_docs=15)\n"
    )
    proc = python(code, stdout=subprocess.PIPE, text=True)
    try:
        while True:
            line = proc.stdout.readline()
            assert line, "the build ended before it could be killed"
            docs, shards = map(int, line.split())
            if docs >= 40:
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert (docs, shards) == (40, 3) and not path.exists()
    resumed = EmbeddedBackend.create(path, iter(corpus), resume_key="fp", chunk_size=10, bm25_shard_docs=15)
    assert resumed.meta["build"]["chunks_resumed"] >= 4 and resumed.meta["build"]["bm25_shards"] == 6
    assert resumed._index.searcher().num_docs == 83
    assert _results(resumed) == _results(one_writer)
