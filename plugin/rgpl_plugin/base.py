"""The records and the one protocol every search backend implements.

The adaptation pipeline only ever talks to a backend through :class:`Backend`:

* read the documents of the index (``count``, ``iter_documents``, ``get_documents``);
* lexical search (``bm25_search``) for BM25 negatives;
* named *vector spaces*: ``put_vectors`` writes (id, vector) pairs into a space, ``knn_search``
  searches it by inner product, ``drop_vectors`` removes it. The pipeline writes one space per
  remining round (``student-r1``, ...) and the final ``dense`` space that serves queries. On
  OpenSearch a space is a shadow ``knn_vector`` index (or the vector field of the new serving
  index); on the embedded backend it is a matrix on disk (exact) or a usearch HNSW index;
* ``hybrid_search`` fuses BM25 with a dense space.

Scores are "higher is better". Vectors are float32 and compared by inner product (dot): a
model trained with cosine similarity writes normalised vectors, so dot equals cosine.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

FusionMethod = Literal["min_max", "rrf"]


@dataclass(frozen=True, slots=True)
class Document:
    """One passage of the corpus. ``title`` may be empty."""

    id: str
    text: str
    title: str = ""

    def full_text(self) -> str:
        """Title and text as one string, the way GPL feeds passages to models."""
        return passage_text(self.title, self.text)


def passage_text(title: str, text: str) -> str:
    """Title and text as one string, the way GPL feeds passages to models (:meth:`Document.full_text`)."""
    return f"{title} {text}".strip() if title else text


@dataclass(frozen=True, slots=True)
class Hit:
    """A search result: a document id and its score (higher is better)."""

    doc_id: str
    score: float


class BackendError(RuntimeError):
    """A backend failed in a way the user can act on; the message says how."""


@runtime_checkable
class Backend(Protocol):
    """What the pipeline needs from a search engine. Keep it this small."""

    name: str

    def count(self) -> int:
        """Number of documents in the index."""
        ...

    def iter_documents(self, batch_size: int = 1000) -> Iterator[Document]:
        """Every document once, in a stable order."""
        ...

    def get_documents(self, ids: Sequence[str]) -> list[Document]:
        """The documents with these ids, in the same order; KeyError for an unknown id."""
        ...

    def bm25_search(self, queries: Sequence[str], k: int) -> list[list[Hit]]:
        """Top-k BM25 hits for each query text."""
        ...

    def put_vectors(self, space: str, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add or replace the vectors of these documents in a named vector space."""
        ...

    def knn_search(self, space: str, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k inner-product neighbours in ``space`` for each row of ``queries``."""
        ...

    def has_vectors(self, space: str) -> bool:
        """Whether a vector space exists."""
        ...

    def drop_vectors(self, space: str) -> None:
        """Remove a vector space; a no-op when it does not exist."""
        ...

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
        """BM25 fused with k-NN in ``space``; ``weight`` is the dense share (min_max only)."""
        ...

    def close(self) -> None:
        """Release files, connections and locks."""
        ...


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of at most ``size`` items."""
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
