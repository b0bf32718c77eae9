"""smsc's Prometheus metrics (prefix ``smsc_``), read from plain counters at scrape time.

Counting on the hot path is a dict increment in the component that counts; this
collector turns the counts into metric families only when Prometheus scrapes. Labels
come from config or enums (account, carrier, command, status), never ids or numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from router.metrics import NO_ROUTE_REASONS, Histogram
from router.router import Router
from router.stores.sqlite import SqliteStore
from smppcore.constants import command_name, status_name
from smppcore.session import State
from smsc.delivery import Delivery
from smsc.server import Server


class SmscCollector(Collector):
    def __init__(self, server: Server, router: Router, delivery: Delivery) -> None:
        self.server = server
        self.router = router
        self.delivery = delivery

    def register(self, registry: CollectorRegistry) -> None:
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
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
        yield CounterMetricFamily(
            "smsc_connections_dropped",
            "ESME connections closed by listen.max_connections (refused, or unbound evicted)",
            value=self.server.metrics.connections_dropped,
        )
        sessions = GaugeMetricFamily(
            "smsc_sessions", "Bound ESME sessions", labels=["account", "bind_type"]
        )
        for name, state in sorted(self.server.accounts.items()):
            kinds = dict.fromkeys(_BIND_TYPES.values(), 0)
            for conn in state.sessions:
                bound_as = _BIND_TYPES.get(conn.session.state)
                if bound_as is not None:
                    kinds[bound_as] += 1
            for bind_type, n in kinds.items():
                sessions.add_metric([name, bind_type], n)
        yield sessions
        yield _histogram(
            "smsc_submit_latency_seconds",
            "ESME submit_sm/data_sm received → its response sent",
            [],
            [([], self.server.metrics.submit_latency)],
        )
        yield from self._router()
        yield from self._carriers()
        yield from self._store()
        yield CounterMetricFamily(
            "smsc_deliveries",
            "deliver_sm (receipts, MO) accepted by clients",
            value=self.delivery.sent,
        )
        held = CounterMetricFamily(
            "smsc_deliveries_held",
            "deliver_sm (receipts, MO) held for an account with no receive-capable bind",
            labels=["account"],
        )
        for account, n in sorted(self.delivery.held_by_account.items()):
            held.add_metric([account], n)
        yield held
        yield CounterMetricFamily(
            "smsc_deliveries_late",
            "deliver_sm answered after response_timeout (their held copies not sent again)",
            value=self.delivery.late,
        )
        waiting = GaugeMetricFamily(
            "smsc_deliveries_waiting",
            "deliver_sm (receipts, MO) held and not delivered yet; at the account's max_held"
            " its submits asking for a receipt are refused",
            labels=["account"],
        )
        for account, n in sorted(self.delivery.waiting_by_account.items()):
            waiting.add_metric([account], n)
        yield waiting
        dropped = CounterMetricFamily(
            "smsc_deliveries_dropped",
            "deliver_sm (receipts, MO) neither sent nor held: no receiver, and the store "
            "refused to hold them (its queue full, or the database cannot be written)",
            labels=["account"],
        )
        for account, n in sorted(self.delivery.dropped.items()):
            dropped.add_metric([account], n)
        yield dropped

    def _router(self) -> Iterator[Metric]:
        router = self.router
        metrics = router.metrics
        queue = GaugeMetricFamily("smsc_queue_depth", "Messages waiting", labels=["kind"])
        queue.add_metric(["ready"], router.queue.ready_count)
        queue.add_metric(["scheduled"], router.queue.scheduled_count)
        queue.add_metric(["parked"], router.queue.parked_count)
        queue.add_metric(["paced"], router.paced)
        yield queue
        yield GaugeMetricFamily(
            "smsc_route_pinned_long_messages",
            "Long messages whose parts are pinned to a carrier (until every part is "
            "accepted or final, or pin_idle)",
            value=len(router.dispatcher.pins),
        )
        by_priority = GaugeMetricFamily(
            "smsc_queue_ready_by_priority",
            "Messages ready to send, by priority",
            labels=["priority"],
        )
        for priority, n in enumerate(router.queue.by_priority()):
            by_priority.add_metric([str(priority)], n)
        yield by_priority
        yield GaugeMetricFamily(
            "smsc_queue_capacity", "Messages the queue holds at most", value=router.queue.max_size
        )
        decisions = CounterMetricFamily(
            "smsc_route_decisions",
            "Messages routed to a carrier (each attempt)",
            labels=["carrier"],
        )
        retries = CounterMetricFamily(
            "smsc_retries",
            "Submits a carrier failed temporarily (temporary status, no answer), retried "
            "or given up",
            labels=["carrier"],
        )
        for name, counts in sorted(metrics.carriers.items()):
            decisions.add_metric([name], counts.decisions)
            retries.add_metric([name], counts.retries)
        yield decisions
        yield retries
        no_route = CounterMetricFamily(
            "smsc_route_no_route",
            "Messages failed for want of a route, by reason",
            labels=["reason"],
        )
        for reason in NO_ROUTE_REASONS:
            no_route.add_metric([reason], metrics.no_route.get(reason, 0))
        yield no_route
        failovers = CounterMetricFamily(
            "smsc_failovers",
            "Messages sent to another carrier after one failed them",
            labels=["from_carrier", "to_carrier"],
        )
        for (source, target), n in sorted(metrics.failovers.items()):
            failovers.add_metric([source, target], n)
        yield failovers
        spills = CounterMetricFamily(
            "smsc_route_spill",
            "Messages sent to another carrier because the first choice had no capacity for "
            "them (routing.spill), by the first choice and why: window (its windows full), "
            "rate (its send rate used up), breaker (its half-open trial taken)",
            labels=["carrier", "reason"],
        )
        for (name, reason), n in sorted(metrics.spills.items()):
            spills.add_metric([name, reason], n)
        yield spills
        long_messages = CounterMetricFamily(
            "smsc_route_long_messages",
            "Long messages taken off the carrier their parts were pinned to: rerouted (it "
            "was unavailable past pin_wait, holding no part), resent (every part sent again "
            "over the next carrier), failed_all (every part failed)",
            labels=["carrier", "action"],
        )
        for (name, action), n in sorted(metrics.long_messages.items()):
            long_messages.add_metric([name, action], n)
        yield long_messages
        final = CounterMetricFamily(
            "smsc_messages", "Messages that reached a final state", labels=["account", "state"]
        )
        for (account, state), n in sorted(metrics.final.items()):
            final.add_metric([account, state], n)
        yield final
        events = CounterMetricFamily(
            "smsc_router_events",
            "Rare router events: receipt_unmatched, receipt_unreadable, receipt_duplicate, "
            "receipt_deferred (answered ESME_RX_T_APPN: too many in the store), "
            "receipt_dropped (a receipt we decided that could be neither delivered nor held), "
            "receipt_timeout (no final receipt within the carrier's receipt_timeout), "
            "receipt_store_timeout (the store did not answer in time), "
            "resent (sent again after a restart: handed to the carrier, its answer unknown), "
            "mo, mo_unrouted, mo_refused (answered ESME_RX_T_APPN: the store would not hold "
            "it), deferred (no carrier of the route available), paced (a submit waited for "
            "room), explored (sent first to a fallback to keep its delivery rate measured), "
            "receipt_withdrawn (a receipt from a carrier a long message's part was taken "
            "back from: ignored)",
            labels=["event", "carrier"],
        )
        for (event, carrier), n in sorted(metrics.events.items()):
            events.add_metric([event, carrier], n)
        yield events
        receipts = CounterMetricFamily(
            "smsc_carrier_receipts",
            "Final receipts from carriers by state",
            labels=["carrier", "state"],
        )
        for (carrier, state), n in sorted(metrics.receipts.items()):
            receipts.add_metric([carrier, state], n)
        yield receipts
        rows = sorted(metrics.carriers.items())
        yield _histogram(
            "smsc_carrier_submit_latency_seconds",
            "submit_sm sent to a carrier → its answer (or the failure)",
            ["carrier"],
            [([name], counts.submit_latency) for name, counts in rows],
        )
        yield _histogram(
            "smsc_receipt_latency_seconds",
            "submit accepted by a carrier → its final receipt received",
            ["carrier"],
            [([name], counts.receipt_latency) for name, counts in rows],
        )

    def _carriers(self) -> Iterator[Metric]:
        router = self.router
        now = router.wall()
        in_flight = GaugeMetricFamily(
            "smsc_carrier_in_flight", "Submits awaiting a carrier's answer", labels=["carrier"]
        )
        bound = GaugeMetricFamily("smsc_carrier_binds", "Bound carrier binds", labels=["carrier"])
        configured = GaugeMetricFamily(
            "smsc_carrier_binds_configured", "Carrier binds configured", labels=["carrier"]
        )
        available = GaugeMetricFamily(
            "smsc_carrier_available",
            "1 when routing may use the carrier (bound, breaker closed or trial free)",
            labels=["carrier"],
        )
        attempts = CounterMetricFamily(
            "smsc_carrier_bind_attempts",
            "Connect-and-bind attempts to carriers, by result",
            labels=["carrier", "result"],
        )
        pdus = CounterMetricFamily(
            "smsc_carrier_pdus",
            "Carrier-side PDUs: our submit_sm by the status answered, the carrier's "
            "deliver_sm by the status we answered",
            labels=["carrier", "command", "status"],
        )
        rate = GaugeMetricFamily(
            "smsc_carrier_rate_limit",
            "Submits per second the carrier may be sent now: its binds' adaptive rates, cut "
            "by ESME_RTHROTTLED / ESME_RMSGQFUL (+Inf: no limit configured or met)",
            labels=["carrier"],
        )
        cuts = CounterMetricFamily(
            "smsc_carrier_rate_cuts",
            "Throttles that cut a carrier bind's adaptive rate (or held it at the floor)",
            labels=["carrier"],
        )
        failures = CounterMetricFamily(
            "smsc_carrier_submit_failures",
            "submit_sm to a carrier that got no answer, by reason",
            labels=["carrier", "reason"],
        )
        for name, pool in sorted(router.pools.items()):
            in_flight.add_metric([name], pool.in_flight)
            bound.add_metric([name], pool.bound)
            configured.add_metric([name], pool.config.binds)
            health = router.health.get(name)
            available.add_metric([name], 1 if health and health.view(now).available else 0)
            attempts.add_metric([name, "ok"], pool.binds_made)
            attempts.add_metric([name, "failed"], pool.connect_failures)
            for (cid, status), n in sorted(pool.pdus.items()):
                pdus.add_metric([name, command_name(cid), status_name(status)], n)
            for reason in _SUBMIT_FAILURES:
                failures.add_metric([name, reason], pool.failures.get(reason, 0))
            limit = pool.rate_limit
            rate.add_metric([name], math.inf if limit is None else limit)
            cuts.add_metric([name], pool.rate_cuts)
        yield from (in_flight, bound, configured, available, attempts, pdus, failures, rate, cuts)

    def _store(self) -> Iterator[Metric]:
        store = self.router.store
        if not isinstance(store, SqliteStore):
            return
        yield _histogram(
            "smsc_store_commit_seconds",
            "One store writer transaction (a batch of records), BEGIN to COMMIT",
            [],
            [([], store.commit_seconds)],
        )
        yield CounterMetricFamily(
            "smsc_store_transactions", "Store writer transactions", value=store.transactions
        )
        yield CounterMetricFamily(
            "smsc_store_records", "Records committed by the store writer", value=store.records
        )
        yield CounterMetricFamily(
            "smsc_store_failed_records", "Records the store could not write", value=store.failed
        )
        yield CounterMetricFamily(
            "smsc_store_held_dropped",
            "Held deliveries dropped by the per-account bound",
            value=store.dropped_held,
        )
        yield GaugeMetricFamily(
            "smsc_store_queue_depth", "Records waiting for the store writer", value=store.queued
        )
        db_bytes, wal_bytes = store.file_sizes()
        size = GaugeMetricFamily(
            "smsc_store_size_bytes", "Bytes of the store's files on disk", labels=["file"]
        )
        size.add_metric(["db"], db_bytes)
        size.add_metric(["wal"], wal_bytes)
        yield size
        rows = GaugeMetricFamily("smsc_store_rows", "Rows in the store", labels=["table"])
        rows.add_metric(["messages"], store.message_rows)
        rows.add_metric(["held"], store.held_rows)
        yield rows
        yield CounterMetricFamily(
            "smsc_store_purged_messages",
            "Final messages purged from the store (older than store.keep_days)",
            value=store.purged_messages,
        )
        yield CounterMetricFamily(
            "smsc_store_held_expired",
            "Held deliveries (receipts, MO) dropped undelivered past their expiry (receipt_ttl)",
            value=store.expired_held,
        )
        yield GaugeMetricFamily(
            "smsc_store_writable",
            "1 while the store's database takes writes; 0 while it cannot (disk full, "
            "read-only, I/O errors: submits and held deliveries are refused)",
            value=0 if store.unwritable else 1,
        )
        errors = CounterMetricFamily(
            "smsc_store_write_errors",
            "Store transactions that failed because the database could not be written",
            labels=["reason"],
        )
        for reason, n in store.write_errors.items():
            errors.add_metric([reason], n)
        yield errors
        refused = CounterMetricFamily(
            "smsc_store_refused",
            "Writes the store refused (queue full, or the database cannot be written): "
            "add → submit answered ESME_RMSGQFUL, hold → deliver_sm answered ESME_RX_T_APPN",
            labels=["kind"],
        )
        refused.add_metric(["add"], store.refused_adds)
        refused.add_metric(["hold"], store.refused_holds)
        yield refused
        yield CounterMetricFamily(
            "smsc_store_read_timeouts",
            "Store reads that gave up after store.read_timeout (answered a temporary error)",
            value=store.read_timeouts,
        )


#: CarrierPool.failures reasons (listed so each series exists from the start, at 0).
_SUBMIT_FAILURES = ("timeout", "connection_lost", "error")

_BIND_TYPES = {
    State.BOUND_TX: "transmitter",
    State.BOUND_RX: "receiver",
    State.BOUND_TRX: "transceiver",
}


def _histogram(
    name: str,
    documentation: str,
    labels: list[str],
    rows: list[tuple[list[str], Histogram]],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=labels)
    for values, histogram in rows:
        family.add_metric(values, histogram.cumulative(), histogram.sum)
    return family
