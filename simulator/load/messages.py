"""What the parent and its workers tell each other (msgpack over a pipe; never pickle).

The run, as the parent sees it:

1. :class:`Plan` to each worker; each binds and answers :class:`Ready` (or :class:`Fatal`).
2. :class:`Go` with the common start time; each worker sends a :class:`Snapshot` every
   second from then on, stops sending by itself (duration, count) or on :class:`Stop`,
   waits for its submits' responses and says :class:`Drained`.
3. Receipts: the parent waits until no message awaits its receipt (or the grace period
   ends), then sends :class:`Finish`; each worker unbinds and says :class:`Closed`.
4. :class:`Report`: each worker answers with its :class:`Final` totals.

A receipt may arrive on any worker's bind, so each message id has one owner (crc32 of the
id, modulo the workers): a worker passes the ids of its accepted submits and the receipts
it receives for ids it does not own to their owner as a :class:`Relay`, which the parent
forwards unchanged. Pipes keep order, so everything relayed before a worker's
:class:`Closed` reaches its owner before :class:`Report`.
"""

from __future__ import annotations

import msgspec

from simulator.load.config import LoadConfig
from simulator.load.histogram import SparseHistogram


class Counters(msgspec.Struct, forbid_unknown_fields=True):
    """Cumulative counts of one worker (or, summed, of the run). See report.py for meanings."""

    messages: int = 0
    submitted: int = 0
    resubmitted: int = 0
    accepted: int = 0
    rejected: dict[int, int] = msgspec.field(default_factory=dict)
    throttled: int = 0
    queue_full: int = 0
    retried: int = 0
    timeouts: int = 0
    lost: int = 0
    abandoned: int = 0
    unsent: int = 0
    unmatched_responses: int = 0
    receipts: int = 0
    receipt_states: dict[str, int] = msgspec.field(default_factory=dict)
    intermediate: int = 0
    receipts_unmatched: int = 0
    receipts_late: int = 0
    receipts_missing: int = 0
    receipts_pending: int = 0
    receipts_untracked: int = 0
    mo: int = 0
    binds: int = 0
    bind_failures: dict[int, int] = msgspec.field(default_factory=dict)
    connect_failures: int = 0
    drops: int = 0
    reconnects: int = 0
    unbinds_by_peer: int = 0
    enquire_links_received: int = 0
    enquire_links_sent: int = 0
    protocol_errors: int = 0
    in_flight: int = 0
    backlog: int = 0

    def add(self, other: Counters) -> None:
        """Add ``other`` into this (gauges included: they add across workers)."""
        for name in self.__struct_fields__:
            mine = getattr(self, name)
            theirs = getattr(other, name)
            if isinstance(mine, dict):
                for key, n in theirs.items():
                    mine[key] = mine.get(key, 0) + n
            else:
                setattr(self, name, mine + theirs)

    def copy(self) -> Counters:
        return msgspec.convert(msgspec.to_builtins(self), Counters, strict=False)


class Plan(msgspec.Struct, tag="plan", forbid_unknown_fields=True):
    worker: int
    workers: int
    config: LoadConfig
    binds: int
    """Bind units (transceivers, or transmitter+receiver pairs) of this worker."""
    rate: float | None
    """This worker's share of the rate (messages/s), or None for closed loop."""
    messages: int | None
    """This worker's share of the message count."""


class Go(msgspec.Struct, tag="go", forbid_unknown_fields=True):
    t0: float
    """time.monotonic() at which sending starts (the same clock in every process)."""


class Stop(msgspec.Struct, tag="stop", forbid_unknown_fields=True):
    interrupted: bool = True


class Finish(msgspec.Struct, tag="finish", forbid_unknown_fields=True):
    """Receipts are done (or the grace period is over): unbind."""


class Report(msgspec.Struct, tag="report", forbid_unknown_fields=True):
    """Everything relayed has been forwarded: send the Final totals."""


class Relay(msgspec.Struct, tag="relay", forbid_unknown_fields=True):
    """Receipt correlation for messages that worker ``to`` owns."""

    to: int
    submits: list[tuple[str, float]]
    """(id key, intended send time) of accepted submits awaiting a receipt."""
    receipts: list[tuple[str, str, float]]
    """(id key, stat word, arrival time) of final receipts received elsewhere."""


class Ready(msgspec.Struct, tag="ready", forbid_unknown_fields=True):
    worker: int


class Fatal(msgspec.Struct, tag="fatal", forbid_unknown_fields=True):
    worker: int
    message: str


class Drained(msgspec.Struct, tag="drained", forbid_unknown_fields=True):
    """No more submits from this worker: all answered, timed out or given up."""

    worker: int
    awaiting: int
    relays_received: int


class Status(msgspec.Struct, tag="status", forbid_unknown_fields=True):
    """After Drained: the receipt figures changed (sent at most every housekeeping tick)."""

    worker: int
    awaiting: int
    relays_received: int


class Closed(msgspec.Struct, tag="closed", forbid_unknown_fields=True):
    worker: int


class Snapshot(msgspec.Struct, tag="snap", forbid_unknown_fields=True):
    """Second ``second`` of the run (0-based) is over: counters so far, latencies within it."""

    worker: int
    second: int
    counters: Counters
    latency: SparseHistogram
    service: SparseHistogram
    receipt_latency: SparseHistogram
    awaiting: int
    """Messages (owned here) still awaiting their receipt."""
    relays_received: int
    """Relay messages taken in so far (the parent compares with those it forwarded)."""


class Final(msgspec.Struct, tag="final", forbid_unknown_fields=True):
    worker: int
    counters: Counters
    latency: SparseHistogram
    service: SparseHistogram
    receipt_latency: SparseHistogram
    send_lag: SparseHistogram
    sending_seconds: float
    """From t0 to the last submit sent."""
    interrupted: bool


ToWorker = Plan | Go | Stop | Finish | Report | Relay
ToParent = Ready | Fatal | Snapshot | Drained | Status | Closed | Final | Relay

to_worker = msgspec.msgpack.Decoder(ToWorker)
to_parent = msgspec.msgpack.Decoder(ToParent)
encoder = msgspec.msgpack.Encoder()
