"""Data-parallel training under ``torchrun`` (one process per GPU, or several CPU processes).

``torchrun --nproc_per_node 4 -m rgpl_adapt.cli adapt ...`` sets RANK / WORLD_SIZE / LOCAL_RANK.
Rank 0 does everything that writes (stages before training, remining and labelling,
checkpoints, export); the other ranks wait at barriers and read what rank 0 wrote, so the run
folder must be visible to all ranks (one machine, or shared storage). Each rank takes its
share of every global batch and DDP averages the gradients, which equals the single-process
gradient of the same global batch. The corpus encodes (mining, each remining round, serving)
are shared too: every rank encodes its chunks of the store into one memory-mapped file
(:func:`rgpl_adapt.chunked.encode_store_all_ranks`) before rank 0 searches and writes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def dist_info() -> DistInfo:
    """The process's place in a torchrun job (rank 0 of 1 when not distributed)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    return DistInfo(
        rank=int(os.environ.get("RANK", "0")),
        world=world,
        local_rank=int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0"))),
    )


def init_distributed(device: str, *, timeout_hours: float = 12.0) -> tuple[DistInfo, str]:
    """Join the process group when launched by torchrun; returns the info and this rank's device.

    On CUDA each rank takes GPU ``local_rank`` with NCCL. With more local ranks than visible GPUs
    (``torchrun --nproc_per_node 4`` on 2 GPUs) the ranks share the GPUs (``cuda:{local_rank % count}``)
    and the group uses gloo, which NCCL does not allow (one rank per GPU) but gloo does, CUDA tensors
    included; a warning says so, since ``--nproc_per_node <count>`` is the fast setup.
    The timeout is long because non-main ranks wait at a barrier while rank 0 generates
    queries or re-mines, which can take hours at paper scale.
    """
    info = dist_info()
    if not info.enabled:
        if device.startswith("cuda"):
            import torch

            _require_gpu(torch.cuda.device_count(), info)
        return info, device
    import torch
    import torch.distributed as dist

    backend = "gloo"
    if device.startswith("cuda"):
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", info.world))
        device, backend = rank_device(info, torch.cuda.device_count(), local_world)
        torch.cuda.set_device(torch.device(device).index)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(hours=timeout_hours))
    return info, device


def rank_device(info: DistInfo, gpus: int, local_world: int) -> tuple[str, str]:
    """This rank's CUDA device and the process-group backend, given ``gpus`` visible GPUs and
    ``local_world`` ranks on this machine (torchrun's LOCAL_WORLD_SIZE).

    Every rank of a machine takes the same backend (a group mixing NCCL and gloo would hang), so
    the choice is made on the machine's rank count, not on this rank's index.
    """
    _require_gpu(gpus, info)
    if local_world <= gpus:
        return f"cuda:{info.local_rank}", "nccl"
    if info.local_rank == 0:
        log.warning(
            "%d ranks on this machine share its %d visible GPU(s) (local rank r runs on cuda:r %% %d) and the "
            "process group uses gloo: NCCL allows one rank per GPU. torchrun --nproc_per_node %d is the "
            "fast setup.", local_world, gpus, gpus, gpus,
        )
    return f"cuda:{info.local_rank % gpus}", "gloo"


def _require_gpu(gpus: int, info: DistInfo) -> None:
    if gpus < 1:
        raise RuntimeError(
            f"device cuda was asked for but no GPU is visible to rank {info.rank} (torch.cuda.device_count() "
            "is 0): check CUDA_VISIBLE_DEVICES and that torch is a CUDA build, or pass --device cpu"
        )


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist

        dist.barrier()


def from_main(info: DistInfo, value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself when not distributed).

    For decisions that choose which collectives follow (skip a stage or build it): every rank
    then takes rank 0's branch, whatever it sees of the run folder itself.
    """
    if not info.enabled:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: list, info: DistInfo) -> list:
    """This rank's share of a global batch (round-robin, so shares differ by at most one)."""
    return items[info.rank :: info.world] if info.enabled else items
