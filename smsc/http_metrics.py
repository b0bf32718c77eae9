"""Metrics of the application HTTP API and its webhooks (prefix ``smsc_``), read from the
components' plain counters at scrape time. Labels: account, route template, status code,
outcome — never ids, numbers or URLs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

_METHODS = frozenset({"GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS"})


class HttpCounters:
    """What the API counts on its hot path (a dict increment each)."""

    def __init__(self) -> None:
        #: (method, route template, status) → requests answered.
        self.requests: dict[tuple[str, str, int], int] = {}
        #: (account, outcome: accepted, rejected, throttled) → messages (destinations).
        self.messages: dict[tuple[str, str], int] = {}

    def request(self, method: str, route: str, status: int) -> None:
        if method not in _METHODS:
            method = "other"
        key = (method, route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def message(self, account: str, outcome: str, n: int = 1) -> None:
        key = (account, outcome)
        self.messages[key] = self.messages.get(key, 0) + n


class HttpCollector(Collector):
    def __init__(
        self,
        counters: HttpCounters,
        posts: Mapping[tuple[str, str], int],
        waiting: Callable[[], int],
        dropped: Callable[[], int],
        refused: Callable[[], int] = lambda: 0,
    ) -> None:
        self.counters = counters
        self.posts = posts
        self.waiting = waiting
        self.dropped = dropped
        self.refused = refused

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "smsc_http_requests",
            "Application API requests answered, by method, route and status",
            labels=["method", "route", "status"],
        )
        for (method, route, status), n in sorted(self.counters.requests.items()):
            requests.add_metric([method, route, str(status)], n)
        yield requests
        messages = CounterMetricFamily(
            "smsc_http_messages",
            "Messages (destinations) sent through the application API, by account and outcome",
            labels=["account", "outcome"],
        )
        for (account, outcome), n in sorted(self.counters.messages.items()):
            messages.add_metric([account, outcome], n)
        yield messages
        posts = CounterMetricFamily(
            "smsc_webhook_posts",
            "Webhook POSTs by account and outcome (delivered, retried, dead)",
            labels=["account", "outcome"],
        )
        for (account, outcome), n in sorted(self.posts.items()):
            posts.add_metric([account, outcome], n)
        yield posts
        yield GaugeMetricFamily(
            "smsc_webhook_outbox_waiting",
            "Webhook events waiting in the outbox (not dead-lettered)",
            value=self.waiting(),
        )
        yield CounterMetricFamily(
            "smsc_webhook_events_refused",
            "Webhook events refused by a full outbox, their carrier answered a temporary error",
            value=self.refused(),
        )
        yield CounterMetricFamily(
            "smsc_webhook_events_dropped",
            "Webhook events refused by a full outbox with nobody to answer a temporary error",
            value=self.dropped(),
        )
