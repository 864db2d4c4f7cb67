"""The document store: every document once, by insertion order (``ord``) and by id, in one SQLite file.

It is what every stage after the corpus reads texts from, so that no stage holds the corpus in
memory: texts by ord range (chunked encoding), by id (training, labelling) or by a seeded sample
of ords (query generation, export samples). The embedded backend keeps it as ``docs.sqlite``
next to its BM25 index; a cluster run copies the index's documents into one once.

Writing is resumable. :class:`DocStoreWriter` appends documents a chunk at a time; each chunk is
one SQLite transaction that also records, in the ``chunks`` table, how many input documents have
been consumed. A build killed at any point (even ``kill -9``) reopens the file, skips the input
already consumed and continues with the next chunk; the ``key`` (e.g. a fingerprint of the
input) makes sure a changed input starts over rather than mixing. Ids are de-duplicated by the
table's ``UNIQUE`` constraint (``INSERT OR IGNORE``: the first document of an id is kept), not
by a set in memory::

    docs(ord INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, title TEXT NOT NULL, text TEXT NOT NULL)
    chunks(chunk INTEGER PRIMARY KEY, consumed INTEGER, docs INTEGER, duplicates INTEGER)
    info(key TEXT PRIMARY KEY, value TEXT)          -- build key; ``done`` once complete
"""

from __future__ import annotations

import itertools
import os
import random
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rgpl_plugin.base import Document, batched, passage_text

__all__ = ["DocStore", "DocStoreWriter", "ResumePoint", "TextsById"]

DOCS_FILE = "docs.sqlite"
_SQL_CHUNK = 500
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS docs (ord INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
    " title TEXT NOT NULL, text TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS chunks (chunk INTEGER PRIMARY KEY, consumed INTEGER NOT NULL,"
    " docs INTEGER NOT NULL, duplicates INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value TEXT)",
)


def _select_in(db: sqlite3.Connection, columns: str, key: str, values: Iterable[Any]) -> Iterator[tuple]:
    """``SELECT columns FROM docs WHERE key IN (values)`` for distinct values, 500 at a time (SQLite's
    variable limit); rows in no particular order."""
    for chunk in batched(dict.fromkeys(values), _SQL_CHUNK):
        marks = ",".join("?" * len(chunk))
        yield from db.execute(f"SELECT {columns} FROM docs WHERE {key} IN ({marks})", chunk)  # noqa: S608


@dataclass(frozen=True)
class ResumePoint:
    """Where a build stands: finished chunks, input documents consumed, documents kept, duplicates."""

    chunks: int = 0
    consumed: int = 0
    docs: int = 0
    duplicates: int = 0


class DocStoreWriter:
    """Append documents to ``path`` (a ``docs.sqlite``) in resumable chunks; see the module docstring."""

    def __init__(self, path: str | os.PathLike, *, key: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.execute("PRAGMA journal_mode=WAL")  # a killed writer leaves a consistent file
        self._db.execute("PRAGMA synchronous=NORMAL")
        for statement in _SCHEMA:
            self._db.execute(statement)
        found = self._db.execute("SELECT value FROM info WHERE key = 'key'").fetchone()
        if found is None or found[0] != key:
            with self._db:  # another input (or a fresh file): start over
                for table in ("docs", "chunks", "info"):
                    self._db.execute(f"DELETE FROM {table}")  # noqa: S608 (fixed names)
                self._db.execute("INSERT INTO info VALUES ('key', ?)", (key,))
        self.resumed = self.resume_point()

    def resume_point(self) -> ResumePoint:
        # documents = the sum of the chunks' counts: each chunk's rows and its record share one transaction,
        # and a COUNT(*) of docs would scan the id index for every chunk (0.05 s per million documents)
        row = self._db.execute(
            "SELECT COUNT(*), COALESCE(MAX(consumed), 0), COALESCE(SUM(docs), 0), COALESCE(SUM(duplicates), 0)"
            " FROM chunks"
        ).fetchone()
        return ResumePoint(chunks=int(row[0]), consumed=int(row[1]), docs=int(row[2]), duplicates=int(row[3]))

    def info(self, name: str) -> str | None:
        """A value recorded in the ``info`` table (``key``, ``done``, or one given to :meth:`append_chunk`)."""
        row = self._db.execute("SELECT value FROM info WHERE key = ?", (name,)).fetchone()
        return None if row is None else row[0]

    def stored(self, ids: Sequence[str]) -> set[str]:
        """Which of ``ids`` are already stored (one indexed look-up per 500 ids)."""
        return {r[0] for r in _select_in(self._db, "id", "id", ids)}

    def append_chunk(
        self, documents: Sequence[Document], info: Mapping[str, str] | None = None
    ) -> list[tuple[int, str, str, str]]:
        """Store one chunk (one transaction, recorded in ``chunks``); returns the rows kept ``(ord, id, title, text)``.

        A document whose id is already stored is skipped and counted as a duplicate. ``info`` values
        (e.g. where the input's reader stands) are recorded in the same transaction as the chunk.
        """
        point = self.resume_point()
        n = point.docs
        kept: list[tuple[int, str, str, str]] = []
        with self._db:
            for doc in documents:
                if not isinstance(doc.id, str) or not isinstance(doc.text, str):
                    raise TypeError(f"documents need a str id and text, got {doc!r:.200}")
                row = (n, doc.id, doc.title or "", doc.text)
                if self._db.execute("INSERT OR IGNORE INTO docs VALUES (?, ?, ?, ?)", row).rowcount:
                    kept.append(row)
                    n += 1
            self._db.execute(
                "INSERT INTO chunks VALUES (?, ?, ?, ?)",
                (point.chunks, point.consumed + len(documents), len(kept), len(documents) - len(kept)),
            )
            for name, value in (info or {}).items():
                self._db.execute("INSERT OR REPLACE INTO info VALUES (?, ?)", (name, value))
        return kept

    def append(
        self, documents: Iterable[Document], chunk_size: int
    ) -> Iterator[tuple[int, list[tuple[int, str, str, str]]]]:
        """Append ``documents`` (the whole input, from its start) chunk by chunk, skipping what a
        killed earlier build already consumed; yields ``(documents read, rows kept)`` per new chunk."""
        rest = itertools.islice(documents, self.resumed.consumed, None)
        for chunk in batched(rest, chunk_size):
            yield len(chunk), self.append_chunk(chunk)

    def rows(self, start: int, stop: int) -> list[tuple[int, str, str, str]]:
        return self._db.execute(
            "SELECT ord, id, title, text FROM docs WHERE ord >= ? AND ord < ? ORDER BY ord", (start, stop)
        ).fetchall()

    def finish(self) -> ResumePoint:
        """Mark the build complete, checkpoint the WAL into the file, close it; returns the totals."""
        point = self.resume_point()
        with self._db:
            self._db.execute("INSERT OR REPLACE INTO info VALUES ('done', '1')")
        try:  # back to a single file; needs no other connection open (a reader watching the build)
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:  # still correct in WAL mode, only with -wal/-shm files beside it
            pass
        self._db.close()
        return point

    def close(self) -> None:
        self._db.close()


class DocStore:
    """Read-only access to a ``docs.sqlite``: count, texts by ord range, by id, seeded samples."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / DOCS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: build the index first (the document store)")
        self.path = path
        self._db = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM docs").fetchone()[0])

    def documents(self, start: int, stop: int) -> list[Document]:
        """Documents with ``start <= ord < stop``, in order."""
        rows = self._db.execute(
            "SELECT id, title, text FROM docs WHERE ord >= ? AND ord < ? ORDER BY ord", (start, stop)
        ).fetchall()
        return [Document(id=i, text=text, title=title) for i, title, text in rows]

    def texts(self, start: int, stop: int) -> list[str]:
        """Full texts (title and text) of documents ``start <= ord < stop``."""
        rows = self._db.execute(
            "SELECT title, text FROM docs WHERE ord >= ? AND ord < ? ORDER BY ord", (start, stop)
        ).fetchall()
        return [passage_text(title, text) for title, text in rows]

    def ids(self, start: int, stop: int) -> list[str]:
        rows = self._db.execute("SELECT id FROM docs WHERE ord >= ? AND ord < ? ORDER BY ord", (start, stop))
        return [r[0] for r in rows]

    def ids_of_ords(self, ords: Sequence[int]) -> list[str]:
        """The id of each ord, in the same order (for resolving search hits without an id list in memory)."""
        found = dict(_select_in(self._db, "ord, id", "ord", (int(o) for o in ords)))
        return [found[int(o)] for o in ords]

    def ords_of(self, ids: Iterable[str]) -> dict[str, int]:
        """``id -> ord`` of the ids that are stored (unknown ids are left out)."""
        return dict(_select_in(self._db, "id, ord", "id", ids))

    def by_ords(self, ords: Sequence[int]) -> list[Document]:
        """The documents at these ords, in the same order."""
        found = {o: Document(id=i, text=text, title=title)
                 for o, i, title, text in _select_in(self._db, "ord, id, title, text", "ord", (int(o) for o in ords))}
        return [found[int(o)] for o in ords]

    def texts_of(self, ids: Sequence[str]) -> dict[str, str]:
        """``id -> full text`` of these ids; KeyError naming unknown ids."""
        found = {i: passage_text(title, text) for i, title, text in _select_in(self._db, "id, title, text", "id", ids)}
        missing = [i for i in dict.fromkeys(ids) if i not in found]
        if missing:
            raise KeyError(f"{len(missing)} unknown document id(s) in {self.path}, e.g. {missing[:5]}")
        return found

    def iter_documents(self, chunk_size: int = 1000) -> Iterator[Document]:
        n = self.count()
        for start in range(0, n, chunk_size):
            yield from self.documents(start, start + chunk_size)

    def sample_ords(self, k: int, seed: int | random.Random) -> list[int]:
        """``k`` distinct ords drawn uniformly with a seeded RNG, sorted (memory: the sample, not the corpus)."""
        rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        n = self.count()
        return sorted(rng.sample(range(n), min(k, n)))

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> DocStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TextsById:
    """``doc_id -> full text`` read from a document store on demand, for the texts a stage actually uses.

    ``texts[id]`` reads one text (cached); ``texts(ids)`` reads a batch (what
    :func:`rgpl_adapt.labeling.label_triples` calls); :meth:`load` replaces the cache with the texts of
    ``ids`` (e.g. a training round's positives and negatives), so memory follows the round, not the corpus.
    """

    def __init__(self, store: str | os.PathLike | DocStore) -> None:
        self.store = store if isinstance(store, DocStore) else DocStore(store)
        self._cache: dict[str, str] = {}

    def __call__(self, ids: Sequence[str]) -> list[str]:
        missing = [i for i in dict.fromkeys(ids) if i not in self._cache]
        found = self.store.texts_of(missing) if missing else {}
        return [self._cache.get(i) or found[i] for i in ids]

    def __getitem__(self, doc_id: str) -> str:
        text = self._cache.get(doc_id)
        if text is None:
            text = self._cache[doc_id] = self.store.texts_of([doc_id])[doc_id]
        return text

    def load(self, ids: Iterable[str]) -> int:
        """Hold exactly the texts of ``ids`` (one query per 500 ids); returns how many."""
        self._cache = self.store.texts_of(list(dict.fromkeys(ids)))
        return len(self._cache)

    def __len__(self) -> int:
        return self.store.count()
