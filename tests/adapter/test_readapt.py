"""Re-adaptation on the embedded backend, driven by the scheduler with a fake clock and tiny models:
first version, no-drift skip, drifted corpus -> warm-started version reusing queries, promotion
rule and promotion.json, rejection, retention, rollback, and the lock refusing a second run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from rgpl_adapt.config import AdaptConfig
from rgpl_adapt.readapt import GatedPublisher, Readapter, ReadaptSettings, fair_holdout
from rgpl_adapt.records import Document, GeneratedQuery, read_jsonl
from rgpl_adapt.scheduler import Schedule, Scheduler
from rgpl_adapt.versions import PromotionDecision, rollback_embedded

from tests.conftest import make_documents

HOUR = 3600.0


class FakeClock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t
        self.hooks: list = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds
        for hook in list(self.hooks):
            hook(self.t)


def write_corpus(path: Path, docs: list[Document]) -> None:
    with open(path, "w") as fh:
        fh.writelines(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs)


def tiny_config(corpus: Path, t5: Path, ce: Path, student: Path) -> AdaptConfig:
    cfg = AdaptConfig().cpu_sized()
    return replace(
        cfg,
        corpus=replace(cfg.corpus, path=str(corpus)),
        generation=replace(cfg.generation, model=str(t5), queries_per_passage=2, max_query_len=8),
        mining=replace(cfg.mining, retrievers=(str(student),)),
        labels=replace(cfg.labels, teacher=str(ce)),
        training=replace(cfg.training, student=str(student), steps=6, batch_size=4, max_seq_len=32,
                         checkpoint_every=2, warmup_steps=1),
        remine=replace(cfg.remine, every=3),
        export=replace(cfg.export, onnx=False),  # ONNX parity is tested with the export stage
        device="cpu",
    )


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory, documents, tiny_t5, tiny_cross_encoder, tiny_student):
    """Three scheduled ticks an hour apart; the corpus drifts (15 new, 2 changed) before the third."""
    root = tmp_path_factory.mktemp("readapt") / "docs"
    corpus = root.parent / "corpus.jsonl"
    write_corpus(corpus, documents)
    cfg = tiny_config(corpus, tiny_t5, tiny_cross_encoder, tiny_student)
    clock = FakeClock()
    settings = ReadaptSettings(threshold=0.05, keep=2, tolerance=1.0, warm_steps=4)
    readapter = Readapter(cfg, root, settings=settings, clock=clock, holder="test-host:1")
    extra = [replace(d, id=f"n{i}") for i, d in enumerate(make_documents(15, seed=7))]
    changed = [replace(d, text=d.text + " updated") if d.id in ("d0", "d1") else d for d in documents]
    start = clock.t

    def drift_corpus(now: float) -> None:
        if now >= start + 1.5 * HOUR and not clock.hooks_done:
            write_corpus(corpus, changed + extra)
            clock.hooks_done = True

    clock.hooks_done = False
    clock.hooks.append(drift_corpus)
    scheduler = Scheduler(readapter.run_once, Schedule(interval_s=HOUR), clock=clock, sleep=clock.sleep, poll_s=600)
    log = scheduler.run(max_ticks=3)
    return readapter, log, root, clock, documents, changed + extra


def test_scheduled_ticks_adapt_skip_and_readapt(scheduled):
    readapter, log, root, _, _, _ = scheduled
    assert not log.errors
    actions = [o.action for o in log.results]
    assert actions == ["promoted", "skipped", "promoted"], [(o.action, o.reason) for o in log.results]
    assert log.started[1] - log.started[0] == pytest.approx(HOUR, abs=1.0)
    first, skip, second = log.results
    assert first.drift.first_run and first.version == 1
    assert not skip.drift.due and skip.drift.share == 0.0
    assert second.drift.added == 15 and second.drift.changed == 2 and second.drift.deleted == 0
    assert second.drift.share == pytest.approx(17 / 60)
    assert (root / "current").resolve() == (root / "versions" / "v0002").resolve()
    runs = readapter.store.runs(readapter.target)
    assert [r.version for r in runs] == [2, 1] and all(r.status == "promoted" for r in runs)
    assert readapter.store.serving(readapter.target).previous == 1


def test_second_version_is_warm_started_and_reuses_queries(scheduled):
    readapter, _, root, _, old_docs, _ = scheduled
    v1, v2 = root / "versions" / "v0001", root / "versions" / "v0002"
    cfg2 = json.loads((v2 / "config.json").read_text())
    assert cfg2["training"]["student"] == str(v1 / "export" / "sentence-transformers")
    assert cfg2["training"]["steps"] == 4 and 1 <= cfg2["remine"]["every"] <= 2  # remining still happens
    report = json.loads((v2 / "report.json").read_text())
    assert report["stages"]["train"]["steps"] == 4 and len(report["stages"]["train"]["rounds"]) >= 2
    q1 = {q.qid: q for q in read_jsonl(v1 / "queries" / "queries.jsonl", GeneratedQuery)}
    q2 = {q.qid: q for q in read_jsonl(v2 / "queries" / "queries.jsonl", GeneratedQuery)}
    unchanged = {d.id for d in old_docs} - {"d0", "d1"}
    for qid, q in q1.items():  # every query of an unchanged document is reused verbatim
        if q.doc_id in unchanged:
            assert q2[qid] == q
    fresh_docs = {q.doc_id for q in q2.values() if q.doc_id.startswith("n")}
    assert fresh_docs, "new documents got queries"
    info = readapter.store.runs(readapter.target)[0].snapshot["queries"]
    assert info["reused"] == sum(1 for q in q1.values() if q.doc_id in unchanged)
    assert info["passages_generated"] == 17


def test_promotion_json_records_rule_and_both_numbers(scheduled):
    _, log, root, _, _, _ = scheduled
    first = json.loads((root / "versions" / "v0001" / "promotion.json").read_text())
    assert first["promoted"] and first["serving_mrr"] is None and "no version serves" in first["reason"]
    second = json.loads((root / "versions" / "v0002" / "promotion.json").read_text())
    assert second["promoted"] and "MRR@10(new) >= MRR@10(serving) - 1" in second["rule"]
    assert 0.0 <= second["new_mrr"] <= 1.0 and 0.0 <= second["serving_mrr"] <= 1.0
    assert second["queries"] > 0 and second["serving_version"] == 1
    assert log.results[2].promotion["new_mrr"] == second["new_mrr"]


def test_rejected_version_keeps_serving_is_pruned_and_rollback(scheduled):
    readapter, _, root, clock, _, _ = scheduled
    strict = Readapter(readapter.cfg, root, settings=replace(readapter.settings, tolerance=-2.0, warm_steps=2),
                       clock=clock, store=readapter.store)
    clock.t += HOUR
    outcome = strict.run_once(force=True)
    assert outcome.action == "rejected" and outcome.version == 3, outcome.reason
    decision = json.loads((root / "versions" / "v0003" / "promotion.json").read_text()) if (
        root / "versions" / "v0003").exists() else outcome.promotion
    assert not decision["promoted"] and decision["new_mrr"] < decision["serving_mrr"] + 2.0
    assert (root / "current").resolve().name == "v0002"
    # keep=2: the serving v2 and the rollback target v1 stay; the rejected v3 is pruned
    assert "v3" in outcome.pruned and not (root / "versions" / "v0003").exists()
    assert (root / "versions" / "v0001").is_dir() and (root / "versions" / "v0002").is_dir()
    record = strict.store.runs(strict.target)[0]
    assert record.status == "rejected" and record.metrics["serving_mrr"] == decision["serving_mrr"]
    back = rollback_embedded(strict.store, strict.target, root)
    assert back.version == 1 and back.previous == 2
    assert (root / "current").resolve().name == "v0001"
    with pytest.raises(ValueError, match="no older promoted version"):
        rollback_embedded(strict.store, strict.target, root)


def test_a_second_concurrent_run_is_refused(scheduled):
    readapter, _, _, _, _, _ = scheduled
    lease = readapter.store.acquire(readapter.target, "other-host:9", 600)
    try:
        outcome = readapter.run_once(force=True)
        assert outcome.action == "locked" and "other-host:9" in outcome.reason
    finally:
        readapter.store.release(lease)
    assert readapter.store.current_lease(readapter.target) is None


def test_drift_modes_that_need_a_cluster_are_refused_for_a_corpus(tmp_path):
    with pytest.raises(ValueError, match="cluster"):
        Readapter(AdaptConfig(), tmp_path, settings=ReadaptSettings(drift_mode="seqno"))
    with pytest.raises(ValueError, match="timestamp-field"):
        ReadaptSettings(drift_mode="timestamp")


def test_fair_holdout_drops_queries_the_serving_model_trained_on():
    queries = [GeneratedQuery(f"d{i}-q0", f"query {i}", f"d{i}") for i in range(100)]
    held_alone, _ = fair_holdout(queries, [], seed=42)
    assert len(held_alone) == 20  # 20% cap of 100 queries (the target is 200 or 5%, whichever is more)
    fair, how = fair_holdout(queries, queries, seed=42)  # same split: held-out was held out before too
    assert {q.qid for q in fair} == {q.qid for q in held_alone} and "never trained" in how
    # the split is by passage and does not depend on the queries' order
    shifted = queries[1:] + queries[:1]
    assert {q.qid for q in fair_holdout(queries, shifted, seed=42)[0]} == {q.qid for q in held_alone}
    # a serving run that also trained on some of these passages: those queries are not fair to compare on
    serving = queries + [GeneratedQuery(f"d{i}-extra", f"query {i}", f"d{i}") for i in range(100, 400)]
    fair2, _ = fair_holdout(queries, serving, seed=42)
    assert len(fair2) < len(held_alone)


def test_gated_publisher_moves_the_alias_only_when_promoted():
    calls = []

    class Inner:
        def fingerprint(self): return {"index": "docs"}
        def documents(self): return iter(())
        def describe(self): return {"index": "docs"}
        def publish(self, export_dir, weights):
            calls.append(export_dir)
            return {"published": True, "index": "docs-rgpl-v2"}

    no = PromotionDecision(False, "rule", 0.1, 0.5, 0.01, 10, "worse")
    out = GatedPublisher(Inner(), lambda d: no).publish(Path("x"), {"hybrid_weight": 0.3})
    assert out["published"] is False and out["promotion"]["reason"] == "worse" and not calls
    yes = replace(no, promoted=True, reason="better")
    out = GatedPublisher(Inner(), lambda d: yes).publish(Path("x"), {"hybrid_weight": 0.3})
    assert out["published"] is True and out["promotion"]["promoted"] and calls == [Path("x")]


@pytest.mark.parametrize("max_docs", [20_000, 30])
def test_promotion_numbers_equal_the_list_based_evaluation(scheduled, max_docs):
    """The streamed promotion search (store chunks, memory map) gives the numbers of the old one, which
    held the corpus and both encodings in memory (its code is the oracle in test_promotion)."""
    from rgpl_adapt.corpus import read_corpus
    from rgpl_adapt.pipeline import load_encoder
    from rgpl_adapt.warmstart import read_queries
    from tests.adapter.test_promotion import old_candidate_documents, old_encoder_mrr

    readapter, _, root, clock, _, _ = scheduled
    v1, v2 = root / "versions" / "v0001", root / "versions" / "v0002"
    seed = readapter.cfg.training.seed
    held, _ = fair_holdout(read_queries(v2), read_queries(v1), seed)
    docs, _ = read_corpus(readapter.cfg.corpus)
    cands = old_candidate_documents(docs, held, max_docs, seed)
    old_new = old_encoder_mrr(load_encoder(v2 / "export", False), cands, held)
    old_serving = old_encoder_mrr(load_encoder(v1 / "export", False), cands, held)
    again = Readapter(readapter.cfg, root, settings=replace(readapter.settings, eval_max_docs=max_docs), clock=clock)
    decision = again._evaluate(v2, v2 / "export", v1, 2, 1)
    assert decision.new_mrr == pytest.approx(old_new, abs=1e-6)
    assert decision.serving_mrr == pytest.approx(old_serving, abs=1e-6)
    assert f"{len(cands)} documents searched" in decision.rule
    if max_docs == 20_000:
        recorded = json.loads((v2 / "promotion.json").read_text())
        assert (recorded["new_mrr"], recorded["serving_mrr"]) == (decision.new_mrr, decision.serving_mrr)


def test_drift_scan_streams_the_corpus_with_the_same_fingerprints(scheduled):
    from rgpl_adapt.corpus import read_corpus
    from rgpl_adapt.drift import fingerprints

    readapter = scheduled[0]
    docs, _ = read_corpus(readapter.cfg.corpus)
    scan = readapter._scan(hashes=True)
    assert (scan.count, scan.hashes) == (len(docs), fingerprints(docs))
    assert readapter._scan(hashes=False) == type(scan)(len(docs), None)
    import inspect

    assert inspect.isgenerator(readapter._iter_documents())  # a stream, not a list of the corpus
