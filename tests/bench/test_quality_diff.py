"""bench/quality_diff.py: before/after on the shared queries, with paired bootstrap p-values."""

from __future__ import annotations

import json


def _result(per_query):
    return {"per_query_ndcg@10": per_query}


def test_diff_uses_only_queries_both_runs_scored_and_compares_each_system(bench, tmp_path, capsys):
    qd = bench("quality_diff")
    qs = [f"q{i}" for i in range(40)]
    before = _result({
        "zero-shot": {q: 0.5 for q in qs},
        "R-GPL": {q: 0.5 for q in qs},
    })
    after_qs = qs[2:]  # the after run left two example queries out
    after = _result({
        "zero-shot": {q: 0.5 for q in after_qs},
        "R-GPL": {q: 0.9 for q in after_qs},
        "R-GPL + examples": {q: 0.9 for q in after_qs},
    })
    res = qd.diff(before, after, resamples=500)
    assert res["queries"] == 38
    rgpl = res["systems"]["R-GPL"]
    assert rgpl["before"] == 0.5 and abs(rgpl["after"] - 0.9) < 1e-12
    assert rgpl["p_after_vs_before"] < 0.01 and rgpl["p_after_vs_zero_shot"] < 0.01
    assert rgpl["p_before_vs_zero_shot"] == 1.0  # identical scores: no difference
    assert "before" not in res["systems"]["R-GPL + examples"]
    b, a = tmp_path / "b.json", tmp_path / "a.json"
    b.write_text(json.dumps(before))
    a.write_text(json.dumps(after))
    qd.main([str(b), str(a), "--resamples", "200"])
    out = capsys.readouterr().out
    assert "| R-GPL | 0.5000 | 0.9000 | +0.4000 |" in out and "38 queries" in out
