"""Document ids by ord in two memory-mapped files: search hits resolved without SQLite or an id list.

Every search of the embedded index ends with ords (tantivy's ``ord`` fast field, a vector row) that
must become document ids. A SQLite lookup of 10 ords walks the B-tree for each (0.04 ms warm, 0.2 ms
when the searches before it have evicted the pages from cache: a third of a BM25 query). The id
table is two files written once when the index is built (the index is immutable afterwards)::

    ids.offsets.npy   int64 (n + 1,)   byte offset of ord i's id in ids.blob; offsets[n] = its size
    ids.blob          the UTF-8 ids, concatenated in ord order

Both are memory-mapped: a lookup reads two offsets and a few bytes per hit, and memory holds only the
pages in use, never the ids of the corpus (10M ids of 20 bytes: 280 MB on disk, not in RAM).
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["IDS_BLOB", "IDS_OFFSETS", "IdTable", "write_id_table"]

IDS_BLOB = "ids.blob"
IDS_OFFSETS = "ids.offsets.npy"


def write_id_table(folder: str | os.PathLike, chunks: Iterable[Sequence[str]], count: int) -> None:
    """Write the id table of ``count`` ids, given in ord order as ``chunks`` of ids, into ``folder``.

    Streams: memory holds one chunk. Written under temporary names and renamed, so a killed write
    leaves no table (the index then resolves ids through SQLite) rather than a short one.
    """
    from numpy.lib.format import open_memmap

    folder = Path(folder)
    blob_tmp, offsets_tmp = folder / (IDS_BLOB + ".tmp"), folder / (IDS_OFFSETS + ".tmp.npy")
    try:
        offsets = open_memmap(offsets_tmp, mode="w+", dtype=np.int64, shape=(count + 1,))
        offsets[0] = 0
        i, pos = 0, 0
        with open(blob_tmp, "wb") as blob:
            for chunk in chunks:
                encoded = [doc_id.encode("utf-8") for doc_id in chunk]
                if i + len(encoded) > count:
                    raise ValueError(f"more than {count} ids given for the id table in {folder}")
                lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
                offsets[i + 1 : i + 1 + len(encoded)] = pos + np.cumsum(lengths)
                blob.write(b"".join(encoded))
                pos += int(lengths.sum())
                i += len(encoded)
        if i != count:
            raise ValueError(f"{i} ids given for an id table of {count} in {folder}")
        offsets.flush()
        del offsets
    except BaseException:
        blob_tmp.unlink(missing_ok=True)
        offsets_tmp.unlink(missing_ok=True)
        raise
    os.replace(blob_tmp, folder / IDS_BLOB)
    os.replace(offsets_tmp, folder / IDS_OFFSETS)


class IdTable:
    """The ids of an index by ord, read from the memory-mapped files :func:`write_id_table` wrote."""

    def __init__(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self.offsets = np.load(folder / IDS_OFFSETS, mmap_mode="r")
        size = int(self.offsets[-1])
        with open(folder / IDS_BLOB, "rb") as f:
            found = os.fstat(f.fileno()).st_size
            if found != size:
                raise ValueError(f"{folder / IDS_BLOB} has {found} bytes, its offsets say {size}")
            # slicing an mmap gives bytes directly (no numpy scalar per hit); an empty file cannot be mapped
            self.blob: mmap.mmap | bytes = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    @classmethod
    def open(cls, folder: str | os.PathLike, count: int) -> IdTable | None:
        """The table in ``folder`` when it holds exactly ``count`` ids; ``None`` when there is none (an
        index built before id tables existed, or a write that was killed)."""
        folder = Path(folder)
        if not (folder / IDS_OFFSETS).is_file() or not (folder / IDS_BLOB).is_file():
            return None
        table = cls(folder)
        return table if len(table) == count else None

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __call__(self, ords: Sequence[int]) -> list[str]:
        """The id of each ord, in the same order; IndexError for an ord outside the table."""
        idx = np.asarray(ords, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            bad = idx[(idx < 0) | (idx >= len(self))][0]
            raise IndexError(f"ord {bad} is outside the id table (0..{len(self) - 1})")
        blob = self.blob
        starts, stops = self.offsets[idx].tolist(), self.offsets[idx + 1].tolist()
        return [blob[a:b].decode("utf-8") for a, b in zip(starts, stops)]
