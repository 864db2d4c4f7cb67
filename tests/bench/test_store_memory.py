"""Smoke test of bench/store_memory.py: a sharded build sampled by phase, one JSON line per corpus size."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.bench.conftest import BENCH


def test_prints_the_peak_by_phase_of_each_build(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BENCH / "store_memory.py"), "--docs", "2500", "600", "--shard-docs", "1000",
         "--out", str(tmp_path)],
        check=True, capture_output=True, text=True,
    ).stdout.strip().splitlines()
    rows = [json.loads(line) for line in out]
    assert [r["docs"] for r in rows] == [2500, 600]
    assert [r["build"]["bm25_shards"] for r in rows] == [3, 1]
    for r in rows:
        assert r["peak_anon_mb"] == max(r["peak_anon_mb_by_phase"].values()) > 0
        assert "build" in r["peak_anon_mb_by_phase"] and "opened" in r["peak_anon_mb_by_phase"]
    assert not (tmp_path / "index-2500").exists() and (tmp_path / "corpus-2500.jsonl").exists()
