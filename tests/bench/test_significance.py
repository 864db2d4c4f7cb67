"""The paired bootstrap of bench/significance.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.bench.conftest import BENCH, load_bench


def test_a_clear_gain_is_significant_and_noise_is_not():
    sig = load_bench("significance")
    rng = np.random.default_rng(1)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.uniform(0, 1, 200))}
    better = {q: v + 0.1 for q, v in base.items()}
    noisy = {q: v + float(rng.normal(0, 0.3)) for q, v in base.items()}
    gain = sig.paired_bootstrap(base, better, resamples=2000)
    assert gain["diff"] == pytest.approx(0.1) and gain["p"] < 0.001
    worse = sig.paired_bootstrap(better, base, resamples=2000)
    assert worse["diff"] == pytest.approx(-0.1) and worse["p"] < 0.001
    same = sig.paired_bootstrap(base, noisy, resamples=2000, seed=3)
    assert same["p"] > 0.05 and same["queries"] == 200
    assert sig.paired_bootstrap(base, dict(base))["p"] == 1.0
    assert sig.paired_bootstrap({"q": 1.0}, {})["diff"] == -1.0  # missing query scores 0
    with pytest.raises(ValueError):
        sig.paired_bootstrap({}, {})


def test_quality_compares_every_adapted_system_with_zero_shot_and_rgpl_with_gpl(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # quality.py imports its neighbours as a script does
    quality = load_bench("quality")
    per_query = {
        name: {f"q{i}": 0.1 * (i % 5) + bonus for i in range(50)}
        for name, bonus in [("BM25", 0.0), ("zero-shot", 0.0), ("GPL", 0.05), ("R-GPL", 0.1),
                            ("GPL hybrid", 0.05), ("R-GPL hybrid", 0.05)]
    }
    sig = quality.significance_of(per_query, resamples=500, seed=0)
    assert set(sig) == {"GPL vs zero-shot", "R-GPL vs zero-shot", "GPL hybrid vs zero-shot",
                        "R-GPL hybrid vs zero-shot", "R-GPL vs GPL", "R-GPL hybrid vs GPL hybrid"}
    assert sig["R-GPL vs GPL"]["diff"] == pytest.approx(0.05) and sig["R-GPL vs GPL"]["p"] < 0.01
    assert sig["R-GPL hybrid vs GPL hybrid"]["p"] == 1.0
