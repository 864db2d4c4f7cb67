"""Stage 1: read a local corpus (a BEIR folder or a JSONL file) into ``Document`` records.

Bad records never crash a run: each is counted under a reason and skipped, and
:class:`CorpusStats` says how many and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rgpl_adapt.config import CorpusConfig
from rgpl_plugin.base import Document

log = logging.getLogger(__name__)

SKIP_REASONS = (
    "undecodable",  # not UTF-8 or not JSON
    "not_an_object",  # a JSON value that is not an object
    "missing_id",
    "duplicate_id",
    "missing_text",
    "empty_text",
    "non_string_text",
    "huge",
)


class CorpusError(ValueError):
    """The corpus cannot be read at all (wrong path, wrong layout); the message says what to pass."""


@dataclass(frozen=True)
class CorpusStats:
    read: int
    kept: int
    skipped: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.kept} documents"
        why = ", ".join(f"{n} {reason.replace('_', ' ')}" for reason, n in sorted(self.skipped.items()))
        return f"{self.kept} documents ({sum(self.skipped.values())} skipped: {why})"


def corpus_file(path: str | os.PathLike) -> Path:
    """The JSONL file of a corpus given as a BEIR folder or a file."""
    p = Path(path)
    if p.is_dir():
        f = p / "corpus.jsonl"
        if not f.exists():
            raise CorpusError(f"{p} is a folder without corpus.jsonl: pass a BEIR folder or a JSONL file")
        return f
    if p.is_file():
        return p
    raise CorpusError(f"corpus not found: {p}")


def fingerprint(path: str | os.PathLike, cfg: CorpusConfig) -> str:
    """Identity of the corpus input: file size, mtime and a hash of its first and last MiB."""
    f = corpus_file(path)
    st = f.stat()
    h = hashlib.sha256(f"{st.st_size}:{int(st.st_mtime)}".encode())
    with open(f, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > 1 << 20:
            fh.seek(max(0, st.st_size - (1 << 20)))
            h.update(fh.read())
    h.update(json.dumps([cfg.text_field, cfg.title_field, cfg.id_field, cfg.max_chars, cfg.limit]).encode())
    return h.hexdigest()[:16]


def _parse(line: bytes, cfg: CorpusConfig, lineno: int) -> Document | str:
    """A Document, or the skip reason."""
    try:
        obj = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "undecodable"
    if not isinstance(obj, dict):
        return "not_an_object"
    doc_id = obj.get(cfg.id_field, obj.get("id") if cfg.id_field == "_id" else None)
    if doc_id is None or (isinstance(doc_id, str) and not doc_id.strip()):
        return "missing_id"
    if not isinstance(doc_id, (str, int)):
        return "missing_id"
    title = obj.get(cfg.title_field) or ""
    if not isinstance(title, str):
        title = ""
    text = obj.get(cfg.text_field)
    if text is None:
        if not title.strip():
            return "missing_text"
        text = ""  # a title-only document is kept, as BEIR keeps every document
    if not isinstance(text, str):
        return "non_string_text"
    if not text.strip() and not title.strip():
        return "empty_text"
    if len(text) + len(title) > cfg.max_chars:
        return "huge"
    return Document(id=str(doc_id), text=text.strip(), title=title.strip())


def iter_corpus(cfg: CorpusConfig, stats: Counter[str] | None = None, *, dedup: bool = True) -> Iterator[Document]:
    """Yield valid documents of ``cfg.path``; skipped records are counted in ``stats``.

    ``dedup=False`` leaves repeated ids to the consumer (the document store drops them by its
    ``UNIQUE`` key and counts them), so that reading a corpus of any size keeps no id set in memory;
    ``cfg.limit`` then counts records yielded, repeats included.
    """
    stats = stats if stats is not None else Counter()
    seen: set[str] = set()
    kept = 0
    with open(corpus_file(cfg.path), "rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            stats["read"] += 1
            result = _parse(line, cfg, lineno)
            if isinstance(result, str):
                stats[result] += 1
                log.debug("corpus line %d skipped: %s", lineno, result)
                continue
            if dedup:
                if result.id in seen:
                    stats["duplicate_id"] += 1
                    continue
                seen.add(result.id)
            kept += 1
            yield result
            if cfg.limit is not None and kept >= cfg.limit:
                return


def empty_corpus_error(cfg: CorpusConfig, counts: Mapping[str, int]) -> CorpusError:
    """The error for a corpus with no usable document, from :func:`iter_corpus`'s ``counts``."""
    skipped = {k: v for k, v in counts.items() if k != "read"}
    return CorpusError(
        f"no usable documents in {cfg.path} (read {counts.get('read', 0)} records; skipped: {skipped or 'none'}). "
        f"Check --text-field (now {cfg.text_field!r}) and --id-field (now {cfg.id_field!r})."
    )


def read_corpus(cfg: CorpusConfig) -> tuple[list[Document], CorpusStats]:
    """All valid documents and the counts of what was skipped and why."""
    counts: Counter[str] = Counter()
    docs = list(iter_corpus(cfg, counts))
    if not docs:
        raise empty_corpus_error(cfg, counts)
    read = counts.pop("read", 0)
    return docs, CorpusStats(read=read, kept=len(docs), skipped=dict(counts))
