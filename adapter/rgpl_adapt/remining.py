"""Stage 6 (what R-GPL adds to GPL): re-mine hard negatives with the current student.

Encode the corpus with the student being trained (then put it back in train mode), write the
vectors to a backend vector space, search it with each generated query, and replace the
negative pool with the student's own top-k (positives excluded). The student thus keeps
meeting the passages it now confuses.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rgpl_adapt.encoding import encode_texts
from rgpl_adapt.mining import churn, remine_pools
from rgpl_adapt.neighbours import DEFAULT_EXACT_BUDGET_S
from rgpl_adapt.progress import ProgressFactory, silent
from rgpl_adapt.records import GeneratedQuery, NegativePool
from rgpl_plugin.base import Backend

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

    from rgpl_adapt.chunked import ChunkedResult
    from rgpl_adapt.distributed import DistInfo

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemineResult:
    pools: list[NegativePool]
    churn: float  # share of the new negatives that were not in the previous pool
    space: str
    search: dict[str, Any] = field(default_factory=dict)  # how the student's space was searched (neighbours)


def space_name(round_index: int) -> str:
    return f"student-r{round_index}"


def encode_corpus(
    student: SentenceTransformer,
    store: str | os.PathLike,
    work_dir: str | os.PathLike,
    *,
    info: DistInfo,
    normalize: bool,
    autocast_bf16: bool,
    batch_size: int,
    chunk_size: int,
    key: str,
    progress: ProgressFactory = silent,
) -> ChunkedResult:
    """The store encoded by ``student`` into ``work_dir/vectors`` (resumable chunks), read by :func:`remine`.

    Under torchrun (``info.enabled``) call it on every rank, with the same student weights (DDP
    keeps them equal): each rank encodes its share of the chunks
    (:func:`rgpl_adapt.chunked.encode_store_all_ranks`).
    """
    from rgpl_adapt.chunked import encode_store_all_ranks
    from rgpl_adapt.encoding import SentenceTransformerEncoder, embedding_dim

    encoder = SentenceTransformerEncoder(student, normalize=normalize, autocast_bf16=autocast_bf16)
    return encode_store_all_ranks(encoder, store, Path(work_dir) / "vectors", dim=embedding_dim(student),
                                  info=info, key=key, chunk_size=chunk_size, batch_size=batch_size,
                                  progress=progress)


def remine(
    student: SentenceTransformer,
    backend: Backend,
    queries: Sequence[GeneratedQuery],
    doc_ids: Sequence[str],
    doc_texts: Sequence[str],
    *,
    round_index: int,
    k: int,
    previous: Sequence[NegativePool] | None = None,
    normalize: bool = False,
    batch_size: int = 128,
    progress: ProgressFactory = silent,
    autocast_bf16: bool = False,
    exact_budget_s: float = DEFAULT_EXACT_BUDGET_S,
    store: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    chunk_size: int = 65536,
    key: str = "",
    device: str | None = None,
) -> RemineResult:
    """Encode the corpus with ``student``, search it for every query, return the new pools.

    ``normalize`` must be True when training with cosine similarity, so that the backend's
    inner-product search ranks by cosine. The student's train/eval mode is restored.
    ``autocast_bf16`` encodes under bfloat16 autocast (see :func:`rgpl_adapt.encoding.encode_texts`).
    ``exact_budget_s``: exact top-k unless it is estimated to take longer, then HNSW with measured
    recall (:mod:`rgpl_adapt.neighbours`); the result's ``search`` says which. ``device``: a CUDA
    device runs exact search there (:func:`rgpl_adapt.mining.mine_negatives`).

    With a document ``store`` (a folder with ``docs.sqlite``; ``doc_ids``/``doc_texts`` are then
    ignored) the corpus is encoded in resumable chunks into ``work_dir/vectors`` (a memory map;
    :func:`rgpl_adapt.chunked.encode_store`, ``key`` names the student, e.g. its checkpoint), so a
    kill during remining continues after the last finished chunk and memory holds one chunk. The
    caller removes ``work_dir/vectors`` once the round is recorded (a kill while labelling reuses it).
    Under torchrun the ranks encode it first, together (:func:`encode_corpus`); this rank-0 call then
    finds every chunk finished.
    """
    space = space_name(round_index)
    if store is not None:
        from rgpl_adapt.chunked import put_in_chunks
        from rgpl_adapt.distributed import DistInfo

        if work_dir is None:
            raise ValueError("remine(store=...) needs work_dir, the folder of the resumable vector chunks")
        res = encode_corpus(student, store, work_dir, info=DistInfo(), normalize=normalize,
                            autocast_bf16=autocast_bf16, batch_size=batch_size, chunk_size=chunk_size,
                            key=key, progress=progress)
        backend.drop_vectors(space)
        put_in_chunks(backend, space, store, res.path)
    else:
        doc_vecs = encode_texts(
            student, doc_texts, batch_size, normalize=normalize, progress=progress,
            desc=f"remine r{round_index}: corpus", autocast_bf16=autocast_bf16,
        )
        backend.drop_vectors(space)
        for start in range(0, len(doc_ids), 10_000):
            backend.put_vectors(space, doc_ids[start : start + 10_000], doc_vecs[start : start + 10_000])
        del doc_vecs
    q_vecs = encode_texts(
        student,
        [q.text for q in queries],
        batch_size,
        normalize=normalize,
        progress=progress,
        desc=f"remine r{round_index}: queries",
        autocast_bf16=autocast_bf16,
    )
    reports: dict[str, dict] = {}
    pools = remine_pools(queries, backend, space, q_vecs, k, exact_budget_s=exact_budget_s,
                         search_reports=reports, device=device)
    backend.drop_vectors(space)
    moved = churn(previous, pools) if previous is not None else 1.0
    log.info("remining round %d: %.1f%% of negatives are new", round_index, 100 * moved)
    return RemineResult(pools=pools, churn=moved, space=space, search=reports.get("student", {}))
