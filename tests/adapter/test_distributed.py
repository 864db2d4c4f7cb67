"""Data-parallel training: 2 CPU processes (gloo) give the same model as 1 process on the same global batches,
and share the corpus encodes (each rank its chunks of one vectors file)."""

import dataclasses
import json
import logging
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from rgpl_adapt.distributed import DistInfo, dist_info, shard
from rgpl_adapt.labeling import ScoreCache
from rgpl_adapt.training import Trainer, TrainingData
from tests.adapter.test_training import make_trainer, small_config, weights
from tests.conftest import TEST_DEVICE
from tests.fakes import OverlapTeacher, random_pools, title_queries


def test_dist_info_from_env(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert dist_info() == DistInfo() and dist_info().is_main and not dist_info().enabled
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist_info() == DistInfo(rank=3, world=4, local_rank=1)


def test_shard_splits_a_batch_without_loss():
    items = list(range(10))
    parts = [shard(items, DistInfo(rank=r, world=3)) for r in range(3)]
    assert sorted(x for p in parts for x in p) == items
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def no_dropout_copy(src, dst):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(src), device="cpu")
    cfg = model[0].auto_model.config
    cfg.hidden_dropout_prob = 0.0
    cfg.attention_probs_dropout_prob = 0.0
    model.save(str(dst))
    return dst


def log_chunks(path: Path) -> None:
    """Write this process's "encoded chunk C of N into DIR" records (rgpl_adapt.chunked) to ``path``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("rgpl_adapt.chunked")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)


def encoded_chunks(log: Path, root: Path) -> dict[str, list[int]]:
    """``{vectors folder relative to root: chunks encoded}`` from a :func:`log_chunks` file."""
    found: dict[str, list[int]] = {}
    for line in log.read_text().splitlines():
        m = re.fullmatch(r"encoded chunk (\d+) of \d+ into (.+)", line)
        if m:
            found.setdefault(Path(m[2]).relative_to(root).as_posix(), []).append(int(m[1]))
    return found


def join_group(rank: int, world: int, port: int, device: str = "cpu") -> str:
    """Join the group as torchrun's rank ``rank``; returns the rank's device (cuda: ranks share the GPUs)."""
    import os

    from rgpl_adapt.distributed import init_distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    return init_distributed(device)[1]


def store_trainer(cfg, work, backend, documents, store, device: str = TEST_DEVICE) -> Trainer:
    """:func:`make_trainer` with the texts read from a document store (as the pipeline does), 16 per chunk."""
    queries = title_queries(documents)
    return Trainer(cfg, work, student_path=cfg.training.student, backend=backend,
                   data=TrainingData(queries, store=store, chunk_size=16),
                   initial_pools=random_pools(queries, documents), teacher=OverlapTeacher(),
                   cache=ScoreCache(work / "scores.jsonl", key="overlap"), device=device)


def _worker(rank, world, port, cfg, work, index_dir, documents, store):
    from rgpl_plugin.embedded import EmbeddedBackend

    device = join_group(rank, world, port, TEST_DEVICE)  # cuda on one GPU: both ranks on cuda:0 over gloo
    log_chunks(work.parent / f"ddp-rank{rank}.log")
    backend = EmbeddedBackend.open(index_dir)
    try:
        trainer = (store_trainer(cfg, work, backend, documents, index_dir, device) if store
                   else make_trainer(cfg, work, backend, documents, device=device))
        trainer.run()
    finally:
        backend.close()
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("store", [False, True], ids=["texts-in-memory", "document-store"])
def test_two_process_ddp_matches_one_process(tmp_path, documents, tiny_student, monkeypatch, store):
    from rgpl_plugin.embedded import EmbeddedBackend

    student = no_dropout_copy(tiny_student, tmp_path / "student")
    cfg = small_config(student, steps=4, every=2)
    if TEST_DEVICE != "cpu":  # equality at fp32: bf16 autocast rounds a half batch unlike the whole one
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, precision="fp32"))
    index = tmp_path / "index"
    EmbeddedBackend.create(index, documents).close()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with EmbeddedBackend.open(index) as backend:
        trainer = store_trainer(cfg, tmp_path / "single", backend, documents, index) if store else None
        single = (trainer or make_trainer(cfg, tmp_path / "single", backend, documents)).run()
    torch.multiprocessing.spawn(
        _worker, args=(2, free_port(), cfg, tmp_path / "ddp", index, documents, store), nprocs=2, join=True
    )
    a, b = weights(single.model_dir), weights(tmp_path / "ddp" / "final")
    changed = any(not torch.equal(a[k], weights(student)[k]) for k in a)
    assert changed
    atol = 1e-5 if TEST_DEVICE == "cpu" else 1e-4  # CUDA sums in another order
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), key
    # rank 0 alone wrote the round files and checkpoints; it re-mined the same negatives as one process
    assert (tmp_path / "ddp" / "rounds" / "r1" / "manifest.json").exists()
    pools = [(tmp_path / run / "rounds" / "r1" / "pools.jsonl").read_text() for run in ("single", "ddp")]
    assert pools[0] == pools[1]
    logs = [encoded_chunks(tmp_path / f"ddp-rank{r}.log", tmp_path / "ddp") for r in (0, 1)]
    if store:  # the student's corpus encode of round 1 (60 documents, 4 chunks of 16) was shared by the ranks
        assert logs == [{"rounds/r1/vectors": [0, 2]}, {"rounds/r1/vectors": [1, 3]}]
    else:  # texts in memory: rank 0 encodes them all (no chunks)
        assert logs == [{}, {}]


def _encode_rank(rank, world, port, student, index, out, chunk_log):
    from rgpl_adapt.chunked import encode_store_all_ranks
    from rgpl_adapt.distributed import barrier
    from rgpl_adapt.encoding import SentenceTransformerEncoder
    from rgpl_adapt.models import load_sentence_transformer

    join_group(rank, world, port)
    log_chunks(chunk_log / f"rank{rank}.log")
    encoder, info = SentenceTransformerEncoder(load_sentence_transformer(str(student))), dist_info()
    results = []
    for _ in range(2):
        res = encode_store_all_ranks(encoder, index, out, dim=32, info=info, key="tiny", chunk_size=16, batch_size=8)
        results.append([res.encoded_chunks, res.skipped_chunks, res.chunks])
        (chunk_log / f"rank{rank}.json").write_text(json.dumps(results))
        barrier(info)
        if rank == 0 and len(results) == 1:
            np.save(chunk_log / "first.npy", np.load(out / "vectors.npy"))
            (out / "done" / "3").unlink()  # as after a kill between writing chunk 3 and marking it
        barrier(info)
    torch.distributed.destroy_process_group()


def test_two_ranks_share_one_vectors_file_and_resume_it(tmp_path, documents, tiny_student, monkeypatch):
    from rgpl_adapt.chunked import encode_store
    from rgpl_adapt.encoding import SentenceTransformerEncoder
    from rgpl_adapt.models import load_sentence_transformer
    from rgpl_plugin.embedded import EmbeddedBackend

    index, out, logs = tmp_path / "index", tmp_path / "ddp", tmp_path / "logs"
    EmbeddedBackend.create(index, documents).close()  # 60 documents: 4 chunks of 16
    logs.mkdir()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    encoder = SentenceTransformerEncoder(load_sentence_transformer(str(tiny_student)))
    assert encoder.encode(["x"]).shape == (1, 32)
    single = np.load(encode_store(encoder, index, tmp_path / "single", dim=32, key="tiny", chunk_size=16,
                                  batch_size=8).path)
    torch.multiprocessing.spawn(_encode_rank, args=(2, free_port(), tiny_student, index, out, logs), nprocs=2, join=True)
    # [encoded, skipped, chunks] of each call: each rank its own chunks; on the second call only chunk 3 again
    assert [json.loads((logs / f"rank{r}.json").read_text()) for r in (0, 1)] == [
        [[2, 0, 4], [0, 2, 4]],
        [[2, 0, 4], [1, 1, 4]],
    ]
    assert [encoded_chunks(logs / f"rank{r}.log", tmp_path) for r in (0, 1)] == [{"ddp": [0, 2]}, {"ddp": [1, 3, 3]}]
    np.testing.assert_allclose(np.load(logs / "first.npy"), single, rtol=1e-5, atol=1e-6)  # equal to one process
    np.testing.assert_allclose(np.load(out / "vectors.npy"), single, rtol=1e-5, atol=1e-6)


def test_rank_device_one_rank_per_gpu_uses_nccl():
    from rgpl_adapt.distributed import rank_device

    assert rank_device(DistInfo(rank=3, world=4, local_rank=1), gpus=2, local_world=2) == ("cuda:1", "nccl")


def test_rank_device_more_ranks_than_gpus_share_them_with_gloo(caplog):
    from rgpl_adapt.distributed import rank_device

    with caplog.at_level(logging.WARNING, logger="rgpl_adapt.distributed"):
        got = [rank_device(DistInfo(rank=r, world=3, local_rank=r), gpus=2, local_world=3) for r in range(3)]
    assert got == [("cuda:0", "gloo"), ("cuda:1", "gloo"), ("cuda:0", "gloo")]  # rank 0 too: one backend
    assert len(caplog.records) == 1 and "--nproc_per_node 2" in caplog.text and "gloo" in caplog.text


@pytest.mark.parametrize("world", ["1", "2"])
def test_cuda_without_a_visible_gpu_is_a_clear_error(monkeypatch, world):
    import rgpl_adapt.distributed as distributed

    monkeypatch.setenv("WORLD_SIZE", world)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(RuntimeError, match="no GPU is visible.*--device cpu"):
        distributed.init_distributed("cuda")


def test_init_distributed_shares_one_gpu_between_two_local_ranks(monkeypatch):
    """Rank 1 of 2 on a machine with one GPU: device cuda:0, gloo (NCCL would refuse two ranks on one GPU)."""
    import torch.distributed as dist

    import rgpl_adapt.distributed as distributed

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: chosen.append(("set_device", d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, timeout: chosen.append(("group", backend)))
    info, device = distributed.init_distributed("cuda")
    assert (info.rank, device) == (1, "cuda:0")
    assert chosen == [("set_device", 0), ("group", "gloo")]

