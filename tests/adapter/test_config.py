import dataclasses
import json

import pytest

from rgpl_adapt.config import AdaptConfig, config_hash


def test_paper_defaults():
    cfg = AdaptConfig()
    assert cfg.generation.model == "BeIR/query-gen-msmarco-t5-base-v1"
    assert cfg.labels.teacher == "cross-encoder/ms-marco-MiniLM-L-6-v2"
    assert cfg.training.student == "GPL/msmarco-distilbert-margin-mse"
    assert (cfg.training.steps, cfg.training.batch_size, cfg.training.max_seq_len) == (140_000, 32, 350)
    assert cfg.remine.every == 25_000 and cfg.training.similarity == "dot"


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AdaptConfig().training.steps = 3  # type: ignore[misc]


def test_round_trip_through_json():
    cfg = AdaptConfig().cpu_sized()
    again = AdaptConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="stepz"):
        AdaptConfig.from_dict({"training": {"stepz": 3}})
    with pytest.raises(ValueError, match="trainig"):
        AdaptConfig.from_dict({"trainig": {}})


def test_cpu_sized_keeps_algorithm_and_shrinks_scale():
    cpu = AdaptConfig().cpu_sized()
    assert cpu.training.steps < 1000 and 0 < cpu.remine.every < cpu.training.steps
    assert cpu.training.student == AdaptConfig().training.student


def test_hash_sensitive_to_any_field():
    base = AdaptConfig()
    changed = dataclasses.replace(base, remine=dataclasses.replace(base.remine, every=10))
    assert config_hash(base) != config_hash(changed)


def test_mining_defaults_follow_gpl_and_rgpl():
    mc = AdaptConfig().mining
    assert mc.bm25 is False  # neither reference mines BM25 negatives
    assert mc.similarity == "cosine"  # score: [cos_sim, cos_sim], normalize_embeddings=True
    assert AdaptConfig().training.similarity == "dot"  # the student (and its remining) stays dot


def test_cli_bm25_negatives_flag():
    from rgpl_adapt.cli import _build_config

    assert _build_config({"scale": "cpu"}).mining.bm25 is False
    assert _build_config({"scale": "cpu", "bm25_negatives": True}).mining.bm25 is True
    assert _build_config({"scale": "cpu", "no_bm25": True}).mining.bm25 is False
