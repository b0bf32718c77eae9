"""smsc's Prometheus metrics (prefix ``smsc_``), read from plain counters at scrape time.

Counting on the hot path is a dict increment in the component that counts; this
collector turns the counts into metric families only when Prometheus scrapes. Labels
come from config or enums (account, carrier, command, status), never ids or numbers.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from router.router import Router
from smppcore.constants import command_name, status_name
from smsc.delivery import Delivery
from smsc.server import Server


class SmscCollector(Collector):
    def __init__(self, server: Server, router: Router, delivery: Delivery) -> None:
        self.server = server
        self.router = router
        self.delivery = delivery

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        pdus = CounterMetricFamily(
            "smsc_pdus",
            "ESME requests answered, by command and status",
            labels=["command", "status"],
        )
        for (cid, status), n in sorted(self.server.metrics.pdus.items()):
            pdus.add_metric([command_name(cid), status_name(status)], n)
        yield pdus
        binds = CounterMetricFamily(
            "smsc_binds",
            "Bind attempts by account, type and result",
            labels=["account", "bind_type", "status"],
        )
        for (acct, kind, status), n in sorted(self.server.metrics.binds.items()):
            binds.add_metric([acct, kind, status_name(status)], n)
        yield binds
        sessions = GaugeMetricFamily("smsc_sessions", "Bound ESME sessions", labels=["account"])
        for name, state in sorted(self.server.accounts.items()):
            sessions.add_metric([name], len(state.sessions))
        yield sessions
        router = self.router
        queue = GaugeMetricFamily("smsc_queue_depth", "Messages waiting", labels=["kind"])
        queue.add_metric(["ready"], router.queue.ready_count)
        queue.add_metric(["scheduled"], router.queue.scheduled_count)
        yield queue
        in_flight = GaugeMetricFamily(
            "smsc_carrier_in_flight", "Submits awaiting a carrier's answer", labels=["carrier"]
        )
        bound = GaugeMetricFamily("smsc_carrier_binds", "Bound carrier binds", labels=["carrier"])
        for name, pool in sorted(router.pools.items()):
            in_flight.add_metric([name], pool.in_flight)
            bound.add_metric([name], pool.bound)
        yield in_flight
        yield bound
        outcomes = CounterMetricFamily(
            "smsc_route_events", "Routing outcomes by kind and carrier", labels=["event", "carrier"]
        )
        receipts = CounterMetricFamily(
            "smsc_carrier_receipts", "Receipts from carriers by state", labels=["carrier", "state"]
        )
        for key, n in sorted(router.counters.items()):
            parts = key.split(":")
            if parts[0] == "receipt" and len(parts) == 3:
                receipts.add_metric([parts[1], parts[2]], n)
            else:
                outcomes.add_metric([parts[0], parts[1] if len(parts) > 1 else ""], n)
        yield outcomes
        yield receipts
        yield CounterMetricFamily(
            "smsc_deliveries",
            "deliver_sm (receipts, MO) accepted by clients",
            value=self.delivery.sent,
        )
        yield CounterMetricFamily(
            "smsc_deliveries_held",
            "deliver_sm held for an offline account",
            value=self.delivery.held,
        )
