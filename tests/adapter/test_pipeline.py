"""Pipeline-level behaviour not covered through the CLI: torchrun gating (2 CPU ranks, gloo)."""

import dataclasses
import json

import numpy as np
import torch

from rgpl_adapt.config import AdaptConfig
from tests.adapter.test_distributed import encoded_chunks, free_port, log_chunks, no_dropout_copy
from tests.conftest import TEST_DEVICE


def tiny_config(beir_dir, t5, ce, student) -> AdaptConfig:
    cfg = AdaptConfig()
    return dataclasses.replace(
        cfg,
        corpus=dataclasses.replace(cfg.corpus, path=str(beir_dir)),
        # the random-weight T5 writes word salad: few new tokens keep its queries under the length filter
        generation=dataclasses.replace(cfg.generation, model=str(t5), queries_per_passage=1, batch_size=16,
                                       max_query_len=8),
        mining=dataclasses.replace(cfg.mining, retrievers=(str(student),), k=5),
        labels=dataclasses.replace(cfg.labels, teacher=str(ce), batch_size=32),
        training=dataclasses.replace(
            cfg.training, student=str(student), steps=4, batch_size=4, max_seq_len=32, warmup_steps=1, checkpoint_every=2
        ),
        remine=dataclasses.replace(cfg.remine, every=2, k=5),
        device=TEST_DEVICE,  # cuda: the 2 ranks share one GPU over gloo when there is one
    )


def _rank(rank, world, port, cfg, run_dir, out):
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from rgpl_adapt.pipeline import Pipeline

    log_chunks(out / f"rank{rank}.log")
    events = []
    result = Pipeline(cfg, run_dir, on_event=lambda e, i: events.append(e), chunk_size=16).run()
    (out / f"rank{rank}.json").write_text(json.dumps({"events": events, "onnx": str(result.onnx_dir)}))
    torch.distributed.destroy_process_group()


def test_torchrun_rank0_runs_the_stages_and_all_ranks_train(tmp_path, beir_dir, tiny_t5, tiny_cross_encoder, tiny_student):
    student = no_dropout_copy(tiny_student, tmp_path / "student")
    cfg = tiny_config(beir_dir, tiny_t5, tiny_cross_encoder, student)
    torch.multiprocessing.spawn(_rank, args=(2, free_port(), cfg, tmp_path / "run", tmp_path), nprocs=2, join=True)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert "stage_done" in rank0["events"] and rank0["onnx"] != "None"
    assert rank1["events"] == [] and rank1["onnx"] == "None"  # other ranks are silent and stop after training
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["stages"]["train"]["steps"] == 4
    assert [r["round"] for r in report["stages"]["train"]["rounds"]] == [0, 1]
    # the corpus encodes (60 documents, 4 chunks of 16) were shared: mining, remining round 1, serving
    from rgpl_adapt.chunked import encode_store
    from rgpl_adapt.mining import space_name
    from rgpl_adapt.runfolder import corpus_encoder

    encodes = (f"negatives/vectors/{space_name(str(student))}", "train/rounds/r1/vectors", "serve/vectors")
    for rank in (0, 1):
        assert encoded_chunks(tmp_path / f"rank{rank}.log", tmp_path / "run") == {e: [rank, rank + 2] for e in encodes}
    encoder, _ = corpus_encoder(tmp_path / "run" / "export", cfg.export.onnx, cfg.training.precision, TEST_DEVICE)
    single = encode_store(encoder, tmp_path / "run" / "index", tmp_path / "single", dim=32, chunk_size=16)
    served = np.load(tmp_path / "run" / "serve" / "vectors" / "vectors.npy")
    tol = {"rtol": 1e-5, "atol": 1e-6} if TEST_DEVICE == "cpu" else {"rtol": 1e-2, "atol": 1e-2}  # GPU: bf16
    np.testing.assert_allclose(served, np.load(single.path), **tol)  # as one process encodes them


def test_miners_rank_by_cosine_and_the_report_says_so(tmp_path, beir_dir, tiny_t5, tiny_cross_encoder, tiny_student, monkeypatch):
    import rgpl_adapt.encoding as encoding
    from rgpl_adapt.pipeline import Pipeline

    seen: list[bool] = []

    class Recording(encoding.SentenceTransformerEncoder):
        def __init__(self, model, **kw):
            seen.append(kw.get("normalize", False))
            super().__init__(model, **kw)

    monkeypatch.setattr(encoding, "SentenceTransformerEncoder", Recording)
    cfg = tiny_config(beir_dir, tiny_t5, tiny_cross_encoder, tiny_student)
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, steps=2), remine=dataclasses.replace(cfg.remine, every=0))
    report = Pipeline(cfg, tmp_path / "run").run().report
    assert seen[:1] == [True]  # the miner (built first, in the negatives stage) normalises
    assert report["stages"]["negatives"]["similarity"] == {str(tiny_student): "cosine"}
    assert report["stages"]["negatives"]["sources"] == [str(tiny_student)]  # no BM25 by default


def test_query_generation_moves_its_bar_per_generation_batch(tmp_path, beir_dir, tiny_t5, tiny_cross_encoder,
                                                             tiny_student):
    """A part (up to 256 passages) of a slow generator takes minutes on a CPU: the bar ticks per batch."""
    from contextlib import contextmanager

    from rgpl_adapt.pipeline import Pipeline

    ticks: dict[str, list[int]] = {}

    @contextmanager
    def recording(total=None, desc="", unit="it"):
        seen = ticks.setdefault(desc, [])

        class Bar:
            def update(self, n=1):
                seen.append(n)

            def set_postfix(self, **kw):
                pass

        yield Bar()

    cfg = tiny_config(beir_dir, tiny_t5, tiny_cross_encoder, tiny_student)
    cfg = dataclasses.replace(cfg, device="cpu", generation=dataclasses.replace(cfg.generation, batch_size=8))
    p = Pipeline(cfg, tmp_path / "run", progress=recording)
    store = p._stage_index()
    p._stage_queries(store)
    got = [n for n in ticks["generating queries"] if n]
    n = store.count()
    assert n == 60 and sum(got) == n  # one part of 60 passages
    assert got == [8] * 7 + [4]  # per batch of 8, not one tick at the end of the part
