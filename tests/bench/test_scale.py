"""Smoke test of bench/scale.py: the synthetic corpus and the streaming store stage."""

from __future__ import annotations

import json
from collections import Counter

from tests.bench.conftest import load_bench


def test_synthetic_corpus_has_realistic_lengths_and_zipf_words(tmp_path):
    scale = load_bench("scale")
    info = scale.write_corpus(tmp_path / "c.jsonl", 400)
    lines = (tmp_path / "c.jsonl").read_text().splitlines()
    assert len(lines) == info["docs"] == 400 and len({json.loads(x)["_id"] for x in lines}) == 400
    lengths = [len(json.loads(x)["text"].split()) for x in lines]
    assert min(lengths) >= 50 and max(lengths) <= 250 and sum(lengths) == info["words"]
    counts = Counter(w for x in lines for w in json.loads(x)["text"].split()).most_common()
    assert counts[0][1] > 10 * counts[50][1]  # a heavy head, as in natural text
    assert scale.write_corpus(tmp_path / "c.jsonl", 400) == info  # written once


def test_store_stage_streams_the_corpus_into_the_embedded_store(tmp_path):
    scale = load_bench("scale")
    scale.write_corpus(tmp_path / "c.jsonl", 300)
    res = scale.stage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "index"))
    assert res["stage"] == "store" and res["docs"] == 300 and res["docs_per_s"] > 0
