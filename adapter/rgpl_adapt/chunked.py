"""Encoding a whole store in bounded, resumable chunks (the cost that grows with the corpus).

Texts are read from the embedded store's ``docs.sqlite`` by insertion order (``ord``), one
chunk at a time, so memory holds one chunk of texts plus the memory-mapped vector file, never
the corpus. Vectors go to ``vectors.npy`` (float32, shape (n, dim), opened with
``numpy.lib.format.open_memmap``); each finished chunk is flushed and then marked by an empty
file ``done/<chunk>``. A rerun after a kill (even ``kill -9``) skips the marked chunks, so a kill
at 9M of 10M continues from 9M. Under torchrun each rank encodes the chunks ``i % world == rank``
of the same file (one machine or shared storage): :func:`encode_store_all_ranks`, called on every rank.

Usage::

    from rgpl_adapt.chunked import encode_store
    result = encode_store(encoder, "runs/x/index", "runs/x/vectors", chunk_size=65536)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rgpl_plugin.docstore import DocStore

from rgpl_adapt.distributed import DistInfo, barrier, dist_info
from rgpl_adapt.encoding import TextEncoder
from rgpl_adapt.progress import ProgressFactory, silent

__all__ = [
    "ChunkedResult",
    "CopyResult",
    "StoreIds",
    "StoreReader",
    "copy_documents",
    "encode_store",
    "encode_store_all_ranks",
    "put_in_chunks",
]

DEFAULT_CHUNK = 65536
log = logging.getLogger(__name__)


class StoreReader(DocStore):
    """Read-only, chunked access to the texts of a document store (``docs.sqlite``) by insertion order."""

    def iter_chunks(self, chunk_size: int) -> Iterator[tuple[int, list[str]]]:
        """``(start, texts)`` for every chunk in order."""
        n = self.count()
        for start in range(0, n, chunk_size):
            yield start, self.texts(start, min(n, start + chunk_size))


class StoreIds:
    """The ids of a store's documents by ord (row ``i`` of its encoded vectors is ord ``i``), looked up for
    the rows asked (search hits: :func:`rgpl_adapt.neighbours.exact_search` calls :meth:`many`), never all held."""

    def __init__(self, index_dir: str | os.PathLike) -> None:
        self.reader = StoreReader(index_dir)
        self.count = self.reader.count()

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, row: int) -> str:
        return self.reader.ids_of_ords([row])[0]

    def many(self, rows) -> list[str]:
        return self.reader.ids_of_ords(rows)


@dataclass(frozen=True)
class ChunkedResult:
    path: Path  # vectors.npy
    count: int
    dim: int
    chunks: int
    encoded_chunks: int  # by this call
    skipped_chunks: int  # finished by an earlier call


def _open_vectors(out: Path, n: int, dim: int, key: str, info: DistInfo, chunk_size: int) -> np.memmap:
    from numpy.lib.format import open_memmap

    path = out / "vectors.npy"
    meta = out / "meta.json"
    want = {"count": n, "dim": dim, "key": key, "chunk_size": chunk_size}  # done/<c> markers mean chunks of this size
    if path.exists() and meta.exists() and json.loads(meta.read_text()) == want:
        return open_memmap(path, mode="r+")
    if not info.is_main:
        raise RuntimeError(
            f"rank {info.rank}: {path} is not ready (missing, or made for another corpus, model or "
            "chunk size): rank 0 creates it first (encode_store_all_ranks on every rank does), and the "
            "folder must be on storage that every rank sees"
        )
    if (out / "done").exists():  # a different corpus or model: the finished chunks do not apply
        for marker in (out / "done").iterdir():
            marker.unlink()
    vectors = open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    meta.write_text(json.dumps(want))
    return vectors


def encode_store(
    encoder: TextEncoder,
    index_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dim: int,
    key: str = "",
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int = 64,
    info: DistInfo | None = None,
    progress: ProgressFactory = silent,
    ords: Sequence[int] | None = None,
) -> ChunkedResult:
    """Encode every document of the store at ``index_dir`` into ``out_dir/vectors.npy``, resumably.

    ``ords``: encode only these documents, row ``i`` = the document at ``ords[i]`` (e.g. a sample;
    name it in ``key``, e.g. with a hash of the ords).

    ``key`` names what is encoded with what (e.g. the run's upstream fingerprint): finished
    chunks are reused only under the same key, count and dimension, never mixed with vectors of
    another model. Peak memory: one chunk of texts and its vectors, plus the pages of the memory map in use.
    Under torchrun, rank 0 must create the file before the others start; each rank then
    encodes its own chunks (:func:`encode_store_all_ranks` does both).
    """
    info = info or dist_info()
    out = Path(out_dir)
    (out / "done").mkdir(parents=True, exist_ok=True)
    reader = StoreReader(index_dir)
    try:
        n = reader.count() if ords is None else len(ords)
        vectors = _open_vectors(out, n, dim, key, info, chunk_size)
        n_chunks = -(-n // chunk_size)
        mine = [c for c in range(n_chunks) if c % info.world == info.rank]
        todo = [c for c in mine if not (out / "done" / str(c)).exists()]
        with progress(total=n, desc="encoding corpus", unit="doc") as bar:
            bar.update(sum(min(n, (c + 1) * chunk_size) - c * chunk_size for c in mine if c not in todo))
            for c in todo:
                start, stop = c * chunk_size, min(n, (c + 1) * chunk_size)
                if ords is None:
                    texts = reader.texts(start, stop)
                else:
                    texts = [d.full_text() for d in reader.by_ords(ords[start:stop])]
                emb = encoder.encode(texts, batch_size=batch_size)
                if emb.shape != (stop - start, dim):
                    raise ValueError(f"the encoder returned {emb.shape} for chunk {c}; expected {(stop - start, dim)}")
                vectors[start:stop] = emb
                vectors.flush()  # the vectors are on disk before the chunk is marked done
                (out / "done" / str(c)).touch()
                log.info("encoded chunk %d of %d into %s", c, n_chunks, out)
                bar.update(stop - start)
        del vectors
    finally:
        reader.close()
    return ChunkedResult(out / "vectors.npy", n, dim, n_chunks, len(todo), len(mine) - len(todo))


def encode_store_all_ranks(
    encoder: TextEncoder,
    index_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    dim: int,
    info: DistInfo,
    key: str = "",
    chunk_size: int = DEFAULT_CHUNK,
    batch_size: int = 64,
    progress: ProgressFactory = silent,
) -> ChunkedResult:
    """:func:`encode_store` by every rank of a torchrun job at once, into one ``out_dir/vectors.npy``.

    Call it on every rank with the same arguments and encoder weights. Rank 0 creates the file
    (or keeps it with its finished chunks), a barrier, each rank encodes its chunks
    ``c % world == rank``, a barrier: on return every chunk is on disk, so rank 0 alone can
    search or serve the file. Not distributed: :func:`encode_store` itself. The result counts
    this rank's chunks.
    """
    if not info.enabled:
        return encode_store(encoder, index_dir, out_dir, dim=dim, key=key, chunk_size=chunk_size,
                            batch_size=batch_size, info=info, progress=progress)
    out = Path(out_dir)
    if info.is_main:
        (out / "done").mkdir(parents=True, exist_ok=True)
        reader = StoreReader(index_dir)
        try:
            created = _open_vectors(out, reader.count(), dim, key, info, chunk_size)
            del created
        finally:
            reader.close()
    barrier(info)  # the file exists before any rank writes its chunks into it
    res = encode_store(encoder, index_dir, out, dim=dim, key=key, chunk_size=chunk_size,
                       batch_size=batch_size, info=info, progress=progress)
    barrier(info)  # every rank's chunks are flushed and marked
    missing = [c for c in range(res.chunks) if info.is_main and not (out / "done" / str(c)).exists()]
    if missing:  # checked by rank 0, the one that reads the file next
        raise RuntimeError(
            f"rank {info.rank}: chunks {missing[:5]} of {out / 'vectors.npy'} are not marked done although "
            "every rank has finished: the folder must be on storage that every rank sees"
        )
    return res


def put_in_chunks(backend, space: str, index_dir: str | os.PathLike, vectors: Path, chunk_size: int = 10_000) -> int:
    """Add the memory-mapped ``vectors`` to ``backend``'s ``space`` by store order, a chunk at a time.

    When ``backend`` is the embedded index whose store was encoded (same folder), the file is
    adopted whole instead (:meth:`EmbeddedBackend.adopt_vectors`: a block copy, no id list).
    """
    adopt, own = getattr(backend, "adopt_vectors", None), getattr(backend, "path", None)
    if adopt is not None and own is not None and Path(own).resolve() == Path(index_dir).resolve():
        return adopt(space, vectors)
    vec = np.load(vectors, mmap_mode="r")
    reader = StoreReader(index_dir)
    try:
        n = reader.count()
        for start in range(0, n, chunk_size):
            stop = min(n, start + chunk_size)
            backend.put_vectors(space, reader.ids(start, stop), np.asarray(vec[start:stop]))
    finally:
        reader.close()
    return n


@dataclass(frozen=True)
class CopyResult:
    """What :func:`copy_documents` did: totals, and how much of an interrupted copy it reused."""

    count: int
    sha: str
    reused: int  # documents written by an earlier, interrupted call and kept
    resumed: bool  # the source continued its interrupted read (PIT + search_after) instead of reading again
    skipped_written: int  # documents read again (a rescan) and skipped because they were already written

    def fingerprint(self) -> dict:
        return {"count": self.count, "sha": self.sha}


def _sha_of_rows(writer, n: int, chunk_size: int):
    """The running sha over the first ``n`` stored documents, in store order (what a resumed copy continues)."""
    import hashlib

    h = hashlib.sha256()
    for start in range(0, n, chunk_size):
        for _, i, title, text in writer.rows(start, min(n, start + chunk_size)):
            h.update(json.dumps([i, title, text]).encode("utf-8"))
    return h


def copy_documents(source, store_dir: str | os.PathLike, *, key: str = "", chunk_size: int = 10_000) -> CopyResult:
    """Stream ``source``'s documents (a backend, e.g. a cluster index, or any iterable of documents)
    into ``store_dir/docs.sqlite`` a chunk at a time, resumably.

    Each chunk is one transaction of the store (:class:`~rgpl_plugin.docstore.DocStoreWriter`). A copy
    killed mid-way (even ``kill -9``) is continued by the next call with the same ``key`` (name the
    source and its size, so that a changed index starts over): the written chunks are kept and, when
    the source is a backend whose read recorded a :attr:`cursor` (a PIT and the ``search_after`` sort
    values of the chunk's last document), the read continues from there while that PIT is still open;
    otherwise the source is read again and the documents already written are skipped (an indexed id
    look-up per chunk, nothing re-written). A finished copy is made again from the start: reading the
    whole index is how a changed index with the same size is noticed.

    Writes and returns the count and sha (also ``store_dir/fingerprint.json`` as ``{"count", "sha"}``):
    the sha is :func:`rgpl_adapt.cluster.docs_fingerprint` of the stored documents in store order,
    computed on the way (over the kept part from the store when resuming).
    """
    import shutil

    from rgpl_plugin.base import batched
    from rgpl_plugin.docstore import DOCS_FILE, DocStoreWriter

    store_dir = Path(store_dir)
    (store_dir / "fingerprint.json").unlink(missing_ok=True)
    writer = DocStoreWriter(store_dir / DOCS_FILE, key=key)
    if writer.info("done"):  # finished earlier: read the index again from its start
        writer.close()
        shutil.rmtree(store_dir, ignore_errors=True)
        writer = DocStoreWriter(store_dir / DOCS_FILE, key=key)
    try:
        reused = writer.resumed.docs
        h = _sha_of_rows(writer, reused, chunk_size)
        cursor = json.loads(writer.info("cursor") or "null") if reused else None
        reads = getattr(source, "iter_documents", None)
        if reads is None:
            documents = iter(source)
        elif cursor is not None:
            documents = reads(resume=cursor)
        else:
            documents = reads()
        n, skipped = reused, 0
        for chunk in batched(documents, chunk_size):
            if reused:  # a rescan after an interrupted copy: the ids already written are skipped
                written = writer.stored([d.id for d in chunk])
                skipped += sum(d.id in written for d in chunk)
                chunk = [d for d in chunk if d.id not in written]
            where = getattr(source, "cursor", None)
            kept = writer.append_chunk(chunk, info={"cursor": json.dumps(where)})
            for _, i, title, text in kept:
                h.update(json.dumps([i, title, text]).encode("utf-8"))
            n += len(kept)
            log.info("copied %d documents into %s", n, store_dir)
        writer.finish()
    except BaseException:
        writer.close()
        raise
    result = CopyResult(n, h.hexdigest()[:16], reused, bool(getattr(source, "resumed", False)), skipped)
    (store_dir / "fingerprint.json").write_text(json.dumps(result.fingerprint()))
    return result
