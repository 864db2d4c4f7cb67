"""``rgpl-adapt schedule``: a long-running loop that re-adapts when the documents drifted.

A :class:`Schedule` is an interval (``"6h"``, ``"30m"``, ``"1d12h"``) or a 5-field cron expression
(``"0 3 * * *"``: minute hour day-of-month month day-of-week, with ``*``, lists, ranges and
steps; UTC). :class:`Scheduler` waits for the next time, runs one tick (for rgpl-adapt:
:meth:`rgpl_adapt.readapt.Readapter.run_once`: drift, lock, adapt, promote, prune, record), and
goes on. A tick that raises is logged and recorded by ``on_error``; the loop continues.
:meth:`Scheduler.stop` (what SIGTERM/SIGINT call once :meth:`install_signal_handlers` ran) ends
the loop between ticks; the wait is sliced so a stop is seen within ``poll_s`` seconds. The clock
and the sleep are injectable, so tests drive a day of schedule in milliseconds.
"""

from __future__ import annotations

import calendar
import logging
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day", 1, 31), ("month", 1, 12), ("weekday", 0, 6))
_NAMES = {
    "month": {n: i for i, n in enumerate(["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"], 1)},
    "weekday": {n: i for i, n in enumerate(["sun", "mon", "tue", "wed", "thu", "fri", "sat"])},
}
_MACROS = {"@hourly": "0 * * * *", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@weekly": "0 0 * * 0",
           "@monthly": "0 0 1 * *", "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *"}


def parse_interval(text: str) -> float:
    """Seconds in ``"90s"``, ``"30m"``, ``"6h"``, ``"1d12h"``, ``"2w"`` (a bare number is seconds)."""
    s = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        seconds = float(s)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", s)
        if not parts or "".join(f"{n}{u}" for n, u in parts) != s.replace(" ", ""):
            raise ValueError(f"cannot read interval {text!r}: use e.g. 90s, 30m, 6h, 1d12h")
        seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"interval {text!r} must be positive")
    return seconds


def _parse_field(spec: str, name: str, lo: int, hi: int) -> frozenset[int]:
    """The values one cron field allows (``*``, ``a``, ``a-b``, ``*/n``, ``a-b/n``, ``a/n``, lists, names)."""
    top = 7 if name == "weekday" else hi  # 0 and 7 are both Sunday
    names = _NAMES.get(name, {})

    def value(token: str) -> int:
        if token in names:
            return names[token]
        if token.isdigit():
            return int(token)
        raise ValueError(f"bad value {token!r} in cron {name} field {spec!r}")

    values: set[int] = set()
    for item in spec.lower().split(","):
        base, _, step_s = item.partition("/")
        step = 1
        if step_s:
            if not step_s.isdigit() or int(step_s) < 1:
                raise ValueError(f"bad step in cron {name} field {spec!r}")
            step = int(step_s)
        if base == "*":
            a, b = lo, hi
        elif "-" in base:
            a_s, b_s = base.split("-", 1)
            a, b = value(a_s), value(b_s)
        else:
            a = value(base)
            b = hi if step_s else a
        if not lo <= a <= b <= top:
            raise ValueError(f"cron {name} field {spec!r} is out of range {lo}-{hi}")
        values.update(range(a, b + 1, step))
    if name == "weekday":
        values = {v % 7 for v in values}
    return frozenset(values)


@dataclass(frozen=True)
class CronExpr:
    """A 5-field cron expression, evaluated in UTC. Day-of-month and day-of-week combine as in cron:
    when both are restricted, either matching is enough."""

    text: str
    minute: frozenset[int]
    hour: frozenset[int]
    day: frozenset[int]
    month: frozenset[int]
    weekday: frozenset[int]
    day_any: bool
    weekday_any: bool

    @classmethod
    def parse(cls, text: str) -> CronExpr:
        expr = _MACROS.get(text.strip().lower(), text)
        parts = expr.split()
        if len(parts) != 5:
            raise ValueError(f"cron expression {text!r} needs 5 fields (minute hour day month weekday), e.g. '0 3 * * *'")
        sets = [_parse_field(p, n, lo, hi) for p, (n, lo, hi) in zip(parts, _FIELDS)]
        return cls(text, *sets, day_any=parts[2] == "*", weekday_any=parts[4] == "*")

    def _day_ok(self, tm: time.struct_time) -> bool:
        dom = tm.tm_mday in self.day
        dow = (tm.tm_wday + 1) % 7 in self.weekday  # struct_time: Monday=0; cron: Sunday=0
        if self.day_any and self.weekday_any:
            return True
        if self.day_any:
            return dow
        if self.weekday_any:
            return dom
        return dom or dow

    def next_after(self, t: float) -> float:
        """The first matching minute strictly after ``t`` (epoch seconds)."""
        m = (int(t) // 60 + 1) * 60
        limit = m + 5 * 366 * 86400
        while m < limit:
            tm = time.gmtime(m)
            if tm.tm_mon not in self.month or not self._day_ok(tm):
                m = calendar.timegm((tm.tm_year, tm.tm_mon, tm.tm_mday, 0, 0, 0)) + 86400
                continue
            if tm.tm_hour not in self.hour:
                m = calendar.timegm((tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, 0, 0)) + 3600
                continue
            if tm.tm_min not in self.minute:
                m += 60
                continue
            return float(m)
        raise ValueError(f"cron expression {self.text!r} never matches")


@dataclass(frozen=True)
class Schedule:
    """Every ``interval_s`` seconds, or at the times of a cron expression."""

    interval_s: float | None = None
    cron: CronExpr | None = None

    @classmethod
    def parse(cls, every: str | None = None, cron: str | None = None) -> Schedule:
        if bool(every) == bool(cron):
            raise ValueError("give exactly one of an interval (--every 6h) or a cron expression (--cron '0 3 * * *')")
        return cls(interval_s=parse_interval(every)) if every else cls(cron=CronExpr.parse(cron or ""))

    def next_after(self, t: float) -> float:
        if self.cron is not None:
            return self.cron.next_after(t)
        assert self.interval_s is not None
        return t + self.interval_s

    def describe(self) -> str:
        return f"cron '{self.cron.text}' (UTC)" if self.cron else f"every {self.interval_s:g}s"


@dataclass
class TickLog:
    """What the loop did (kept for ``status`` and tests)."""

    started: list[float] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class Scheduler:
    """Runs ``tick()`` on a :class:`Schedule` until stopped.

    Args:
        tick: one unit of work; its return value goes to ``on_result``; exceptions to ``on_error``.
        run_now: tick once at start instead of waiting for the first scheduled time.
        clock, sleep: ``time.time`` and ``time.sleep`` unless injected (tests pass fakes).
        poll_s: the longest single sleep, i.e. how late a stop can be seen while waiting.
    """

    def __init__(
        self,
        tick: Callable[[], Any],
        schedule: Schedule,
        *,
        run_now: bool = True,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        poll_s: float = 5.0,
        on_result: Callable[[Any], None] = lambda result: None,
        on_error: Callable[[BaseException], None] = lambda exc: None,
    ) -> None:
        self.tick = tick
        self.schedule = schedule
        self.run_now = run_now
        self.clock = clock
        self.sleep = sleep
        self.poll_s = poll_s
        self.on_result = on_result
        self.on_error = on_error
        self.log = TickLog()
        self._stop = threading.Event()

    def stop(self, *_: Any) -> None:
        """Stop after the current tick (safe from a signal handler)."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT stop the loop cleanly between runs (main thread only)."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)

    def _wait_until(self, when: float) -> bool:
        """Sleep until ``when``; False when stopped first."""
        while not self._stop.is_set():
            left = when - self.clock()
            if left <= 0:
                return True
            self.sleep(min(left, self.poll_s))
        return False

    def _run_tick(self) -> None:
        self.log.started.append(self.clock())
        try:
            result = self.tick()
        except Exception as exc:  # noqa: BLE001  a failed tick must not end the schedule
            log.warning("scheduled run failed: %s: %s", type(exc).__name__, exc)
            self.log.errors.append(f"{type(exc).__name__}: {exc}")
            self.on_error(exc)
            return
        self.log.results.append(result)
        self.on_result(result)

    def run(self, *, max_ticks: int | None = None) -> TickLog:
        """Loop until :meth:`stop` (or ``max_ticks`` ticks). Returns what happened."""
        ticks = 0
        if self.run_now and not self._stop.is_set():
            self._run_tick()
            ticks += 1
        while not self._stop.is_set() and (max_ticks is None or ticks < max_ticks):
            when = self.schedule.next_after(self.clock())
            log.info("next run at %s", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when)))
            if not self._wait_until(when):
                break
            self._run_tick()
            ticks += 1
        return self.log
