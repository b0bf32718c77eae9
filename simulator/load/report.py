"""Merging what the workers send into a time series and the final report.

The report is plain data (JSON-ready): ``params`` (the configuration as run), ``summary``
(every figure), ``series`` (one point per interval: rates, latency percentiles) and
``distribution`` (the merged submit→response latency histogram). ``summary`` is what the
command prints as the last line of stdout.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from simulator.load.config import LoadConfig
from simulator.load.histogram import Histogram, SparseHistogram, bucket_bounds
from simulator.load.messages import Counters, Snapshot
from simulator.load.messages import Final as FinalMsg

#: Time-series points kept at most; beyond, neighbours merge and the interval doubles.
MAX_POINTS: Final = 1200
PERCENTILES: Final = (50.0, 90.0, 99.0, 99.9)


def _pkey(q: float) -> str:
    return "p" + (f"{q:g}".replace(".", ""))


def latency_figures(hist: Histogram) -> dict[str, float | int]:
    """count, mean, the percentiles and max of ``hist``, in milliseconds."""
    out: dict[str, float | int] = {"count": hist.count}
    if not hist.count:
        return out
    out["min_ms"] = round(hist.min / 1000, 3)
    out["mean_ms"] = round(hist.mean() / 1000, 3)
    for q in PERCENTILES:
        out[_pkey(q) + "_ms"] = round(hist.percentile(q) / 1000, 3)
    out["max_ms"] = round(hist.max / 1000, 3)
    return out


def _sub(a: Counters, b: Counters) -> dict[str, Any]:
    """a - b for the counters a series point shows."""
    return {
        "messages": a.messages - b.messages,
        "submitted": a.submitted - b.submitted + a.resubmitted - b.resubmitted,
        "accepted": a.accepted - b.accepted,
        "rejected": sum(a.rejected.values()) - sum(b.rejected.values()),
        "throttled": a.throttled + a.queue_full - b.throttled - b.queue_full,
        "errors": (a.timeouts + a.lost) - (b.timeouts + b.lost),
        "receipts": a.receipts - b.receipts,
        "mo": a.mo - b.mo,
    }


class _Point:
    __slots__ = ("counts", "in_flight", "latency", "receipt", "second", "width")

    def __init__(self, second: int, width: int) -> None:
        self.second = second
        self.width = width
        self.counts: dict[str, int] = {}
        self.in_flight = 0
        self.latency = Histogram()
        self.receipt = Histogram()

    def absorb(self, other: _Point) -> None:
        for k, v in other.counts.items():
            self.counts[k] = self.counts.get(k, 0) + v
        self.in_flight = max(self.in_flight, other.in_flight)
        self.latency.merge(other.latency)
        self.receipt.merge(other.receipt)
        self.width += other.width

    def to_json(self) -> dict[str, Any]:
        point: dict[str, Any] = {"t": self.second, "seconds": self.width}
        for k, v in self.counts.items():
            point[k + "_per_s"] = round(v / self.width, 1)
        point["in_flight"] = self.in_flight
        if self.latency.count:
            for q in (50.0, 90.0, 99.0, 99.9):
                point[_pkey(q) + "_ms"] = round(self.latency.percentile(q) / 1000, 3)
            point["max_ms"] = round(self.latency.max / 1000, 3)
        if self.receipt.count:
            point["receipt_p50_ms"] = round(self.receipt.percentile(50) / 1000, 3)
            point["receipt_p99_ms"] = round(self.receipt.percentile(99) / 1000, 3)
        return point


class Aggregator:
    """Per-second snapshots of every worker → one series; Finals → the totals."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._latest: list[Counters] = [Counters() for _ in range(workers)]
        self._latest_second = [-1] * workers
        self._pending: dict[int, dict[int, Snapshot]] = {}
        self._next = 0
        self._prev = Counters()
        self.points: list[_Point] = []
        self._width = 1
        self.finals: dict[int, FinalMsg] = {}

    # --- live ------------------------------------------------------------------------------

    def add(self, snap: Snapshot) -> None:
        self._latest[snap.worker] = snap.counters
        self._latest_second[snap.worker] = snap.second
        self._pending.setdefault(snap.second, {})[snap.worker] = snap
        self._settle(final=False)

    def totals(self) -> Counters:
        """The latest cumulative counters of all workers, summed."""
        total = Counters()
        for c in self._latest:
            total.add(c)
        return total

    def last_rate(self) -> float:
        """Accepted per second in the last whole point."""
        if not self.points:
            return 0.0
        p = self.points[-1]
        return p.counts.get("submitted", 0) / p.width

    def _settle(self, *, final: bool) -> None:
        while self._pending:
            second = self._next
            got = self._pending.get(second, {})
            live = [w for w in range(self.workers) if w not in self.finals]
            if not final and any(w not in got and self._latest_second[w] < second for w in live):
                return
            self._pending.pop(second, None)
            self._next += 1
            cum = Counters()
            for w in range(self.workers):
                cum.add(got[w].counters if w in got else self._carry(w, second))
            point = _Point(second, 1)
            point.counts = _sub(cum, self._prev)
            point.in_flight = cum.in_flight
            for snap in got.values():
                point.latency.merge(Histogram.from_sparse(snap.latency))
                point.receipt.merge(Histogram.from_sparse(snap.receipt_latency))
            self._prev = cum
            self._append(point)
            if final and not self._pending:
                return

    def _carry(self, worker: int, second: int) -> Counters:
        # A worker that already ended (or skipped a second) counts with its latest figures.
        return self._latest[worker]

    def _append(self, point: _Point) -> None:
        points = self.points
        if points and points[-1].width < self._width:
            points[-1].absorb(point)
        else:
            points.append(point)
        if len(points) > MAX_POINTS:
            merged = []
            for i in range(0, len(points), 2):
                p = points[i]
                if i + 1 < len(points):
                    p.absorb(points[i + 1])
                merged.append(p)
            self.points = merged
            self._width *= 2

    # --- the end ---------------------------------------------------------------------------

    def add_final(self, final: FinalMsg) -> None:
        self.finals[final.worker] = final
        self._latest[final.worker] = final.counters

    def report(
        self,
        config: LoadConfig,
        *,
        workers: int,
        elapsed: float,
        interrupted: bool,
        error: str | None = None,
    ) -> dict[str, Any]:
        self._settle(final=True)
        counters = Counters()
        latency, service, receipt, lag = Histogram(), Histogram(), Histogram(), Histogram()
        sending = 0.0
        for final in self.finals.values():
            counters.add(final.counters)
            latency.merge(Histogram.from_sparse(final.latency))
            service.merge(Histogram.from_sparse(final.service))
            receipt.merge(Histogram.from_sparse(final.receipt_latency))
            lag.merge(Histogram.from_sparse(final.send_lag))
            sending = max(sending, final.sending_seconds)
        summary = build_summary(
            config,
            counters,
            latency=latency,
            service=service,
            receipt=receipt,
            send_lag=lag,
            sending=sending,
            elapsed=elapsed,
            workers=workers,
            interrupted=interrupted,
            complete=len(self.finals) == self.workers,
            points=self.points,
        )
        if error:
            summary["error"] = error
        return {
            "tool": "smsc load",
            "params": msgspec.to_builtins(config),
            "summary": summary,
            "series": [p.to_json() for p in self.points],
            "distribution": distribution(latency.to_sparse()),
            "receipt_distribution": distribution(receipt.to_sparse()),
        }


def distribution(sparse: SparseHistogram) -> list[list[float]]:
    """[low_ms, high_ms, count] per non-empty bucket, in order."""
    out = []
    for index in sorted(sparse.buckets):
        low, high = bucket_bounds(index)
        out.append([low / 1000, (high + 1) / 1000, sparse.buckets[index]])
    return out


def status_name(status: int) -> str:
    from smppcore.constants import CommandStatus

    try:
        return CommandStatus(status).name
    except ValueError:
        return f"0x{status:08X}"


def build_summary(
    config: LoadConfig,
    c: Counters,
    *,
    latency: Histogram,
    service: Histogram,
    receipt: Histogram,
    send_lag: Histogram,
    sending: float,
    elapsed: float,
    workers: int,
    interrupted: bool,
    complete: bool,
    points: list[_Point],
) -> dict[str, Any]:
    rejected = sum(c.rejected.values())
    span = sending if sending > 0 else elapsed
    per_s = [p.counts.get("accepted", 0) / p.width for p in points]
    open_loop = config.load.rate is not None
    summary: dict[str, Any] = {
        "interrupted": interrupted,
        "complete": complete,
        "target": f"{config.target.host}:{config.target.port}",
        "mode": "open-loop" if open_loop else "closed-loop",
        "target_rate": config.load.rate,
        "workers": workers,
        "binds": config.binds.count,
        "bind_type": config.binds.type,
        "window": config.binds.window,
        "elapsed_s": round(elapsed, 3),
        "sending_s": round(sending, 3),
        "messages": c.messages,
        "submitted": c.submitted,
        "resubmitted": c.resubmitted,
        "accepted": c.accepted,
        "rejected": rejected,
        "rejected_by_status": {status_name(k): v for k, v in sorted(c.rejected.items())},
        "throttled": c.throttled,
        "queue_full": c.queue_full,
        "retried": c.retried,
        "timeouts": c.timeouts,
        "lost": c.lost,
        "abandoned": c.abandoned,
        "unsent": c.unsent,
        "unmatched_responses": c.unmatched_responses,
        "msgs_per_s": round(c.messages / span, 1) if span else 0.0,
        "submits_per_s": round((c.submitted + c.resubmitted) / span, 1) if span else 0.0,
        "accepted_per_s": round(c.accepted / span, 1) if span else 0.0,
        "peak_accepted_per_s": round(max(per_s), 1) if per_s else 0.0,
        "latency": latency_figures(latency),
        "receipts": {
            "requested": config.traffic.registered_delivery,
            "received": c.receipts,
            "by_state": dict(sorted(c.receipt_states.items())),
            "intermediate": c.intermediate,
            "missing": c.receipts_missing,
            "late": c.receipts_late,
            "unmatched": c.receipts_unmatched,
            "pending_at_stop": c.receipts_pending,
            "untracked": c.receipts_untracked,
            "grace_s": config.receipts.grace,
            "latency": latency_figures(receipt),
        },
        "mo": c.mo,
        "connections": {
            "binds": c.binds,
            "bind_failures": {status_name(k): v for k, v in sorted(c.bind_failures.items())},
            "connect_failures": c.connect_failures,
            "drops": c.drops,
            "reconnects": c.reconnects,
            "unbinds_by_peer": c.unbinds_by_peer,
            "enquire_links_received": c.enquire_links_received,
            "enquire_links_sent": c.enquire_links_sent,
            "protocol_errors": c.protocol_errors,
        },
    }
    if open_loop:
        summary["service_time"] = latency_figures(service)
        summary["send_lag"] = latency_figures(send_lag)
    return summary
