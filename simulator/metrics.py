"""The simulator's Prometheus metrics (prefix ``smsc_carrier_``).

Counting on the hot path is a dict increment; the registry reads the counts at scrape
time through a collector, so a busy simulator pays nothing for idle metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from smppcore.constants import command_name, status_name


class CarrierMetrics(Collector):
    """Counters the carrier bumps; gauges read from callables when scraped."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        #: (command_id, command_status) of every PDU received -> count.
        self.pdus_in: Counter[tuple[int, int]] = Counter()
        #: (command_id, command_status) of every PDU we answered or sent -> count.
        self.pdus_out: Counter[tuple[int, int]] = Counter()
        #: (system_id, bind_type, status) of bind attempts -> count.
        self.binds: Counter[tuple[str, str, int]] = Counter()
        #: stat word of every receipt sent -> count.
        self.receipts: Counter[str] = Counter()
        self.mo_sent = 0
        self.held_dropped = 0
        self._gauges: dict[
            str, tuple[str, Callable[[], dict[tuple[str, ...], float]], tuple[str, ...]]
        ] = {}
        if registry is not None:
            registry.register(self)

    def gauge(
        self,
        name: str,
        documentation: str,
        labels: tuple[str, ...],
        read: Callable[[], dict[tuple[str, ...], float]],
    ) -> None:
        """Expose ``read()`` (label values -> value) as a gauge read at scrape time."""
        self._gauges[name] = (documentation, read, labels)

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        for direction, counts in (("in", self.pdus_in), ("out", self.pdus_out)):
            fam = CounterMetricFamily(
                f"smsc_carrier_pdus_{direction}",
                f"PDUs {'received' if direction == 'in' else 'sent'}, by command and status",
                labels=["command", "status"],
            )
            for (cid, status), n in sorted(counts.items()):
                fam.add_metric([command_name(cid), status_name(status)], n)
            yield fam
        binds = CounterMetricFamily(
            "smsc_carrier_binds",
            "Bind attempts by account, bind type and result",
            labels=["account", "bind_type", "status"],
        )
        for (acct, kind, status), n in sorted(self.binds.items()):
            binds.add_metric([acct, kind, status_name(status)], n)
        yield binds
        receipts = CounterMetricFamily(
            "smsc_carrier_receipts", "Delivery receipts sent, by state", labels=["state"]
        )
        for word, n in sorted(self.receipts.items()):
            receipts.add_metric([word], n)
        yield receipts
        yield CounterMetricFamily("smsc_carrier_mo", "MO messages sent", value=self.mo_sent)
        yield CounterMetricFamily(
            "smsc_carrier_held_dropped",
            "Held receipts/MO dropped (bound or expiry)",
            value=self.held_dropped,
        )
        for name, (doc, read, labels) in self._gauges.items():
            fam_g = GaugeMetricFamily(name, doc, labels=list(labels))
            for values, v in read().items():
                fam_g.add_metric(list(values), v)
            yield fam_g
