"""The adaptive send rate (router/aimd.py), driven by simulated time: a sender with more to
send than the carrier takes, a carrier that throttles above a rate (a token bucket, as
carriers and our simulator do) and answers a few milliseconds later."""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import pytest

from router.aimd import AdaptiveRate, AimdConfig
from smppcore.throttle import TokenBucket

TICK = 0.001  # the sender looks every millisecond
RTT = 0.004  # the carrier answers 4 ms after a submit


class Run:
    """Sends through ``rate`` whenever it allows (up to ``demand`` per second), at a
    carrier taking ``carrier_rate(now)`` per second (burst ``carrier_burst``); counts."""

    def __init__(
        self,
        rate: AdaptiveRate,
        carrier_rate: Callable[[float], float],
        *,
        demand: float = 1000.0,
        carrier_burst: float = 20.0,
        tick: float = TICK,
    ) -> None:
        self.rate = rate
        self.tick = tick
        self.carrier_rate = carrier_rate
        self.demand = demand
        self.bucket = TokenBucket(carrier_rate(0.0), carrier_burst, 0.0)
        self.now = 0.0
        self.sent: list[float] = []
        self.accepted: list[float] = []
        self.throttled: list[float] = []
        self.limits: list[tuple[float, float | None]] = []
        self._answers: list[tuple[float, float, bool]] = []  # (due, sent_at, ok)
        self._owed = 0.0

    def run_until(self, end: float) -> None:
        while self.now < end:
            now = self.now = self.now + self.tick
            while self._answers and self._answers[0][0] <= now:
                _, sent_at, ok = heapq.heappop(self._answers)
                if ok:
                    self.accepted.append(now)
                else:
                    self.throttled.append(now)
                    self.rate.throttled(now, sent_at)
            self.bucket.rate = self.carrier_rate(now)
            owed = self.demand * self.tick
            self._owed = min(self._owed + owed, owed + 1)
            while self._owed >= 1 and self.rate.delay(now) == 0:
                self._owed -= 1
                self.rate.take(now)
                self.sent.append(now)
                ok = self.bucket.take(now)
                heapq.heappush(self._answers, (now + RTT, now, ok))
            self.limits.append((now, self.rate.limit))

    def count(self, times: list[float], start: float, end: float) -> int:
        return sum(1 for t in times if start <= t < end)

    def limits_between(self, start: float, end: float) -> list[float]:
        return [x for t, x in self.limits if start <= t < end and x is not None]


def test_converges_on_the_rate_a_throttling_carrier_takes() -> None:
    """No ceiling: the first throttle finds a rate; after that the carrier carries its
    limit (the sender's share within 15 % below it) and few submits are throttled."""
    run = Run(AdaptiveRate(AimdConfig(), 0.0), lambda now: 300.0)
    run.run_until(30.0)
    carried = run.count(run.accepted, 10.0, 30.0) / 20.0
    assert 0.85 * 300 <= carried <= 300 * 1.02
    throttled = run.count(run.throttled, 10.0, 30.0)
    assert throttled < 0.02 * run.count(run.sent, 10.0, 30.0)
    limits = run.limits_between(10.0, 30.0)
    assert min(limits) >= 0.6 * 300
    assert max(limits) <= 1.15 * 300


@pytest.mark.parametrize("carrier", [20.0, 300.0, 3000.0])
def test_converges_at_any_scale(carrier: float) -> None:
    run = Run(AdaptiveRate(AimdConfig(), 0.0), lambda now: carrier, demand=10 * carrier)
    run.run_until(40.0)
    carried = run.count(run.accepted, 20.0, 40.0) / 20.0
    assert 0.8 * carrier <= carried <= carrier * 1.05


@pytest.mark.parametrize("tick", [0.005, 0.02])
def test_converges_when_the_sender_looks_late(tick: float) -> None:
    """A busy event loop: the sender gets to look only every 5 or 20 ms (up to six
    tokens at once). The rate still climbs and the carrier still carries its limit."""
    run = Run(AdaptiveRate(AimdConfig(), 0.0), lambda now: 300.0, tick=tick)
    run.run_until(40.0)
    carried = run.count(run.accepted, 20.0, 40.0) / 20.0
    assert 0.8 * 300 <= carried <= 300 * 1.02


def test_never_exceeds_the_configured_rate() -> None:
    """A ceiling under what the carrier takes: the rate starts there and stays there; the
    sender never sends above it (a burst of ``burst`` seconds at most)."""
    cfg = AimdConfig(ceiling=200.0)
    run = Run(AdaptiveRate(cfg, 0.0), lambda now: 1000.0)
    run.run_until(10.0)
    assert not run.throttled
    assert all(limit == 200.0 for _, limit in run.limits)
    for second in range(10):
        assert run.count(run.sent, second, second + 1) <= 200 + 200 * cfg.burst + 1


def test_the_ceiling_also_bounds_the_probe_after_a_cut() -> None:
    """The carrier takes 150/s for a while, then 1000/s: the rate climbs back to the
    ceiling, not past it."""
    cfg = AimdConfig(ceiling=200.0)
    run = Run(AdaptiveRate(cfg, 0.0), lambda now: 150.0 if now < 5 else 1000.0)
    run.run_until(30.0)
    assert run.rate.cuts >= 1
    assert max(x for _, x in run.limits if x is not None) <= 200.0
    assert run.limits[-1][1] == 200.0


def test_recovers_when_the_carrier_takes_more_again() -> None:
    """300/s, then 100/s for 10 s, then 300/s: the rate follows it down within a second
    and back up (additively) within 15 s."""

    def carrier(now: float) -> float:
        return 100.0 if 10.0 <= now < 20.0 else 300.0

    run = Run(AdaptiveRate(AimdConfig(), 0.0), carrier)
    run.run_until(45.0)
    assert max(run.limits_between(11.0, 20.0)) <= 1.25 * 100  # the burst hides it a while
    assert 0.85 * 100 <= run.count(run.accepted, 11.0, 20.0) / 9.0 <= 102
    assert max(run.limits_between(34.0, 45.0)) >= 0.95 * 300
    assert run.count(run.accepted, 35.0, 45.0) / 10.0 >= 0.8 * 300
    # Following it upward is a steady climb, not a jump.
    climb = run.limits_between(20.0, 34.0)
    steps = [b - a for a, b in itertools.pairwise(climb) if b > a]
    assert steps
    assert max(steps) < 1.0


def test_a_burst_of_throttles_in_flight_is_one_cut() -> None:
    rate = AdaptiveRate(AimdConfig(ceiling=100.0), 0.0)
    for i in range(10):
        rate.take(0.001 * i)
    assert rate.throttled(0.02, sent_at=0.0)
    for i in range(1, 10):
        assert not rate.throttled(0.02 + 0.001 * i, sent_at=0.001 * i)
    assert rate.limit == pytest.approx(70.0)
    assert rate.cuts == 1
    rate.take(0.05)
    assert rate.throttled(0.06, sent_at=0.05)  # sent after the cut: a new signal
    assert rate.limit == pytest.approx(49.0, rel=0.01)


def test_without_a_ceiling_the_first_throttle_starts_from_the_measured_rate() -> None:
    rate = AdaptiveRate(AimdConfig(window=1.0), 0.0)
    assert rate.limit is None
    for i in range(5000):  # 1000/s for 5 s
        now = i / 1000
        assert rate.delay(now) == 0
        rate.take(now)
    assert rate.measured(5.0) == pytest.approx(1000.0, rel=0.01)
    rate.throttled(5.0, sent_at=4.999)
    assert rate.limit == pytest.approx(700.0, rel=0.01)


def test_a_carrier_that_refuses_everything_is_asked_once_per_pause_at_the_floor() -> None:
    cfg = AimdConfig(min_rate=2.0, pause=1.0)
    run = Run(AdaptiveRate(cfg, 0.0), lambda now: 1e-9, carrier_burst=1.0)
    run.bucket.take(0.0)  # nothing left: every submit is throttled
    run.run_until(30.0)
    assert run.limits[-1][1] == 2.0
    assert not run.accepted
    # At the floor: one submit per pause, and each throttle pauses again.
    assert run.count(run.sent, 20.0, 30.0) <= 10 + 1
    assert run.rate.paused(run.now) or run.rate.delay(run.now) > 0


def test_an_idle_rate_does_not_drift_up() -> None:
    """The rate grows only while it holds the sender back: a sender that wants 50/s under a
    limit of 140/s leaves it where it was."""
    rate = AdaptiveRate(AimdConfig(), 0.0)
    for i in range(200):
        rate.take(i / 1000)
    rate.throttled(0.2, sent_at=0.1)
    start = rate.limit
    assert start is not None
    now = 0.2
    for _ in range(500):  # 10 s at 50/s
        now += 0.02
        assert rate.delay(now) == 0
        rate.take(now)
    # (Only while the bucket first fills up do a few sends look held back.)
    assert start <= rate.limit < 1.02 * start


def test_delay_says_when_the_next_token_comes() -> None:
    rate = AdaptiveRate(AimdConfig(ceiling=10.0, burst=0.1), 0.0)
    assert rate.delay(0.0) == 0
    rate.take(0.0)
    assert rate.delay(0.0) == pytest.approx(0.1)
    assert rate.delay(0.05) == pytest.approx(0.05)
    assert rate.delay(0.1) == 0
    assert math.isclose(rate.delay(0.1), 0.0)
