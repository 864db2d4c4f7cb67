"""Step 1 of a re-adaptation: the target's documents, streamed, and how far they drifted since the last run.

:class:`TargetDrift` is mixed into :class:`rgpl_adapt.readapt.Readapter`. It streams the target's documents
(the corpus file, or the cluster index read with PIT/scroll) without holding their texts, counts and
fingerprints them in one pass (:class:`DocumentScan`), and measures drift against the last finished
adaptation in the configured mode (:mod:`rgpl_adapt.drift` has the arithmetic and the cluster counts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from rgpl_adapt.drift import DriftReport, compare_fingerprints, count_drift, fingerprints, since_drift
from rgpl_adapt.records import Document
from rgpl_adapt.state import RunRecord

__all__ = ["DocumentScan", "TargetDrift"]

log = logging.getLogger("rgpl_adapt.readapt")


@dataclass(frozen=True)
class DocumentScan:
    """One streamed pass over the target's documents: how many, and their fingerprints when asked for."""

    count: int
    hashes: dict[str, str] | None = None


class TargetDrift:
    """The documents and drift of :class:`~rgpl_adapt.readapt.Readapter`'s target (``cfg``, ``settings``,
    ``cluster``, ``store`` and ``target`` come from it)."""

    def _baseline(self) -> RunRecord | None:
        """The last finished adaptation (promoted or not): drift is measured since it."""
        return next((r for r in self.store.runs(self.target) if r.status in ("promoted", "rejected")), None)

    def _iter_documents(self) -> Iterator[Document]:
        """The target's documents, streamed (the corpus file, or the index read with PIT/scroll)."""
        if self.cluster is None:
            from collections import Counter

            from rgpl_adapt.corpus import empty_corpus_error, iter_corpus

            counts: Counter[str] = Counter()
            n = 0
            for doc in iter_corpus(self.cfg.corpus, counts):
                n += 1
                yield doc
            if not n:
                raise empty_corpus_error(self.cfg.corpus, counts)
            return
        from rgpl_adapt.cluster import open_backend

        backend = open_backend(self.cluster.client, self.cluster.options)
        try:
            yield from backend.iter_documents()
        finally:
            backend.close()

    def _scan(self, *, hashes: bool) -> DocumentScan:
        """Count the documents (and fingerprint them) in one streamed pass: the texts are never held."""
        if not hashes:
            return DocumentScan(sum(1 for _ in self._iter_documents()))
        found = fingerprints(self._iter_documents())
        return DocumentScan(len(found), found)

    def _count(self) -> int:
        if self.cluster is None:
            return self._scan(hashes=False).count
        from rgpl_adapt.drift import count_documents

        return count_documents(self.cluster.client, self.cluster.options.index)

    def measure_drift(self, scan: DocumentScan | None = None) -> tuple[DriftReport, dict[str, str] | None]:
        """Drift since the baseline, and the current fingerprints when they were computed."""
        s = self.settings
        base = self._baseline()
        if s.drift_mode == "fingerprint":
            hashes = scan.hashes if scan is not None and scan.hashes is not None else self._scan(hashes=True).hashes
            assert hashes is not None
            old = self.store.snapshot(self.target, base.version) if base else None
            if base is not None and old is None:
                log.warning("no fingerprint snapshot of v%d: counting every document as new", base.version)
            return compare_fingerprints(old, hashes, threshold=s.threshold), hashes
        now = scan.count if scan is not None else self._count()
        before = base.snapshot.get("documents") if base else None
        if s.drift_mode == "count":
            return count_drift(before, now, threshold=s.threshold), None
        from rgpl_adapt.drift import written_since_seqno, written_since_timestamp

        assert self.cluster is not None
        if base is None:
            return since_drift(s.drift_mode, None, now, 0, threshold=s.threshold), None
        if s.drift_mode == "timestamp":
            n = written_since_timestamp(self.cluster.client, self.cluster.alias, s.timestamp_field, base.started_at)
            detail = f"{s.timestamp_field} > {base.started_at:.0f}"
        else:
            n = written_since_seqno(self.cluster.client, self.cluster.alias, base.snapshot.get("seqno") or {})
            detail = "_seq_no above the maxima recorded at the last run"
        return since_drift(s.drift_mode, before, now, n, threshold=s.threshold, detail=detail), None
