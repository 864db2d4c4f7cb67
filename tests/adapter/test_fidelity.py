"""Issue 9: where the pipeline follows GPL/R-GPL (mining similarity, BM25 off, teacher truncation,
held-out split by passage, self-hits in evaluation, fp16 scheduler) and the hybrid-weight fallback."""

from __future__ import annotations

import numpy as np
import pytest

from rgpl_adapt.compare import _as_results
from rgpl_adapt.config import AdaptConfig, LabelConfig, MiningConfig
from rgpl_adapt.pipeline import MIN_DECIDE, choose_hybrid_weight, holdout_split
from rgpl_adapt.records import GeneratedQuery, Hit


def test_defaults_follow_the_references():
    mc = MiningConfig()
    assert mc.similarity == "cosine" and mc.bm25 is False
    lc = LabelConfig()
    assert (lc.max_seq_len, lc.max_pair_len) == (350, 512)
    assert AdaptConfig.from_dict(AdaptConfig().to_dict()).mining.similarity == "cosine"


def _queries(n_docs: int, per_doc: int) -> list[GeneratedQuery]:
    return [GeneratedQuery(f"q{d}-{j}", f"query {j} about {d}", f"d{d}") for d in range(n_docs) for j in range(per_doc)]


@pytest.mark.parametrize("n_docs,per_doc", [(5000, 3), (40, 3), (300, 1)])
def test_holdout_split_is_by_passage_and_sized(n_docs, per_doc):
    queries = _queries(n_docs, per_doc)
    train, held = holdout_split(queries, seed=7)
    assert len(train) + len(held) == len(queries)
    assert not {q.doc_id for q in train} & {q.doc_id for q in held}, "a held-out passage was trained on"
    n = len(queries)
    target = min(max(200, int(np.ceil(0.05 * n))), 2000, int(0.2 * n))
    assert target - per_doc < len(held) <= target
    assert holdout_split(queries, seed=7) == (train, held)  # deterministic
    assert holdout_split(queries, seed=8)[1] != held


class _Backend:
    """hybrid_search that finds the positive at rank 1 for weight >= 0.5, rank 3 below."""

    def hybrid_search(self, space, texts, vecs, k, *, weight, method):
        out = []
        for t in texts:
            doc = t.split()[-1]
            hits = [Hit(doc, 3.0), Hit("x", 2.0), Hit("y", 1.0)] if weight >= 0.5 else [Hit("x", 3.0), Hit("y", 2.0), Hit(doc, 1.0)]
            out.append(hits)
        return out


class _Encoder:
    def encode(self, texts, batch_size=64):
        return np.zeros((len(texts), 4), dtype=np.float32)


def test_hybrid_weight_falls_back_below_min_decide_and_reports_confidence():
    few = [GeneratedQuery(f"q{i}", f"query d{i}", f"d{i}") for i in range(MIN_DECIDE - 1)]
    r = choose_hybrid_weight(_Backend(), _Encoder(), few)
    assert r["hybrid_weight"] == 0.5 and "too few" in r["hybrid_weight_reason"]
    assert r["hybrid_heldout_queries"] == MIN_DECIDE - 1
    many = [GeneratedQuery(f"q{i}", f"query d{i}", f"d{i}") for i in range(MIN_DECIDE + 10)]
    r = choose_hybrid_weight(_Backend(), _Encoder(), many)
    # weights 0.5..1.0 tie at MRR 1.0; the tie goes to the weight nearest 0.5, the runner-up is 0.6 (gap 0)
    assert r["hybrid_weight"] == 0.5 and r["hybrid_sweep_mrr"]["0.4"] == pytest.approx(1 / 3, abs=1e-4)
    assert r["hybrid_weight_gap"] == 0.0 and str(MIN_DECIDE + 10) in r["hybrid_weight_reason"]


def test_self_hit_is_dropped_and_k_others_remain():
    hits = [[Hit("q1", 9.0)] + [Hit(f"d{i}", 8.0 - i) for i in range(10)], [Hit(f"d{i}", 8.0 - i) for i in range(11)]]
    res = _as_results(["q1", "q2"], hits, k=10)
    assert "q1" not in res["q1"] and len(res["q1"]) == 10 and "d9" in res["q1"]
    assert len(res["q2"]) == 10 and "d10" not in res["q2"]


def test_fp16_scheduler_does_not_step_when_the_scaler_skips():
    import torch

    from rgpl_adapt.training import optimizer_step

    class Scaler:
        """GradScaler's contract: step() skips the optimizer on inf grads and update() halves the scale."""

        def __init__(self):
            self.value = 1024.0

        def scale(self, loss):
            return loss * self.value

        def unscale_(self, opt):
            for p in opt.param_groups[0]["params"]:
                p.grad /= self.value

        def get_scale(self):
            return self.value

        def step(self, opt):
            if all(torch.isfinite(p.grad).all() for p in opt.param_groups[0]["params"]):
                opt.step()
            else:
                self.value /= 2

        def update(self):
            pass

    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (1 + step))
    scaler = Scaler()
    assert optimizer_step(model(torch.ones(1, 2)).sum(), model, opt, sched, scaler) is True
    assert sched.last_epoch == 1
    weights = model.weight.detach().clone()
    bad = model(torch.tensor([[float("inf"), 1.0]])).sum()
    assert optimizer_step(bad, model, opt, sched, scaler) is False
    assert sched.last_epoch == 1, "the scheduler stepped although the optimizer did not"
    assert torch.equal(model.weight.detach(), weights)
    assert optimizer_step(model(torch.ones(1, 2)).sum(), model, opt, sched, None) is True and sched.last_epoch == 2


def test_paper_scale_turns_off_the_extra_query_filters():
    from rgpl_adapt.generation import filter_queries

    cfg = AdaptConfig().paper()
    assert cfg.generation.extra_filters is False and AdaptConfig().generation.extra_filters is True
    assert AdaptConfig().generation.max_input_len == 512
    raw = ["vitamin", " ".join(f"word{i}" for i in range(40)), "does vitamin d help"]
    kept, dropped = filter_queries(raw, "passage text", extra=True)
    assert kept == ["does vitamin d help"] and dropped == {"too_short": 1, "too_long": 1}
    kept, dropped = filter_queries(raw, "passage text", extra=False)
    assert len(kept) == 3 and not dropped


def test_cross_passage_repeats_are_kept_without_extra_filters(tiny_t5):
    from dataclasses import replace

    from rgpl_adapt.generation import generate_queries
    from rgpl_plugin.base import Document

    class Same:
        def generate(self, passages, n, seed=0):
            return [["what is the same question"] for _ in passages]

    docs = [Document(id=f"d{i}", text=f"passage {i}") for i in range(3)]
    gc = AdaptConfig().generation
    out, _ = generate_queries(docs, Same(), gc, qpp=1)
    assert len(out) == 1
    out, _ = generate_queries(docs, Same(), replace(gc, extra_filters=False), qpp=1)
    assert [q.doc_id for q in out] == ["d0", "d1", "d2"]
