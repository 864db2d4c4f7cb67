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


def test_stages_stream_the_corpus_into_the_store_encode_it_and_serve_it(tmp_path):
    scale = load_bench("scale")
    scale.write_corpus(tmp_path / "c.jsonl", 300)
    res = scale.stage_store(str(tmp_path / "c.jsonl"), str(tmp_path / "index"), 100)
    assert res["stage"] == "store" and res["docs"] == 300 and res["docs_per_s"] > 0
    assert (res["chunks"], res["chunks_done"], res["chunks_skipped"]) == (3, 3, 0)
    sample = scale.stage_sample(str(tmp_path / "index"))
    assert sample["sampled"] == 300 and sample["train_texts"] > 0  # 300 passages: no sampling needed
    enc = scale.stage_encode("bytes", str(tmp_path / "index"), str(tmp_path / "vectors"), 128)
    assert (enc["docs"], enc["chunks"], enc["chunks_done"]) == (300, 3, 3)
    again = scale.stage_encode("bytes", str(tmp_path / "index"), str(tmp_path / "vectors"), 128)
    assert (again["chunks_done"], again["chunks_skipped"]) == (0, 3)  # finished chunks are not redone
    served = scale.stage_serve(str(tmp_path / "index"), str(tmp_path / "vectors"))
    assert served["docs"] == 300 and served["hits"] == 10_000 and served["search"] == "exact"


def test_projection_is_a_line_through_the_two_largest_sizes():
    scale = load_bench("scale")
    rows = [{"stage": "store", "docs": n, "seconds": n / 1000, "peak_rss_mb": 100 + n / 1e6} for n in (1000, 2000)]
    (line,) = scale.project(rows, target=10_000)
    assert line["seconds"] == 10 and line["peak_rss_mb"] == 100  # 100.01 rounded
