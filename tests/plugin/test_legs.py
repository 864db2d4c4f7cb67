"""LegRunner: the two legs of a hybrid query in two threads or in sequence, chosen by measurement."""

from __future__ import annotations

import threading

import pytest
from rgpl_plugin.legs import LegRunner


class FakeClock:
    """Each run's duration is set by the legs: they advance the clock by what their mode costs."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def timed_legs(clock: FakeClock, cost: dict[str, float]):
    """Legs that charge ``cost[mode]`` to the clock, the mode read from which thread ran ``second``."""
    caller = threading.get_ident()
    seen = []

    def first():
        return "a"

    def second():
        mode = "sequential" if threading.get_ident() == caller else "threads"
        seen.append(mode)
        clock.now += cost[mode]
        return "b"

    return first, second, seen


def test_auto_settles_on_the_faster_mode_and_keeps_probing_the_other():
    clock = FakeClock()
    runner = LegRunner("auto", cpus=2, clock=clock)
    first, second, seen = timed_legs(clock, {"threads": 0.001, "sequential": 0.002})
    for _ in range(200):
        assert runner.run(first, second) == ("a", "b")
    assert runner.preferred == "threads"
    assert seen[: 2 * LegRunner.WARMUP].count("sequential") == LegRunner.WARMUP  # both measured first
    probes = seen[2 * LegRunner.WARMUP :].count("sequential")
    assert 200 // LegRunner.PROBE_EVERY - 1 <= probes <= 200 // LegRunner.PROBE_EVERY + 1
    runner.close()


def test_auto_moves_to_sequence_when_threads_become_slow():
    clock = FakeClock()
    runner = LegRunner("auto", cpus=2, clock=clock)
    cost = {"threads": 0.001, "sequential": 0.002}
    first, second, seen = timed_legs(clock, cost)
    for _ in range(100):
        runner.run(first, second)
    assert runner.preferred == "threads"
    cost["threads"] = 0.025  # the other core got busy: a thread waits for it
    for _ in range(LegRunner.WINDOW * LegRunner.PROBE_EVERY):
        runner.run(first, second)
    assert runner.preferred == "sequential"
    assert seen[-1] == "sequential" or len(seen) % LegRunner.PROBE_EVERY == 0
    assert runner.medians_ms()["threads"] == pytest.approx(25.0)
    runner.close()


def test_one_core_always_runs_in_sequence():
    clock = FakeClock()
    runner = LegRunner("threads", cpus=1, clock=clock)
    first, second, seen = timed_legs(clock, {"threads": 0.0, "sequential": 1.0})
    for _ in range(40):
        runner.run(first, second)
    assert set(seen) == {"sequential"} and runner.mode == "sequential"


def test_fixed_modes_are_obeyed():
    for mode in ("threads", "sequential"):
        clock = FakeClock()
        runner = LegRunner(mode, cpus=4, clock=clock)
        first, second, seen = timed_legs(clock, {"threads": 1.0, "sequential": 0.0} if mode == "threads"
                                         else {"threads": 0.0, "sequential": 1.0})
        for _ in range(70):
            runner.run(first, second)
        assert set(seen) == {mode}
        runner.close()
    with pytest.raises(ValueError, match="unknown leg mode"):
        LegRunner("parallel")  # type: ignore[arg-type]


def test_errors_of_either_leg_are_raised_after_both_ended():
    runner = LegRunner("threads", cpus=2)
    ended = threading.Event()

    def slow_second():
        ended.wait(0.05)
        ended.set()
        return 1

    def failing_first():
        raise RuntimeError("bm25 failed")

    with pytest.raises(RuntimeError, match="bm25 failed"):
        runner.run(failing_first, slow_second)
    assert ended.is_set()  # the worker's leg was waited for

    def failing_second():
        raise KeyError("no space")

    with pytest.raises(KeyError, match="no space"):
        runner.run(lambda: 1, failing_second)
    runner.close()
    assert runner.run(lambda: 1, lambda: 2) == (1, 2)  # a closed runner starts a new worker
    runner.close()
