import dataclasses
import json

import pytest
import torch

from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.labeling import ScoreCache
from rgpl_adapt.training import Trainer, TrainingData, TrainingError, TrainingInterrupted, round_bounds
from tests.conftest import TEST_DEVICE
from tests.fakes import OverlapTeacher, random_pools, title_queries


def small_config(student, *, steps=6, every=3, similarity="dot") -> AdaptConfig:
    cfg = AdaptConfig()
    return dataclasses.replace(
        cfg,
        training=dataclasses.replace(
            cfg.training, student=str(student), steps=steps, batch_size=4, max_seq_len=32, warmup_steps=1,
            checkpoint_every=2, lr=1e-3, similarity=similarity,
        ),
        remine=dataclasses.replace(cfg.remine, every=every, k=5, encode_batch_size=16),
        labels=dataclasses.replace(cfg.labels, batch_size=16),
    )


@pytest.fixture()
def backend(tmp_path, documents):
    from rgpl_plugin.embedded import EmbeddedBackend

    b = EmbeddedBackend.create(tmp_path / "index", documents)
    yield b
    b.close()


def make_trainer(cfg, work, backend, documents, teacher=None, **kw) -> Trainer:
    queries = title_queries(documents)
    return Trainer(
        cfg,
        work,
        student_path=cfg.training.student,
        backend=backend,
        data=TrainingData(queries, [d.id for d in documents], [d.full_text() for d in documents]),
        initial_pools=random_pools(queries, documents),
        teacher=teacher or OverlapTeacher(),
        cache=ScoreCache(work / "scores.jsonl", key="overlap"),
        device=kw.pop("device", TEST_DEVICE),
        **kw,
    )


def weights(model_dir):
    from safetensors.torch import load_file

    return load_file(str(next(model_dir.rglob("model.safetensors"))))


def test_round_bounds():
    assert round_bounds(10, 0) == [(0, 10)]
    assert round_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert round_bounds(10, 10) == [(0, 10)]
    with pytest.raises(TrainingError):
        round_bounds(0, 3)


def test_training_remines_and_learns(tmp_path, backend, documents, tiny_student):
    cfg = small_config(tiny_student)
    teacher = OverlapTeacher()
    result = make_trainer(cfg, tmp_path / "train", backend, documents, teacher).run()
    assert result.steps == 6 and (result.model_dir / "modules.json").exists()
    assert [r["round"] for r in result.rounds] == [0, 1]
    r1 = result.rounds[1]
    assert 0.0 <= r1["churn"] <= 1.0 and r1["n_triples"] == 3 * 4
    # the second round re-used cached teacher scores for pairs seen in round 0 (the positives at least)
    assert r1["cache_hits"] > 0
    before, after = weights(tiny_student), weights(result.model_dir)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    log = [json.loads(line) for line in (tmp_path / "train" / "log.jsonl").read_text().splitlines()]
    assert {e["event"] for e in log} >= {"round", "step"}
    # the remining space is dropped afterwards: the backend is left as it was found
    assert not backend.has_vectors("student-r1")


def test_plain_gpl_has_one_round(tmp_path, backend, documents, tiny_student):
    cfg = small_config(tiny_student, steps=4, every=0)
    result = make_trainer(cfg, tmp_path / "train", backend, documents).run()
    assert [r["round"] for r in result.rounds] == [0] and "churn" not in result.rounds[0]


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path, backend, documents, tiny_student):
    cfg = small_config(tiny_student)
    full = make_trainer(cfg, tmp_path / "a", backend, documents).run()
    with pytest.raises(TrainingInterrupted):
        make_trainer(cfg, tmp_path / "b", backend, documents, stop_after=5).run()
    with pytest.raises(TrainingError, match="--resume"):
        make_trainer(cfg, tmp_path / "b", backend, documents).run()
    teacher = OverlapTeacher()
    resumed = make_trainer(cfg, tmp_path / "b", backend, documents, teacher).run(resume=True)
    assert resumed.steps == 6
    assert teacher.calls == 0  # round 1's labels were on disk: nothing re-labelled
    a, b = weights(full.model_dir), weights(resumed.model_dir)
    atol = 1e-6 if TEST_DEVICE == "cpu" else 1e-4  # CUDA's backward sums with atomics: not bit-reproducible
    for key in a:
        assert torch.allclose(a[key], b[key], atol=atol), key


def test_resume_refuses_other_settings(tmp_path, backend, documents, tiny_student):
    cfg = small_config(tiny_student)
    with pytest.raises(TrainingInterrupted):
        make_trainer(cfg, tmp_path / "t", backend, documents, stop_after=2).run()
    other = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, lr=5e-4))
    with pytest.raises(TrainingError, match="other training settings"):
        make_trainer(other, tmp_path / "t", backend, documents).run(resume=True)


def test_cosine_training_runs(tmp_path, backend, documents, tiny_student):
    cfg = small_config(tiny_student, steps=4, every=2, similarity="cosine")
    result = make_trainer(cfg, tmp_path / "train", backend, documents).run()
    assert result.steps == 4 and result.final_loss == result.final_loss  # not NaN


def test_bf16_precision_trains_and_remines(tmp_path, backend, documents, tiny_student):
    cfg = small_config(tiny_student, steps=4, every=2)
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, precision="bf16"))
    result = make_trainer(cfg, tmp_path / "train", backend, documents).run()
    assert result.steps == 4 and len(result.rounds) == 2 and result.final_loss == result.final_loss



def test_scaler_step_reports_a_skipped_fp16_step():
    from rgpl_adapt.training import optimizer_step

    scaler = torch.amp.GradScaler("cpu", init_scale=8.0)
    param = torch.nn.Parameter(torch.ones(1))
    holder = torch.nn.ParameterList([param])
    opt = torch.optim.SGD([param], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def step(factor: float) -> bool:
        opt.zero_grad()
        before = sched.last_epoch
        stepped = optimizer_step((param * factor).sum(), holder, opt, sched, scaler)
        assert sched.last_epoch == before + int(stepped)  # the schedule follows the optimizer
        return stepped

    assert step(float("inf")) is False  # overflow: the optimizer step is skipped, the scale halved
    assert float(param.detach()) == 1.0
    assert step(1.0) is True
    assert float(param.detach()) < 1.0
