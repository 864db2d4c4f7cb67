"""Data-parallel training: 2 CPU processes (gloo) give the same model as 1 process on the same global batches."""

import socket

import torch

from rgpl_adapt.distributed import DistInfo, dist_info, shard
from tests.adapter.test_training import make_trainer, small_config, weights


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


def _worker(rank, world, port, cfg, work, index_dir, documents):
    import os

    from rgpl_adapt.distributed import init_distributed
    from rgpl_plugin.embedded import EmbeddedBackend

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    init_distributed("cpu")
    backend = EmbeddedBackend.open(index_dir)
    try:
        make_trainer(cfg, work, backend, documents).run()
    finally:
        backend.close()
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_one_process(tmp_path, documents, tiny_student, monkeypatch):
    from rgpl_plugin.embedded import EmbeddedBackend

    student = no_dropout_copy(tiny_student, tmp_path / "student")
    cfg = small_config(student, steps=4, every=2)
    EmbeddedBackend.create(tmp_path / "index", documents).close()
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with EmbeddedBackend.open(tmp_path / "index") as backend:
        single = make_trainer(cfg, tmp_path / "single", backend, documents).run()
    torch.multiprocessing.spawn(
        _worker, args=(2, free_port(), cfg, tmp_path / "ddp", tmp_path / "index", documents), nprocs=2, join=True
    )
    a, b = weights(single.model_dir), weights(tmp_path / "ddp" / "final")
    changed = any(not torch.equal(a[k], weights(student)[k]) for k in a)
    assert changed
    for key in a:
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    # rank 0 alone wrote the round files and checkpoints
    assert (tmp_path / "ddp" / "rounds" / "r1" / "manifest.json").exists()
