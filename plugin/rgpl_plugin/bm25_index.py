"""The embedded index's BM25 side (tantivy): its analyser and schema, and a build whose memory is flat in the corpus.

Why the build writes shards. tantivy's writer merges segments in the background by its
``LogMergePolicy`` (segments of up to 10M documents), which tantivy-py does not let a caller
configure, and a merge holds memory that grows with the documents it merges (document id maps,
field norms, the ``ord`` column). One writer over the whole corpus therefore peaked higher the
bigger the corpus. :class:`ShardedBm25Writer` gives each ord range of at most ``shard_docs``
documents its own tantivy index and writer, so every merge stays inside one shard, and at the end
:func:`assemble` lists the segments of all shards in one ``meta.json``. A tantivy segment is
self-contained (its files are named by its uuid and hold only shard-local document numbers; the
global ord is a stored fast field), and tantivy computes BM25 statistics (document frequency,
average field length) over all segments of a searcher, so the assembled index scores exactly as
one built by a single writer (tests/plugin/test_bm25_index.py compares them).

The shards live in ``tantivy-shards/0000, 0001, ...`` while the build runs; a resumed build
continues the last shard. Assembly hard-links the segment files into ``tantivy/`` (copies where
the filesystem cannot link), so it can be redone from the shards after a kill.

Freed memory goes back to the system after every commit (:func:`release_freed_memory`): the
writer's indexing and merge threads free large blocks that glibc otherwise keeps in its arenas.
Measured on a 1M-document build, that alone took the peak anonymous memory from 229 MB to 157 MB.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

TOKENIZER_NAME = "rgpl_en_stem"
SEARCH_FIELDS = ("title", "text")
SHARD_DOCS = 1_000_000  # documents per build shard: bounds the memory of tantivy's merges
WRITER_HEAP = 128_000_000
SHARDS_DIR = "tantivy-shards"
INDEX_DIR = "tantivy"
_TANTIVY_META = "meta.json"
_MANAGED = ".managed.json"


@functools.cache
def tantivy() -> Any:
    from rgpl_adapt.devices import require

    return require("tantivy")


def english_analyzer() -> Any:
    """tantivy's ``en_stem`` pipeline, built explicitly so index and queries share one analyser."""
    tv = tantivy()
    return (
        tv.TextAnalyzerBuilder(tv.Tokenizer.simple())
        .filter(tv.Filter.remove_long(40))
        .filter(tv.Filter.lowercase())
        .filter(tv.Filter.stemmer("english"))
        .build()
    )


def schema() -> Any:
    tv = tantivy()
    sb = tv.SchemaBuilder()
    for field in SEARCH_FIELDS:
        sb.add_text_field(field, stored=False, tokenizer_name=TOKENIZER_NAME, index_option="freq")
    sb.add_unsigned_field("ord", stored=False, indexed=False, fast=True)
    return sb.build()


@functools.cache
def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to trim
        return None


def release_freed_memory() -> None:
    """Give memory that native code has freed back to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def open_index(folder: Path) -> Any:
    """A tantivy index at ``folder`` with the analyser registered (created empty if absent)."""
    tv = tantivy()
    if (folder / _TANTIVY_META).exists():
        index = tv.Index.open(str(folder))
    else:
        folder.mkdir(parents=True, exist_ok=True)
        index = tv.Index(schema(), path=str(folder))
    index.register_tokenizer(TOKENIZER_NAME, english_analyzer())
    index.reload()
    return index


class ShardedBm25Writer:
    """Adds rows ``(ord, id, title, text)`` in ord order to shards of at most ``shard_docs`` documents.

    ``folder`` is the build folder. Existing shards are continued (a resumed build); an assembled
    ``tantivy/`` left by a build killed after assembly is set aside the same way (see :meth:`__init__`).
    :attr:`docs` counts the committed documents of all shards: the first ``docs`` ords.
    """

    def __init__(self, folder: Path, *, shard_docs: int = SHARD_DOCS, fresh: bool = False) -> None:
        if shard_docs < 1:
            raise ValueError(f"shard_docs must be >= 1, got {shard_docs}")
        self.folder = Path(folder)
        self.shard_docs = shard_docs
        self.root = self.folder / SHARDS_DIR
        assembled = self.folder / INDEX_DIR
        if fresh:
            shutil.rmtree(self.root, ignore_errors=True)
            shutil.rmtree(assembled, ignore_errors=True)
        elif assembled.exists():
            if self.root.exists():  # killed after assembling, before the shards were removed: redo it
                shutil.rmtree(assembled)
            elif (assembled / _TANTIVY_META).exists():  # a finished assembly, or a build by one writer
                self.root.mkdir(parents=True)
                assembled.rename(self.root / "0000")
            else:
                shutil.rmtree(assembled)
        self.root.mkdir(parents=True, exist_ok=True)
        self._shards = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.isdigit())
        if self._shards and not (self._shards[-1] / _TANTIVY_META).exists():  # killed while creating it
            shutil.rmtree(self._shards.pop())
        self._counts = [self._num_docs(p) for p in self._shards]
        self._index: Any = None
        self._writer: Any = None

    @staticmethod
    def _num_docs(shard: Path) -> int:
        return int(open_index(shard).searcher().num_docs)

    @property
    def docs(self) -> int:
        return sum(self._counts)

    @property
    def shards(self) -> int:
        return len(self._shards)

    def add(self, rows: Sequence[tuple[int, str, str, str]]) -> None:
        """Index ``rows`` and commit them (each shard that receives rows is committed)."""
        tv = tantivy()
        i = 0
        while i < len(rows):
            if not self._shards or self._counts[-1] >= self.shard_docs:
                self._close_writer()
                self._shards.append(self.root / f"{len(self._shards):04d}")
                self._counts.append(0)
            writer = self._open_writer()
            take = rows[i : i + self.shard_docs - self._counts[-1]]
            for ord_, _id, title, text in take:
                td = tv.Document()
                td.add_text("title", title)
                td.add_text("text", text)
                td.add_unsigned("ord", ord_)
                writer.add_document(td)
            writer.commit()
            self._counts[-1] += len(take)
            i += len(take)
            release_freed_memory()

    def _open_writer(self) -> Any:
        if self._writer is None:
            self._index = open_index(self._shards[-1])
            self._writer = self._index.writer(WRITER_HEAP, 0)
        return self._writer

    def _close_writer(self) -> None:
        """Let the shard's merges finish (they are bounded by the shard's size) and free its writer."""
        if self._writer is not None:
            self._writer.wait_merging_threads()
            self._writer = self._index = None
            release_freed_memory()

    def finish(self) -> dict[str, int]:
        """Finish the merges, assemble ``tantivy/`` from the shards and remove them; returns build info."""
        self._close_writer()
        if not self._shards:  # an empty corpus still gets an (empty) index
            self._shards.append(self.root / "0000")
            self._counts.append(0)
            open_index(self._shards[-1])
        segments = assemble(self._shards, self.folder / INDEX_DIR)
        shutil.rmtree(self.root)
        return {"bm25_shards": len(self._shards), "bm25_segments": segments}


def assemble(shards: Sequence[Path], dest: Path) -> int:
    """One tantivy index at ``dest`` holding the segments of every shard, in shard order.

    The segment files are hard-linked (copied where linking fails). Built in ``dest``'s sibling
    ``<name>.assembling`` and renamed, so ``dest`` is either absent or complete. Returns the
    number of segments.
    """
    tmp = dest.parent / f"{dest.name}.assembling"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta: dict[str, Any] | None = None
    managed: list[str] = []
    for shard in shards:
        shard_meta = json.loads((shard / _TANTIVY_META).read_text())
        if meta is None:
            meta = {**shard_meta, "segments": [], "opstamp": 0}
        elif shard_meta["schema"] != meta["schema"]:
            raise ValueError(f"{shard} has another schema than {shards[0]}; rebuild the index")
        for segment in shard_meta["segments"]:
            if segment.get("deletes"):
                raise ValueError(f"{shard}: segment {segment['segment_id']} has deletes; the build never deletes")
            stem = segment["segment_id"].replace("-", "")
            for file in shard.iterdir():
                if file.name.startswith(stem + "."):
                    _link_or_copy(file, tmp / file.name)
                    managed.append(file.name)
            meta["segments"].append(segment)
        meta["opstamp"] = max(meta["opstamp"], int(shard_meta.get("opstamp", 0)))
    assert meta is not None
    (tmp / _TANTIVY_META).write_text(json.dumps(meta))
    (tmp / _MANAGED).write_text(json.dumps(sorted(managed) + [_TANTIVY_META]))
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    logger.info("assembled %d BM25 segments from %d shards into %s", len(meta["segments"]), len(shards), dest)
    return len(meta["segments"])


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
