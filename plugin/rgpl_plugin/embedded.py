"""The embedded default backend: a folder with a tantivy BM25 index, a document store and vectors.

No server needed: ``rgpl-adapt`` can adapt and serve a retriever over a folder such as
``runs/x/index/``::

    backend.json     format version, document count, duplicate ids skipped, vector spaces
    tantivy/         BM25 index: title + text (English stemming), ord (fast u64); ids are resolved by ord
                     (an index built before this version also holds an unused stored ``id`` field);
                     written in shards and assembled into one index (:mod:`rgpl_plugin.bm25_index`)
    docs.sqlite      documents by insertion order (``ord``) and id: fast, stable-ordered reads
    ids.offsets.npy  the ids by ord, memory-mapped (:mod:`rgpl_plugin.idtable`): search hits become
    ids.blob         ids without a SQLite lookup or an id list in memory
    vectors/<space>/ named vector spaces (see :mod:`rgpl_plugin.vectors`)

The document store is SQLite (stdlib, indexed lookups by id without loading every id into
memory, keyset pagination for ``iter_documents``). BM25 hits are resolved to ids through a fast
``ord`` field instead of loading stored tantivy documents.

Queries are never given to tantivy's query parser: they are analysed with the same analyser the
index uses (simple tokenizer, remove tokens > 40 bytes, lowercase, English Snowball stemmer, i.e.
tantivy's ``en_stem``) and turned into a disjunction of term queries over title and text, so any
string (``?``, ``:``, quotes, ``AND``, parentheses, ``-``) is searched as plain words.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from rgpl_adapt.progress import ProgressFactory, silent

from rgpl_plugin.base import BackendError, Document, FusionMethod, Hit, batched
from rgpl_plugin.bm25_index import SEARCH_FIELDS as _SEARCH_FIELDS
from rgpl_plugin.bm25_index import SHARD_DOCS, TOKENIZER_NAME, ShardedBm25Writer, english_analyzer
from rgpl_plugin.bm25_index import tantivy as _tantivy
from rgpl_plugin.docstore import DocStore, DocStoreWriter
from rgpl_plugin.fusion import fuse
from rgpl_plugin.idtable import IdTable, write_id_table
from rgpl_plugin.legs import LegMode, LegRunner
from rgpl_plugin.vectors import DEFAULT_HNSW_THRESHOLD, VectorStore, check_space_name

logger = logging.getLogger(__name__)

FORMAT = "rgpl-embedded"
FORMAT_VERSION = 1
META_FILE = "backend.json"
_SQL_CHUNK = 500
_ID_CHUNK = 100_000  # ids per read when writing the id table
BUILD_CHUNK = 50_000  # documents per committed (resumable) build chunk


def is_index(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an embedded index (its ``backend.json`` names this format)."""
    meta = Path(path) / META_FILE
    try:
        return json.loads(meta.read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    tmp = folder / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2, sort_keys=True))
    os.replace(tmp, folder / META_FILE)


class EmbeddedBackend:
    """A :class:`rgpl_plugin.base.Backend` stored in one folder. Use :meth:`create` or :meth:`open`."""

    name = "embedded"

    def __init__(self, path: Path, *, hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD, legs: LegMode = "auto") -> None:
        """Open the index at ``path`` (prefer :meth:`open`, which documents the errors)."""
        self.path = Path(path)
        if not is_index(self.path):
            raise BackendError(
                f"{self.path} is not an embedded rgpl index (no valid {META_FILE}); "
                "build one with EmbeddedBackend.create(path, documents)"
            )
        self.meta: dict[str, Any] = json.loads((self.path / META_FILE).read_text())
        if self.meta.get("format_version") != FORMAT_VERSION:
            raise BackendError(
                f"{self.path} has index format version {self.meta.get('format_version')}, this version "
                f"of rgpl-adapt reads version {FORMAT_VERSION}; rebuild it with EmbeddedBackend.create(..., overwrite=True)"
            )
        tv = _tantivy()
        self._index = tv.Index.open(str(self.path / "tantivy"))
        self._analyzer = english_analyzer()
        self._index.register_tokenizer(TOKENIZER_NAME, self._analyzer)
        self._schema = self._index.schema
        uri = (self.path / "docs.sqlite").resolve().as_uri() + "?mode=ro"
        self._db: sqlite3.Connection | None = sqlite3.connect(uri, uri=True, check_same_thread=False)
        self._id_table = IdTable.open(self.path, self.count())  # None: an index built before id tables
        self.legs = LegRunner(legs)  # how hybrid_search runs its two legs (rgpl_plugin.legs)
        self._vectors = VectorStore(self.path / "vectors", hnsw_threshold=hnsw_threshold, resolve_rows=self.ids_of_ords)

    # ------------------------------------------------------------------ build
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        documents: Iterable[Document],
        *,
        progress: ProgressFactory = silent,
        overwrite: bool = False,
        hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD,
        resume_key: str | None = None,
        chunk_size: int = BUILD_CHUNK,
        bm25_shard_docs: int = SHARD_DOCS,
    ) -> EmbeddedBackend:
        """Index ``documents`` into a new folder ``path`` and return the opened backend.

        Refuses an existing index unless ``overwrite=True``, and never writes into a non-empty
        folder that is not an index. The build happens in a sibling temp folder that replaces
        ``path`` only once complete, so a failed build leaves an old index intact. A repeated
        document id keeps its first document; the others are counted in ``duplicate_ids``.

        ``documents`` is consumed as a stream, ``chunk_size`` documents at a time (memory holds one
        chunk). With ``resume_key`` (a fingerprint of the input) the build is resumable: the temp
        folder is ``.<name>.building``, each chunk is committed to SQLite and tantivy, and a build
        killed at any point continues after its last finished chunk when called again with the same
        key and the same input (a different key starts over).

        The BM25 index is written in shards of ``bm25_shard_docs`` documents and assembled into one
        index at the end, so the build's memory does not grow with the corpus
        (:mod:`rgpl_plugin.bm25_index`); search results do not depend on the shard size.
        """
        path = Path(path)
        if path.exists():
            if is_index(path):
                if not overwrite:
                    raise BackendError(
                        f"an index already exists at {path}; pass overwrite=True to replace it "
                        "or choose another folder"
                    )
            elif not path.is_dir() or any(path.iterdir()):
                raise BackendError(
                    f"{path} exists and is not an empty folder or an embedded index; refusing to write "
                    "into it, choose another folder"
                )
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_key is None:
            tmp = path.parent / f".{path.name}.building-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
        else:
            tmp = path.parent / f".{path.name}.building"
        tmp.mkdir(exist_ok=True)
        try:
            count, duplicates, build = _build(
                tmp, documents, progress, key=resume_key or "", chunk_size=chunk_size, shard_docs=bm25_shard_docs
            )
            _write_id_table(tmp, count)
            _write_meta(
                tmp,
                {
                    "format": FORMAT,
                    "format_version": FORMAT_VERSION,
                    "doc_count": count,
                    "duplicate_ids": duplicates,
                    "tokenizer": "en_stem (simple, remove_long 40, lowercase, english stemmer)",
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "spaces": {},
                    "build": build,
                },
            )
            _swap_into_place(tmp, path)
        except BaseException:
            if resume_key is None:  # a resumable build keeps its finished chunks for the next call
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if duplicates:
            logger.warning("%d documents with an already-seen id were skipped (first one kept)", duplicates)
        logger.info("indexed %d documents into %s", count, path)
        return cls(path, hnsw_threshold=hnsw_threshold)

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, hnsw_threshold: int = DEFAULT_HNSW_THRESHOLD, legs: LegMode = "auto"
    ) -> EmbeddedBackend:
        """Reopen an index built by :meth:`create` without rebuilding anything.

        ``legs``: how :meth:`hybrid_search` runs its BM25 and k-NN legs (:class:`rgpl_plugin.legs.LegRunner`:
        ``auto`` measures whether two threads beat a sequence on this machine). Raises
        :class:`BackendError` when ``path`` is not an embedded index.
        """
        return cls(Path(path), hnsw_threshold=hnsw_threshold, legs=legs)

    # -------------------------------------------------------------- documents
    @property
    def duplicate_ids(self) -> int:
        """How many input documents were skipped at build time because their id was already seen."""
        return int(self.meta.get("duplicate_ids", 0))

    def count(self) -> int:
        return int(self.meta["doc_count"])

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise BackendError(
                f"the index at {self.path} was closed; open it again with EmbeddedBackend.open"
            )
        return self._db

    def iter_documents(self, batch_size: int = 1000) -> Iterator[Document]:
        """Every document once, in insertion order."""
        last = -1
        while True:
            rows = (
                self._conn()
                .execute(
                    "SELECT ord, id, title, text FROM docs WHERE ord > ? ORDER BY ord LIMIT ?",
                    (last, batch_size),
                )
                .fetchall()
            )
            if not rows:
                return
            for _, doc_id, title, text in rows:
                yield Document(id=doc_id, text=text, title=title)
            last = rows[-1][0]

    def get_documents(self, ids: Sequence[str]) -> list[Document]:
        """The documents with these ids, in the same order; KeyError naming unknown ids."""
        found: dict[str, Document] = {}
        for chunk in batched(dict.fromkeys(ids), _SQL_CHUNK):
            marks = ",".join("?" * len(chunk))
            for doc_id, title, text in self._conn().execute(
                f"SELECT id, title, text FROM docs WHERE id IN ({marks})", chunk
            ):
                found[doc_id] = Document(id=doc_id, text=text, title=title)
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} unknown document id(s) in {self.path}, e.g. {missing[:5]}")
        return [found[i] for i in ids]

    def ids_of_ords(self, ords: Sequence[int]) -> list[str]:
        """The id of each ord (insertion position), from the memory-mapped id table
        (:mod:`rgpl_plugin.idtable`), or SQLite for an index built without one: no id list is held in memory."""
        if self._id_table is not None:
            return self._id_table(ords)
        found: dict[int, str] = {}
        for chunk in batched(dict.fromkeys(int(o) for o in ords), _SQL_CHUNK):
            marks = ",".join("?" * len(chunk))
            found.update(self._conn().execute(f"SELECT ord, id FROM docs WHERE ord IN ({marks})", chunk))
        return [found[int(o)] for o in ords]

    # ------------------------------------------------------------------- BM25
    def analyze(self, text: str) -> list[str]:
        """The index terms of ``text`` (what :meth:`bm25_search` looks up)."""
        return self._analyzer.analyze(text) if text else []

    def bm25_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-``k`` BM25 hits per query text over title and text; any string is safe."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of strings, not one string; wrap it in a list")
        tv = _tantivy()
        searcher = self._index.searcher()
        out: list[list[Hit]] = []
        for text in queries:
            if not isinstance(text, str):
                raise TypeError(f"a query must be a string, got {type(text).__name__}")
            terms = self.analyze(text)
            if not terms:
                out.append([])
                continue
            query = tv.Query.boolean_query(
                [
                    (tv.Occur.Should, tv.Query.term_query(self._schema, field, term))
                    for term in terms
                    for field in _SEARCH_FIELDS
                ]
            )
            result = searcher.search(query, k, count=False)
            addresses = [address for _, address in result.hits]
            ords = searcher.fast_field_values("ord", addresses) if addresses else []
            ids = self.ids_of_ords(ords) if addresses else []
            out.append([Hit(i, float(score)) for (score, _), i in zip(result.hits, ids)])
        return out

    # ---------------------------------------------------------------- vectors
    def put_vectors(self, space: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace (by id) float32 vectors in ``space``; call it in as many batches as needed."""
        self._vectors.put(space, list(ids), np.asarray(vectors))
        if len(ids):
            spaces = self.meta.setdefault("spaces", {})
            dim = int(np.asarray(vectors).shape[1])
            if spaces.get(space) != {"dim": dim}:
                spaces[space] = {"dim": dim}
                _write_meta(self.path, self.meta)

    def adopt_vectors(self, space: str, vectors_file: str | os.PathLike) -> int:
        """Make ``vectors_file`` (a float32 ``.npy``, row i = the document at ord i, every document) the
        whole of ``space``: copied in blocks, ids resolved by ord (none held). Returns the count."""
        n = self._vectors.adopt(space, vectors_file)
        if n != self.count():
            self._vectors.drop(space)
            raise ValueError(f"{vectors_file} has {n} rows for {self.count()} documents; encode the whole store")
        dim = int(np.load(self.path / "vectors" / space / "vectors.npy", mmap_mode="r").shape[1])
        self.meta.setdefault("spaces", {})[space] = {"dim": dim}
        _write_meta(self.path, self.meta)
        return n

    def knn_search(self, space: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-``k`` inner-product neighbours; exact up to ``hnsw_threshold`` vectors, else HNSW."""
        try:
            return self._vectors.search(space, np.asarray(queries), k)
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]} (index {self.path})") from None

    def vector_matrix(self, space: str) -> tuple[list[str], np.ndarray]:
        """The ids and float32 vectors of ``space`` (a memory map when large), for exact search elsewhere."""
        try:
            return self._vectors.matrix(space)
        except KeyError as exc:
            raise KeyError(f"{exc.args[0]} (index {self.path})") from None

    def has_vectors(self, space: str) -> bool:
        return self._vectors.has(space)

    def drop_vectors(self, space: str) -> None:
        check_space_name(space)
        self._vectors.drop(space)
        if self.meta.get("spaces", {}).pop(space, None) is not None:
            _write_meta(self.path, self.meta)

    def hybrid_search(
        self,
        space: str,
        texts: Sequence[str],
        vectors: np.ndarray,
        k: int,
        *,
        weight: float = 0.5,
        method: FusionMethod = "min_max",
    ) -> list[list[Hit]]:
        """BM25 top-``k`` fused with k-NN top-``k`` per query (see :func:`rgpl_plugin.fusion.fuse`).

        Like an OpenSearch hybrid query, each sub-query returns ``k`` hits and fusion runs over
        their union; ``weight`` is the dense share (``min_max`` only). The k-NN leg runs in a worker
        thread beside the BM25 leg when that has been measured faster here (``self.legs``).
        """
        vectors = np.asarray(vectors)
        if len(texts) != len(vectors):
            raise ValueError(f"got {len(texts)} texts for {len(vectors)} query vectors; they must match")
        bm25, dense = self.legs.run(lambda: self.bm25_search(texts, k), lambda: self.knn_search(space, vectors, k))
        return [fuse(b, d, k, weight=weight, method=method) for b, d in zip(bm25, dense)]

    # --------------------------------------------------------------- lifecycle
    def close(self) -> None:
        """Close the document store; searching afterwards raises BackendError."""
        self.legs.close()
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> EmbeddedBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EmbeddedBackend({str(self.path)!r}, docs={self.meta.get('doc_count')})"


def _build(
    folder: Path,
    documents: Iterable[Document],
    progress: ProgressFactory,
    *,
    key: str,
    chunk_size: int,
    shard_docs: int = SHARD_DOCS,
) -> tuple[int, int, dict[str, int]]:
    """Write (or continue) tantivy/ and docs.sqlite in ``folder``, a chunk at a time.

    SQLite is the record of progress (:class:`rgpl_plugin.docstore.DocStoreWriter`): a chunk is
    committed there first, then added to the BM25 shards and committed
    (:class:`rgpl_plugin.bm25_index.ShardedBm25Writer`). Tantivy commits are atomic, so after a
    kill the shards hold the first ``m`` ords for some ``m`` <= the SQLite count; the missing ords
    are re-added from SQLite before new input is read. Returns (documents, duplicates, build info).
    """
    if not key:
        (folder / "docs.sqlite").unlink(missing_ok=True)
    store = DocStoreWriter(folder / "docs.sqlite", key=key)  # another key (input) empties it
    resumed = store.resumed
    bm25 = ShardedBm25Writer(folder, shard_docs=shard_docs, fresh=not resumed.chunks)
    if bm25.docs > resumed.docs:  # cannot happen with the commit order above; never serve a mixed index
        raise BackendError(f"{folder}: tantivy holds {bm25.docs} documents, SQLite {resumed.docs}; delete {folder}")
    for start in range(bm25.docs, resumed.docs, chunk_size):  # catch up after a kill between the two commits
        bm25.add(store.rows(start, min(resumed.docs, start + chunk_size)))
    total = len(documents) if hasattr(documents, "__len__") else None  # type: ignore[arg-type]
    built = 0
    with progress(total=total, desc="indexing documents", unit="doc") as bar:
        bar.update(resumed.consumed)
        for n_read, rows in store.append(documents, chunk_size):
            bm25.add(rows)
            logger.info("indexed chunk %d (%d documents) into %s", resumed.chunks + built, len(rows), folder)
            built += 1
            bar.update(n_read)
    shards = bm25.finish()
    point = store.finish()
    return point.docs, point.duplicates, {"chunks": point.chunks, "chunks_resumed": resumed.chunks,
                                          "chunks_built": built, "chunk_size": chunk_size, **shards}


def _write_id_table(folder: Path, count: int) -> None:
    """The id table of the finished build in ``folder`` (ids read back from SQLite by ord, a chunk at a time)."""
    store = DocStore(folder / "docs.sqlite")
    try:
        chunks = (store.ids(start, start + _ID_CHUNK) for start in range(0, count, _ID_CHUNK))
        write_id_table(folder, chunks, count)
    finally:
        store.close()


def _swap_into_place(built: Path, path: Path) -> None:
    """Replace ``path`` (an empty folder, an old index or nothing) with the finished ``built`` folder."""
    if not path.exists():
        built.rename(path)
        return
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    path.rename(old)
    built.rename(path)
    shutil.rmtree(old, ignore_errors=True)
