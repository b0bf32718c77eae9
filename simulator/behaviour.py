"""A profile made executable: what the carrier does with each submit, drawn from a seeded
generator so that a run repeats. No I/O and no clock: callers pass what is needed."""

from __future__ import annotations

import math
import random
import uuid
from bisect import bisect_right

import msgspec

from simulator.config import Dist, Profile, Rule, status_value
from smppcore.constants import CommandStatus, MessageState
from smppcore.receipt import state_from_word

_Z99 = 2.3263478740408408  # standard normal quantile of 0.99


class Decision(msgspec.Struct, frozen=True, gc=False):
    """The fate of one submitted message (delays in seconds)."""

    status: int
    latency: float
    state: MessageState = MessageState.DELIVERED
    error: int = 0
    receipt_delay: float = 0.0


class Behaviour:
    """Draws decisions for one account's traffic from its profile."""

    def __init__(self, profile: Profile, rng: random.Random | None = None) -> None:
        self.profile = profile
        self.rng = rng or random.Random(profile.seed)
        words = list(profile.states)
        self._states = [state_from_word(w) for w in words]
        self._cum_weights = _cumulative([profile.states[w] for w in words])
        self._errors = {state_from_word(w): code for w, code in profile.errors.items()}
        self._submit_errors = [(status_value(n), p) for n, p in profile.submit_errors.items()]
        self._needs_text = any(r.match.text_contains for r in profile.rules)
        # With fixed delays, no rules and no submit errors a decision depends only on the
        # drawn state: one Decision per state, made once (the draw itself is kept, so the
        # generator's sequence is the same as drawing everything).
        self._static: list[Decision] | None = None
        if (
            not profile.rules
            and not self._submit_errors
            and profile.submit_latency.kind == "fixed"
            and profile.receipt_delay.kind == "fixed"
        ):
            latency = self.draw(profile.submit_latency)
            delay = self.draw(profile.receipt_delay)
            self._static = [
                Decision(
                    CommandStatus.ESME_ROK,
                    latency,
                    state,
                    0 if state == MessageState.DELIVERED else self._errors.get(state, 0),
                    delay,
                )
                for state in self._states
            ]

    def error_for(self, state: MessageState) -> int:
        """The err: code the profile reports with a final ``state``."""
        return self._errors.get(state, 0)

    @property
    def needs_text(self) -> bool:
        """True when a rule looks at the message text (decode it only then)."""
        return self._needs_text

    def draw(self, dist: Dist) -> float:
        """One delay from ``dist``, in seconds."""
        rng = self.rng
        kind = dist.kind
        if kind == "fixed":
            ms = dist.ms
        elif kind == "uniform":
            ms = rng.uniform(dist.low, dist.high)
        elif kind == "normal":
            ms = rng.gauss(dist.mean, dist.stddev)
        elif kind == "exponential":
            ms = rng.expovariate(1.0 / dist.mean) if dist.mean > 0 else 0.0
        else:
            mu = math.log(dist.median)
            sigma = (math.log(dist.p99) - mu) / _Z99
            ms = rng.lognormvariate(mu, sigma)
        if dist.max is not None and ms > dist.max:
            ms = dist.max
        return ms / 1000.0 if ms > 0 else 0.0

    def decide(self, source: str, destination: str, text: str = "") -> Decision:
        """Decide a submit to ``destination``: refused, or accepted with a final state."""
        static = self._static
        if static is not None:
            return static[_pick(self._cum_weights, self.rng.random())]
        profile = self.profile
        latency = self.draw(profile.submit_latency)
        rule = self._rule(source, destination, text) if profile.rules else None
        if rule is not None and rule.submit_status is not None:
            return Decision(status_value(rule.submit_status), latency)
        if self._submit_errors:
            r = self.rng.random()
            for status, p in self._submit_errors:
                if r < p:
                    return Decision(status, latency)
                r -= p
        if rule is not None and rule.state is not None:
            state = state_from_word(rule.state)
            error = rule.error if rule.error is not None else self._errors.get(state, 0)
        else:
            state = self._states[_pick(self._cum_weights, self.rng.random())]
            error = self._errors.get(state, 0)
        if state == MessageState.DELIVERED:
            error = 0 if rule is None or rule.error is None else error
        delay_dist = rule.receipt_delay if rule and rule.receipt_delay else profile.receipt_delay
        return Decision(CommandStatus.ESME_ROK, latency, state, error, self.draw(delay_dist))

    def _rule(self, source: str, destination: str, text: str) -> Rule | None:
        for rule in self.profile.rules:
            m = rule.match
            if m.destination_prefix is not None and not destination.startswith(
                m.destination_prefix
            ):
                continue
            if m.source_prefix is not None and not source.startswith(m.source_prefix):
                continue
            if m.source is not None and source != m.source:
                continue
            if m.text_contains is not None and m.text_contains.lower() not in text.lower():
                continue
            return rule
        return None


def _cumulative(weights: list[float]) -> list[float]:
    total = sum(weights)
    acc = 0.0
    out = []
    for w in weights:
        acc += w / total
        out.append(acc)
    out[-1] = 1.0
    return out


def _pick(cum: list[float], r: float) -> int:
    """The first index whose cumulative weight exceeds ``r`` (the last one at worst)."""
    i = bisect_right(cum, r)
    return i if i < len(cum) else len(cum) - 1


_HEX3 = tuple(f"{n:03X}" for n in range(0x1000))


class MessageIds:
    """Unique message ids in the profile's format (decimal, hex or uuid-like)."""

    def __init__(self, style: str, rng: random.Random) -> None:
        self.style = style
        self._rng = rng
        # Start from the OS's randomness, not the seeded generator: a client that outlives
        # a simulator restart must not see an id again (decisions stay seeded).
        self._system = random.SystemRandom()
        self._next = self._system.getrandbits(36) + 1
        self._hex = style == "hex"
        self._high = -1
        self._high_text = ""

    def next(self) -> str:
        n = self._next
        self._next = n + 1
        if self._hex:
            # The digits above the last three change once per 4096 ids: keep them.
            high = n >> 12
            if high != self._high:
                self._high = high
                self._high_text = f"{high:X}"
            return self._high_text + _HEX3[n & 0xFFF] if high else f"{n:X}"
        if self.style == "decimal":
            return str(n)
        return str(uuid.UUID(int=self._system.getrandbits(128), version=4))
