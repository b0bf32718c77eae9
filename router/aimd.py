"""An adaptive send rate: find the rate a carrier takes and keep to it (AIMD, as TCP does).

Carriers throttle above a rate they rarely publish: past it they answer ESME_RTHROTTLED
(or ESME_RMSGQFUL). :class:`AdaptiveRate` is a token bucket whose rate moves:

- *multiplicative decrease*: a throttle cuts the rate to ``decrease`` times what it was
  (never under ``min_rate``). Only a throttle of a submit sent *after* the last cut counts:
  the answers to what was already in flight at the old rate say nothing about the new one,
  so a burst of them is one cut, not one each;
- *additive increase*: while the bucket is what holds the sender back (less than a token
  overflows it between sends), the rate climbs linearly, by ``increase`` times the rate
  at the last cut per second — past that rate, by ``increase`` times the current one —
  up to ``ceiling`` (the configured carrier ``rate``), never above;
- no ceiling and no throttle yet: no limit at all. The first throttle then starts from the
  rate measured over the last ``window`` seconds;
- at the floor: a throttle that would cut the rate to ``min_rate`` or below sets it there
  and holds every submit back for ``pause`` seconds (a carrier that refuses everything is
  asked about once per pause).

The rate climbs only while it is used up, so an idle or lightly used carrier keeps the
rate it learnt instead of drifting to the ceiling. With the defaults the rate saws between
about 70 % and 115 % of the carrier's limit (its burst hides the limit for a while), and
the carrier carries some 90 % of its limit; a carrier whose limit rises is followed upward,
10 % more per second once past the old limit.

Pure: time is the caller's ``now`` (monotonic seconds); no asyncio, no clock, no random.
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec
from msgspec import Meta


class AimdConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The controller's constants (the carrier's ``rate`` and ``adaptive`` settings)."""

    ceiling: Annotated[float, Meta(gt=0)] | None = None
    """Messages per second never to exceed (the configured carrier rate); None: no limit
    until a throttle is met."""
    decrease: Annotated[float, Meta(gt=0, lt=1)] = 0.7
    """A throttle multiplies the rate by this."""
    increase: Annotated[float, Meta(gt=0, le=10)] = 0.1
    """While the rate is used up it grows by this share of the rate at the last cut (or of
    the current rate, once past it) per second."""
    min_rate: Annotated[float, Meta(gt=0)] = 1.0
    """The rate is never cut below this (messages per second)."""
    burst: Annotated[float, Meta(gt=0, le=10)] = 0.05
    """Seconds of the current rate that may go at once ..."""
    burst_min: Annotated[float, Meta(ge=1)] = 1.0
    """... but at least this many messages (the configured carrier burst)."""
    pause: Annotated[float, Meta(ge=0)] = 1.0
    """At ``min_rate``, a throttle holds everything back this long."""
    window: Annotated[float, Meta(gt=0)] = 1.0
    """Seconds over which the sending rate is measured while there is no limit yet."""


class AdaptiveRate:
    """One sender's adaptive token bucket. Ask :meth:`delay`, :meth:`take` a token per
    send, and report every throttle with :meth:`throttled`."""

    __slots__ = (
        "_cut_at",
        "_last",
        "_level",
        "_paused_until",
        "_peak",
        "_seen",
        "_started",
        "_tokens",
        "config",
        "cuts",
        "limit",
    )

    def __init__(self, config: AimdConfig, now: float) -> None:
        self.config = config
        #: The current rate (messages per second); None: none found yet (and no ceiling).
        self.limit: float | None = config.ceiling
        #: Cuts so far (throttles that lowered the rate or paused it).
        self.cuts = 0
        self._tokens = self._capacity()
        self._last = now
        self._cut_at = -math.inf
        self._peak = config.ceiling or 0.0
        self._paused_until = -math.inf
        self._level = 0.0  # decaying count of sends (the rate measure while unlimited)
        self._seen = now
        self._started: float | None = None

    def _capacity(self) -> float:
        limit = self.limit
        cfg = self.config
        return cfg.burst_min if limit is None else max(cfg.burst_min, limit * cfg.burst)

    # --- asking and spending ------------------------------------------------------------

    def delay(self, now: float) -> float:
        """Seconds until a send may go (0: now)."""
        wait = self._paused_until - now
        limit = self.limit
        if limit is not None:
            tokens = self._tokens
            if now > self._last:
                tokens = min(self._capacity(), tokens + (now - self._last) * limit)
            if tokens < 1.0:
                wait = max(wait, (1.0 - tokens) / limit)
        return wait if wait > 0 else 0.0

    def take(self, now: float) -> None:
        """A send went at ``now`` (spends a token; grows the rate while it is used up)."""
        limit = self.limit
        if limit is None:
            self._count(now)
            return
        elapsed = now - self._last
        if elapsed > 0:
            capacity = self._capacity()
            raw = self._tokens + elapsed * limit
            if raw < capacity + 1.0 and self._peak > 0:
                # Under one token overflowed the bucket since the last send: the rate holds
                # the sender back (a sender that wants less lets tokens overflow), so probe
                # upward, in proportion to the time. A late wake-up (a busy loop) still
                # counts, as long as it is less than ``burst`` late.
                ceiling = self.config.ceiling
                step = self.config.increase * max(self._peak, limit)
                grown = limit + step * elapsed
                limit = self.limit = grown if ceiling is None else min(ceiling, grown)
                capacity = self._capacity()
            self._tokens = min(capacity, raw)
            self._last = now
        self._tokens -= 1.0  # may go below 0: a send forced past the bucket is paid back

    def _count(self, now: float) -> None:
        if self._started is None:
            self._started = now
        if now > self._seen:
            self._level *= math.exp((self._seen - now) / self.config.window)
            self._seen = now
        self._level += 1.0

    def measured(self, now: float) -> float:
        """Sends per second over roughly the last ``window`` seconds (counted only while
        there is no limit; a decaying average, corrected while it is younger than that)."""
        started = self._started
        if started is None:
            return 0.0
        window = self.config.window
        level = self._level
        if now > self._seen:
            level *= math.exp((self._seen - now) / window)
        # Counting for ``age`` seconds at a steady r gives r * window * (1 - e^(-age/window)).
        age = max(now - started, 0.001)
        return level / (window * -math.expm1(-age / window))

    # --- throttles ----------------------------------------------------------------------

    def throttled(self, now: float, sent_at: float) -> bool:
        """The carrier throttled a submit sent at ``sent_at``: cut the rate (or pause at
        the floor). False when the submit left before the last cut (already answered)."""
        if sent_at <= self._cut_at:
            return False
        cfg = self.config
        limit = self.limit
        base = self.measured(now) if limit is None else limit
        new = base * cfg.decrease
        if new <= cfg.min_rate:
            # At the floor: hold back for a while rather than go below it.
            new = cfg.min_rate
            self._paused_until = now + cfg.pause
        if cfg.ceiling is not None:
            new = min(new, cfg.ceiling)
        self._peak = max(base, cfg.min_rate)
        self._refill(now)
        self.limit = new
        self._tokens = min(self._tokens, self._capacity())
        self._cut_at = now
        self.cuts += 1
        return True

    def _refill(self, now: float) -> None:
        limit = self.limit
        if limit is None:
            self._tokens = self._capacity()
        elif now > self._last:
            self._tokens = min(self._capacity(), self._tokens + (now - self._last) * limit)
        self._last = max(self._last, now)

    def paused(self, now: float) -> bool:
        """Held back at the floor after a throttle?"""
        return now < self._paused_until


__all__ = ["AdaptiveRate", "AimdConfig"]
