"""Live health of one upstream carrier, from the outcomes the dispatcher records.

Pure: every method takes ``now`` (the caller's clock, in seconds); nothing here sleeps or reads
a clock, so tests drive time by hand.

Rates and latency are time-decayed averages: every sum is multiplied by
``0.5 ** (elapsed / window_seconds)`` before a new sample is added, so a sample's weight halves
every ``HealthConfig.window_seconds`` (the half-life). The decayed weight of the samples is the
effective sample count; below ``min_samples`` a measure is not trusted and the carrier is
assumed healthy on it (a carrier with no data yet is healthy).

What each submit outcome means (``record_submit``):

=============  ===========================================  ============  =================
kind           example                                      acceptance    circuit breaker
=============  ===========================================  ============  =================
``accepted``   submit_sm_resp ESME_ROK                      success       success
``rejected``   permanent reject (ESME_RINVDSTADR ...)       failure       success: the
                                                                          carrier answered
``throttled``  ESME_RTHROTTLED, ESME_RMSGQFUL               not counted   neither: the
                                                                          carrier answered
``temporary``  ESME_RSYSERR and other temporary errors      failure       failure
``failed``     response timeout, bind dropped               failure       failure
=============  ===========================================  ============  =================

A throttle says the carrier is up and wants less: the adaptive rate (router/aimd.py) slows
down for it, so it neither lowers the acceptance rate nor moves the breaker (in a closed
breaker it does not reset the failure count either; as a half-open trial's answer it closes
the breaker). Only its latency counts.

Circuit breaker: ``breaker_failures`` consecutive breaker failures open it for
``breaker_open`` seconds. Then it is half-open: :meth:`CarrierHealth.try_acquire_trial`
grants ONE trial submit; its success closes the breaker, its failure re-opens it for another
``breaker_open`` seconds. Outcomes recorded while the breaker is open (late answers to submits
sent before it opened) count in the rates but do not move the breaker. A trial whose outcome
never comes is forgotten after ``breaker_open`` seconds and another trial is granted, so the
breaker cannot stick half-open.

``on_breaker`` (optional) is called with the carrier's name and the new state whenever an
outcome moves the breaker (it opens, or a trial closes or re-opens it), so that whoever holds
messages back for the carrier can act; the move from open to half-open happens with time
alone: :meth:`CarrierHealth.trial_at` says when.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import msgspec

from router.config import HealthConfig
from smppcore.constants import CommandStatus

SubmitKind = Literal["accepted", "rejected", "throttled", "temporary", "failed"]
BreakerState = Literal["closed", "open", "half_open"]

MIN_SAMPLES = 10.0
"""Effective (decayed) samples below which a rate or the latency is not judged."""

NO_DATA_SCORE = 0.5 * 0.5 / 1.5
"""The score of a carrier with no data yet (see :attr:`HealthView.score`)."""

_BREAKER_FAILURE = frozenset({"temporary", "failed"})
_KINDS = frozenset({"accepted", "rejected", "throttled", "temporary", "failed"})
_THROTTLES = frozenset({int(CommandStatus.ESME_RTHROTTLED), int(CommandStatus.ESME_RMSGQFUL)})


def rejected_kind(status: int) -> SubmitKind:
    """The kind of a temporary rejection with command status ``status``: ``throttled`` for
    ESME_RTHROTTLED and ESME_RMSGQFUL, ``temporary`` otherwise."""
    return "throttled" if status in _THROTTLES else "temporary"


class HealthView(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One carrier's health at one instant: what routing reads.

    The defaults describe a bound carrier with no data yet (available and healthy).
    """

    carrier: str
    binds: int = 1
    """Binds up that can submit."""
    acceptance: float | None = None
    """Share of submits accepted (decayed); None before any submit outcome."""
    delivery: float | None = None
    """Share of receipts DELIVRD (decayed); None before any receipt."""
    latency: float | None = None
    """Average submit_sm_resp latency in seconds (decayed); None before any."""
    submits: float = 0.0
    """Effective (decayed) number of submit outcomes behind ``acceptance`` and ``latency``."""
    receipts: float = 0.0
    """Effective (decayed) number of receipts behind ``delivery``."""
    breaker: BreakerState = "closed"
    available: bool = True
    """Bound, and the breaker lets a submit through (closed, or half-open with the trial free)."""
    healthy: bool = True
    """Meets the HealthConfig thresholds (measures with too few samples are not judged)."""
    score: float = NO_DATA_SCORE
    """Tie-break between equal prices, higher is better, 0..1: smoothed acceptance × smoothed
    delivery / (1 + smoothed latency / max_latency). No data scores 0.5 × 0.5 / 1.5, below
    a proven carrier."""
    reasons: tuple[str, ...] = ()
    """Why the carrier is unavailable or unhealthy, for explanations."""


class HealthSums(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """A carrier's decayed sums as one node has seen them at ``at`` (wall clock): what the
    nodes of a cluster share so that each routes on what all of them have seen."""

    at: float
    acc_n: float = 0.0
    acc_w: float = 0.0
    lat_sum: float = 0.0
    lat_w: float = 0.0
    dlv_n: float = 0.0
    dlv_w: float = 0.0

    def plus(self, other: HealthSums, half_life: float) -> HealthSums:
        """Both together, at the later of the two instants (the earlier one decayed)."""
        a, b = (self, other) if self.at >= other.at else (other, self)
        f = 0.5 ** ((a.at - b.at) / half_life)
        return HealthSums(
            at=a.at,
            acc_n=a.acc_n + b.acc_n * f,
            acc_w=a.acc_w + b.acc_w * f,
            lat_sum=a.lat_sum + b.lat_sum * f,
            lat_w=a.lat_w + b.lat_w * f,
            dlv_n=a.dlv_n + b.dlv_n * f,
            dlv_w=a.dlv_w + b.dlv_w * f,
        )


class CarrierHealth:
    """Decayed acceptance, delivery and latency, bind count and circuit breaker of a carrier.

    In a cluster, :meth:`set_peers` adds what the other nodes have seen of the carrier
    (their :meth:`sums`) to the rates and latency; the breaker and binds stay this node's.
    """

    __slots__ = (
        "_acc_n",
        "_acc_w",
        "_binds",
        "_consecutive",
        "_dlv_n",
        "_dlv_w",
        "_half_life",
        "_last",
        "_lat_sum",
        "_lat_w",
        "_on_breaker",
        "_opened_at",
        "_peers",
        "_state",
        "_trial_at",
        "config",
        "min_samples",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: HealthConfig,
        now: float,
        *,
        min_samples: float = MIN_SAMPLES,
        on_breaker: Callable[[str, BreakerState], None] | None = None,
    ) -> None:
        self.name = name
        self._on_breaker = on_breaker
        self.config = config
        self.min_samples = min_samples
        self._half_life = config.window_seconds
        self._last = now
        self._acc_n = 0.0  # decayed accepted submits
        self._acc_w = 0.0  # decayed submit outcomes
        self._lat_sum = 0.0
        self._lat_w = 0.0
        self._dlv_n = 0.0
        self._dlv_w = 0.0
        self._binds = 0
        self._state: BreakerState = "closed"
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_at: float | None = None  # half-open: when the trial was granted
        #: What the other nodes of a cluster have seen (decayed with this node's sums).
        self._peers = HealthSums(at=now)

    # -- decay ---------------------------------------------------------------------------

    def _decay(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed <= 0:  # the same instant, or a wall clock stepping back: no decay
            return
        self._last = now
        f = 0.5 ** (elapsed / self._half_life)
        self._acc_n *= f
        self._acc_w *= f
        self._lat_sum *= f
        self._lat_w *= f
        self._dlv_n *= f
        self._dlv_w *= f

    # -- the cluster -----------------------------------------------------------------------

    def sums(self, now: float) -> HealthSums:
        """This node's own decayed sums at ``now`` (not the peers'), to share."""
        self._decay(now)
        return HealthSums(
            at=now,
            acc_n=self._acc_n,
            acc_w=self._acc_w,
            lat_sum=self._lat_sum,
            lat_w=self._lat_w,
            dlv_n=self._dlv_n,
            dlv_w=self._dlv_w,
        )

    def set_peers(self, peers: HealthSums) -> None:
        """What the other nodes have seen (their sums together), replacing the last."""
        self._peers = peers

    # -- breaker ---------------------------------------------------------------------------

    def _breaker(self, now: float) -> BreakerState:
        """The breaker's state at ``now``, moving open → half-open once the wait is over."""
        if self._state == "open" and now >= self._opened_at + self.config.breaker_open:
            self._state = "half_open"
            self._trial_at = None
        elif (
            self._state == "half_open"
            and self._trial_at is not None
            and now >= self._trial_at + self.config.breaker_open
        ):
            self._trial_at = None  # the trial's outcome never came: allow another
        return self._state

    def _open(self, now: float) -> None:
        self._state = "open"
        self._opened_at = now
        self._trial_at = None
        self._consecutive = 0

    def trial_at(self, now: float) -> float | None:
        """When the breaker next lets a submit through, if it holds them back at ``now``
        (open, or half-open with its trial in flight); None when it lets one through now."""
        state = self._breaker(now)
        if state == "open":
            return self._opened_at + self.config.breaker_open
        if state == "half_open" and self._trial_at is not None:
            return self._trial_at + self.config.breaker_open
        return None

    def try_acquire_trial(self, now: float) -> bool:
        """May one submit go to this carrier now, as far as the breaker is concerned?

        True whenever the breaker is closed. Half-open: True once (the trial), then False
        until the trial's outcome is recorded. Open: False. Call it right before submitting.
        """
        state = self._breaker(now)
        if state == "closed":
            return True
        if state == "half_open" and self._trial_at is None:
            self._trial_at = now
            return True
        return False

    # -- events ----------------------------------------------------------------------------

    def record_submit(self, now: float, latency_s: float, kind: SubmitKind) -> None:
        """The outcome of one submit_sm, ``latency_s`` after it was sent (for ``failed``,
        the time waited before giving up)."""
        if kind not in _KINDS:
            raise ValueError(f"unknown submit outcome {kind!r}")
        self._decay(now)
        throttled = kind == "throttled"
        if not throttled:
            self._acc_w += 1.0
        if kind == "accepted":
            self._acc_n += 1.0
        if math.isfinite(latency_s) and latency_s >= 0:
            self._lat_sum += latency_s
            self._lat_w += 1.0
        failure = kind in _BREAKER_FAILURE
        state = self._state
        if state != "closed":  # only an open or half-open breaker moves with time
            state = self._breaker(now)
        if state == "open" or (throttled and state == "closed"):
            return
        if state == "half_open":
            if failure:
                self._open(now)
            else:
                self._state = "closed"
                self._consecutive = 0
                self._trial_at = None
            self._moved()
            return
        if not failure:
            self._consecutive = 0
            return
        self._consecutive += 1
        if self._consecutive >= self.config.breaker_failures:
            self._open(now)
            self._moved()

    def _moved(self) -> None:
        if self._on_breaker is not None:
            self._on_breaker(self.name, self._state)

    def record_receipt(self, now: float, delivered: bool) -> None:
        """A final receipt for one of our messages over this carrier: DELIVRD or not."""
        self._decay(now)
        self._dlv_w += 1.0
        if delivered:
            self._dlv_n += 1.0

    def set_binds(self, n_bound: int) -> None:
        """How many binds to this carrier are up and can submit."""
        self._binds = max(0, n_bound)

    # -- reading -----------------------------------------------------------------------------

    def view(self, now: float) -> HealthView:
        """The carrier's health at ``now`` (a frozen value for routing and explanations)."""
        self._decay(now)
        cfg = self.config
        state = self._breaker(now)
        acc_n, acc_w, dlv_n, dlv_w = self._acc_n, self._acc_w, self._dlv_n, self._dlv_w
        lat_sum, lat_w = self._lat_sum, self._lat_w
        peers = self._peers
        if peers.acc_w or peers.dlv_w or peers.lat_w:  # a cluster: what the others saw
            f = 0.5 ** (max(0.0, now - peers.at) / self._half_life)
            acc_n, acc_w = acc_n + peers.acc_n * f, acc_w + peers.acc_w * f
            dlv_n, dlv_w = dlv_n + peers.dlv_n * f, dlv_w + peers.dlv_w * f
            lat_sum, lat_w = lat_sum + peers.lat_sum * f, lat_w + peers.lat_w * f
        acceptance = acc_n / acc_w if acc_w > 0 else None
        delivery = dlv_n / dlv_w if dlv_w > 0 else None
        latency = lat_sum / lat_w if lat_w > 0 else None

        reasons: list[str] = []
        if self._binds <= 0:
            reasons.append("no bind up")
        if state == "open":
            left = self._opened_at + cfg.breaker_open - now
            reasons.append(f"breaker open ({left:.1f}s left)")
        elif state == "half_open" and self._trial_at is not None:
            reasons.append("breaker half-open, trial in flight")
        available = not reasons

        healthy = True
        enough = self.min_samples
        if acceptance is not None and acc_w >= enough and acceptance < cfg.min_acceptance:
            healthy = False
            reasons.append(f"acceptance {acceptance:.2f} < {cfg.min_acceptance:.2f}")
        if delivery is not None and dlv_w >= enough and delivery < cfg.min_delivery:
            healthy = False
            reasons.append(f"delivery {delivery:.2f} < {cfg.min_delivery:.2f}")
        if latency is not None and lat_w >= enough and latency > cfg.max_latency:
            healthy = False
            reasons.append(f"latency {latency:.2f}s > {cfg.max_latency:.2f}s")

        # Laplace-smoothed rates (one success and one failure assumed) and a latency smoothed
        # with one sample at half the limit, so little data scores between bad and proven.
        acc_s = (acc_n + 1.0) / (acc_w + 2.0)
        dlv_s = (dlv_n + 1.0) / (dlv_w + 2.0)
        lat_s = (lat_sum + cfg.max_latency / 2) / (lat_w + 1.0)
        score = acc_s * dlv_s / (1.0 + lat_s / cfg.max_latency)

        return HealthView(
            carrier=self.name,
            binds=self._binds,
            acceptance=acceptance,
            delivery=delivery,
            latency=latency,
            submits=acc_w,
            receipts=dlv_w,
            breaker=state,
            available=available,
            healthy=healthy,
            score=score,
            reasons=tuple(reasons),
        )
