"""The scheduler: interval and cron parsing, next times, and the loop on a fake clock (errors
recorded without ending it, stop between ticks, SIGTERM)."""

from __future__ import annotations

import calendar
import os
import signal

import pytest
from rgpl_adapt.scheduler import CronExpr, Schedule, Scheduler, parse_interval


def utc(*args) -> float:
    return float(calendar.timegm(args + (0,) * (6 - len(args))))


def test_intervals():
    assert parse_interval("90s") == 90 and parse_interval("30m") == 1800 and parse_interval("6h") == 21600
    assert parse_interval("1d12h") == 129600 and parse_interval("2w") == 1209600 and parse_interval("45") == 45
    for bad in ("", "6x", "h6", "0s", "6h garbage"):
        with pytest.raises(ValueError):
            parse_interval(bad)


@pytest.mark.parametrize("expr, after, expected", [
    ("0 3 * * *", utc(2025, 1, 1, 12), utc(2025, 1, 2, 3)),
    ("0 3 * * *", utc(2025, 1, 1, 2, 59), utc(2025, 1, 1, 3)),
    ("*/15 * * * *", utc(2025, 1, 1, 12, 7), utc(2025, 1, 1, 12, 15)),
    ("*/15 9-17 * * mon-fri", utc(2025, 1, 4, 12), utc(2025, 1, 6, 9)),  # Saturday -> Monday 09:00
    ("30 2 1 * *", utc(2025, 1, 15), utc(2025, 2, 1, 2, 30)),
    ("0 0 29 2 *", utc(2025, 3, 1), utc(2028, 2, 29)),  # next leap day
    ("0 12 * * 0", utc(2025, 1, 1), utc(2025, 1, 5, 12)),  # Sunday as 0
    ("0 12 * * 7", utc(2025, 1, 1), utc(2025, 1, 5, 12)),  # ... and as 7
    ("0 0 13 * 5", utc(2025, 1, 1), utc(2025, 1, 3)),  # day-of-month OR day-of-week (a Friday first)
    ("@daily", utc(2025, 1, 1, 0, 0, 30), utc(2025, 1, 2)),
    ("0,30 8 * jan,jul *", utc(2025, 2, 1), utc(2025, 7, 1, 8)),
])
def test_cron_next(expr, after, expected):
    assert CronExpr.parse(expr).next_after(after) == expected


@pytest.mark.parametrize("bad", ["* * * *", "60 * * * *", "* 24 * * *", "* * 0 * *", "*/0 * * * *", "x * * * *",
                                 "5-3 * * * *"])
def test_cron_rejects_bad_expressions(bad):
    with pytest.raises(ValueError):
        CronExpr.parse(bad)


def test_schedule_needs_exactly_one_of_interval_or_cron():
    with pytest.raises(ValueError, match="exactly one"):
        Schedule.parse()
    with pytest.raises(ValueError, match="exactly one"):
        Schedule.parse("6h", "0 3 * * *")
    assert Schedule.parse("6h").next_after(100.0) == 100.0 + 21600
    assert "cron" in Schedule.parse(cron="0 3 * * *").describe()


class FakeClock:
    def __init__(self, t: float) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.t += s


def test_loop_runs_on_schedule_and_survives_errors():
    clock = FakeClock(utc(2025, 1, 1, 0, 0, 10))
    calls = []

    def tick():
        calls.append(clock.t)
        if len(calls) == 2:
            raise RuntimeError("cluster unreachable")
        return len(calls)

    errors = []
    sched = Scheduler(tick, Schedule.parse(cron="0 */6 * * *"), clock=clock, sleep=clock.sleep, poll_s=3600,
                      on_error=errors.append)
    log = sched.run(max_ticks=4)
    assert calls == [utc(2025, 1, 1, 0, 0, 10), utc(2025, 1, 1, 6), utc(2025, 1, 1, 12), utc(2025, 1, 1, 18)]
    assert log.results == [1, 3, 4] and log.errors == ["RuntimeError: cluster unreachable"]
    assert isinstance(errors[0], RuntimeError)
    assert max(clock.sleeps) <= 3600  # the wait is sliced so a stop is seen


def test_stop_between_ticks_and_no_run_now():
    clock = FakeClock(0.0)
    sched = None

    def tick():
        sched.stop()
        return "done"

    sched = Scheduler(tick, Schedule(interval_s=60), run_now=False, clock=clock, sleep=clock.sleep)
    log = sched.run()
    assert log.started == [60.0] and log.results == ["done"] and sched.stopped

    clock2 = FakeClock(0.0)
    waiting = Scheduler(lambda: None, Schedule(interval_s=3600), clock=clock2, poll_s=10)

    def sleep_then_stop(s):
        clock2.sleep(s)
        if clock2.t >= 30:
            waiting.stop()

    waiting.sleep = sleep_then_stop
    log = waiting.run()
    assert len(log.started) == 1 and clock2.t == 30  # stopped while waiting, within one poll


def test_sigterm_stops_the_loop():
    clock = FakeClock(0.0)
    sched = Scheduler(lambda: os.kill(os.getpid(), signal.SIGTERM), Schedule(interval_s=60), clock=clock,
                      sleep=clock.sleep)
    old_term, old_int = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        sched.install_signal_handlers()
        log = sched.run(max_ticks=5)
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)
    assert len(log.started) == 1 and sched.stopped
