"""The router's metrics as plain counts: dict increments and bucket histograms on the hot
path, turned into Prometheus families by ``smsc/metrics.py`` only when scraped.

The router does not import the Prometheus client: the exposition (names, help, label
names) lives in one place, the collector, and the per-message cost here is a dict
increment or one ``bisect`` — no lock, no label lookup. Keys are carrier names, account
names and enum words (from config and enums), never ids or numbers.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Final

from router.routing import NO_MATCH, NO_SERVICE, NOT_DIGITS

#: Seconds: submit_sm → submit_sm_resp, at our edge or at a carrier's.
SUBMIT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
#: Seconds: a carrier's acceptance → its final receipt.
RECEIPT_BUCKETS: Final = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0,
)  # fmt: skip
#: Seconds: one store transaction (BEGIN … COMMIT of a batch).
STORE_BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip

#: ``smsc_route_no_route_total`` reasons (a fixed set: routing's texts name prefixes).
NO_ROUTE_REASONS: Final = (
    "no_prefix", "bad_destination", "no_eligible_carrier", "pinned", "service_levels",
)  # fmt: skip


class Histogram:
    """Counts per bucket (``le`` upper bounds, Prometheus semantics) and their sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, observations ≤ le)`` per bucket, ``+Inf`` last (for the exposition)."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*map(repr, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out


def no_route_reason(reason: str) -> str:
    """The label word (one of :data:`NO_ROUTE_REASONS`) for a ``NoRoute`` reason text."""
    if reason == NO_MATCH:
        return "no_prefix"
    if reason == NOT_DIGITS:
        return "bad_destination"
    if reason.startswith("pinned"):
        return "pinned"
    if reason.startswith(NO_SERVICE):
        return "service_levels"
    return "no_eligible_carrier"


class CarrierCounts:
    """One carrier's counts and latency histograms."""

    __slots__ = ("decisions", "receipt_latency", "retries", "submit_latency")

    def __init__(self) -> None:
        #: messages sent to it (each attempt is a routing decision)
        self.decisions = 0
        #: submits it failed temporarily (refused with a temporary status, unanswered)
        self.retries = 0
        #: submit_sm → its answer (or the failure), seconds
        self.submit_latency = Histogram(SUBMIT_BUCKETS)
        #: its acceptance → its final receipt, seconds
        self.receipt_latency = Histogram(RECEIPT_BUCKETS)


class RouterMetrics:
    """What the router counts; ``smsc/metrics.py`` reads it at scrape time."""

    def __init__(self, carriers: Iterable[str] = ()) -> None:
        #: carrier name → its counts (carriers added at run time get theirs on first use)
        self.carriers: dict[str, CarrierCounts] = {name: CarrierCounts() for name in carriers}
        #: reason word (:data:`NO_ROUTE_REASONS`) → messages failed for want of any route.
        self.no_route: dict[str, int] = {}
        #: (from carrier, to carrier) → messages sent on after another carrier failed them.
        self.failovers: dict[tuple[str, str], int] = {}
        #: (carrier, state name) → final receipts from carriers.
        self.receipts: dict[tuple[str, str], int] = {}
        #: (account, state name) → messages that reached a final state.
        self.final: dict[tuple[str, str], int] = {}
        #: (first choice, reason: window | rate | breaker) → messages sent to another
        #: carrier because the first choice had no capacity for them (routing.spill).
        self.spills: dict[tuple[str, str], int] = {}
        #: (carrier, action: rerouted | resent | failed_all) → long messages moved off a
        #: pinned carrier (unavailable, holding no part), sent again over the next one, or
        #: failed part by part (router/pins.py).
        self.long_messages: dict[tuple[str, str], int] = {}
        #: (event, carrier or "") → rare events: receipt_unmatched, receipt_unreadable,
        #: receipt_duplicate, receipt_deferred, receipt_timeout, resent, mo, mo_unrouted,
        #: deferred, explored, receipt_withdrawn.
        self.events: dict[tuple[str, str], int] = {}

    def carrier(self, name: str) -> CarrierCounts:
        counts = self.carriers.get(name)
        if counts is None:
            counts = self.carriers[name] = CarrierCounts()
        return counts

    def event(self, name: str, carrier: str = "") -> None:
        key = (name, carrier)
        self.events[key] = self.events.get(key, 0) + 1
