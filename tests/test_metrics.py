"""``GET /metrics`` of a real smsc (tests/smsc_fixtures.py: App on loopback, simulated
carriers reached over SMPP): one scenario drives every path a message can take — delivered,
refused for good, failed over after a temporary refusal, undelivered, unroutable, cancelled,
a receipt held for an offline account — then the scrape is parsed and each series checked
against what happened. The Grafana dashboard in conf/grafana is checked against the same
scrape: every metric it queries must exist.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from smsc_fixtures import (
    DEADLINE,
    FAST,
    OTHER_ID,
    OTHER_PASSWORD,
    SYSTEM_ID,
    app_config,
    bind_client,
    prices,
    profile,
    running_app,
    wait_final_receipts,
)

from router.metrics import Histogram, no_route_reason
from router.routing import NO_MATCH, NOT_DIGITS
from smppcore.constants import CommandStatus
from smppcore.pdu import CancelSm, EnquireLink
from smppcore.smpptime import format_absolute

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "conf" / "grafana" / "smsc-dashboard.json"

DELIVERED = "447700900001"
TEMPORARY = "447100000001"  # cheap refuses with ESME_RSYSERR: failover to mid
PERMANENT = "447200000001"  # cheap refuses with ESME_RINVDSTADR: REJECTED
UNDELIVERED = "447900000001"  # cheap takes it, the receipt says UNDELIV
NO_PREFIX = "331234567"  # no route for 33
NOT_A_NUMBER = "44abc"  # routing refuses it

CHEAP = profile(
    rules=[
        {"match": {"destination_prefix": "4471"}, "submit_status": "ESME_RSYSERR"},
        {"match": {"destination_prefix": "4472"}, "submit_status": "ESME_RINVDSTADR"},
        {"match": {"destination_prefix": "4479"}, "state": "UNDELIV"},
    ]
)


@dataclass
class Scrape:
    text: str
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]
    types: dict[str, str]
    ids: list[str]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def names(self) -> set[str]:
        return {name for name, _ in self.samples}


def parse(text: str, ids: list[str]) -> Scrape:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, key
            samples[key] = sample.value
    return Scrape(text, samples, types, ids)


async def scenario(tmp_path: Path) -> Scrape:
    routes = [{"prefix": "44", "carriers": prices(cheap="0.001", mid="0.002")}]
    config = app_config(tmp_path, {"cheap": CHEAP, "mid": FAST}, routes)
    async with running_app(config) as app:
        esme = await bind_client(app)
        ids: list[str] = []
        # One group at a time, each to its final receipt: the carriers' health (and so
        # every routing decision) is the same at every run.
        for destination, n in (
            (DELIVERED, 3),
            (UNDELIVERED, 1),
            (PERMANENT, 1),
            (TEMPORARY, 2),
            (NO_PREFIX, 1),
            (NOT_A_NUMBER, 1),
        ):
            group = [await esme.submit_ok(destination) for _ in range(n)]
            await wait_final_receipts(esme, group)
            ids += group
        later = format_absolute(datetime.now(UTC) + timedelta(hours=1))
        scheduled = await esme.submit_ok(DELIVERED, schedule_delivery_time=later)
        resp = await esme.request(CancelSm(message_id=scheduled))
        assert resp.command_status == CommandStatus.ESME_ROK
        await wait_final_receipts(esme, [scheduled])
        ids.append(scheduled)
        # globex sends over a transmitter: its receipt is held until a receiver binds.
        globex_tx = await bind_client(app, "tx", OTHER_ID, OTHER_PASSWORD)
        held = await globex_tx.submit_ok(DELIVERED)
        await globex_tx.until_final(held)  # its receipt is held by now: no receiver yet
        globex_rx = await bind_client(app, "rx", OTHER_ID, OTHER_PASSWORD)
        await wait_final_receipts(globex_rx, [held])
        ids.append(held)
        # Its deliver_sm_resp is read before the enquire_link that follows it: the held
        # receipt's release is queued then, and committed after the flush.
        await globex_rx.request(EnquireLink())
        await app.store.flush()
        await globex_rx.close()
        url = f"http://127.0.0.1:{app.http_port}/metrics"
        async with (
            aiohttp.ClientSession() as http,
            asyncio.timeout(DEADLINE),
            http.get(url) as r,
        ):
            assert r.status == 200
            text = await r.text()
        await globex_tx.close()
        await esme.close()
    return parse(text, ids)


@pytest.fixture(scope="module")
def scrape(tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    return asyncio.run(scenario(tmp_path_factory.mktemp("metrics")))


# --- the ESME side --------------------------------------------------------------------------


def test_esme_pdus_binds_and_sessions(scrape: Scrape) -> None:
    ok = {"command": "submit_sm", "status": "ESME_ROK"}
    assert scrape.value("smsc_pdus_total", **ok) == 11
    assert scrape.value("smsc_pdus_total", command="cancel_sm", status="ESME_ROK") == 1
    for account, kind in ((SYSTEM_ID, "transceiver"), (OTHER_ID, "transmitter")):
        bind = {"account": account, "bind_type": kind, "status": "ESME_ROK"}
        assert scrape.value("smsc_binds_total", **bind) == 1
    # Still bound at the scrape: acme's transceiver and globex's transmitter.
    assert scrape.value("smsc_sessions", account=SYSTEM_ID, bind_type="transceiver") == 1
    assert scrape.value("smsc_sessions", account=SYSTEM_ID, bind_type="receiver") == 0
    assert scrape.value("smsc_sessions", account=OTHER_ID, bind_type="transmitter") == 1
    assert scrape.value("smsc_sessions", account=OTHER_ID, bind_type="receiver") == 0


def test_esme_submit_latency_histogram(scrape: Scrape) -> None:
    assert scrape.types["smsc_submit_latency_seconds"] == "histogram"
    assert scrape.value("smsc_submit_latency_seconds_count") == 11
    assert scrape.value("smsc_submit_latency_seconds_bucket", le="+Inf") == 11
    assert 0 < scrape.value("smsc_submit_latency_seconds_sum") < 11 * DEADLINE


def test_held_receipts_by_account(scrape: Scrape) -> None:
    assert scrape.value("smsc_deliveries_held_total", account=OTHER_ID) == 1
    assert ("smsc_deliveries_held_total", frozenset({("account", SYSTEM_ID)})) not in (
        scrape.samples
    )
    # Every receipt reached a client in the end: 10 to acme, 1 to globex.
    assert scrape.value("smsc_deliveries_total") == 11
    assert scrape.value("smsc_deliveries_waiting", account=OTHER_ID) == 0  # none left held
    assert scrape.value("smsc_deliveries_late_total") == 0


# --- routing --------------------------------------------------------------------------------


def test_route_decisions_retries_and_failovers(scrape: Scrape) -> None:
    # cheap: 3 delivered + 1 undelivered + 1 refused for good + 2 refused for now + globex's
    assert scrape.value("smsc_route_decisions_total", carrier="cheap") == 8
    assert scrape.value("smsc_route_decisions_total", carrier="mid") == 2
    assert scrape.value("smsc_retries_total", carrier="cheap") == 2
    assert scrape.value("smsc_retries_total", carrier="mid") == 0
    assert scrape.value("smsc_failovers_total", from_carrier="cheap", to_carrier="mid") == 2
    assert scrape.value("smsc_route_no_route_total", reason="no_prefix") == 1
    assert scrape.value("smsc_route_no_route_total", reason="bad_destination") == 1
    assert scrape.value("smsc_route_no_route_total", reason="no_eligible_carrier") == 0


def test_messages_by_final_state(scrape: Scrape) -> None:
    final = {
        "DELIVERED": 5,  # 3 + the 2 failed over
        "UNDELIVERABLE": 3,  # the UNDELIV receipt and the 2 without a route
        "REJECTED": 1,
        "DELETED": 1,
    }
    for state, n in final.items():
        assert scrape.value("smsc_messages_total", account=SYSTEM_ID, state=state) == n
    assert scrape.value("smsc_messages_total", account=OTHER_ID, state="DELIVERED") == 1
    assert scrape.value("smsc_queue_depth", kind="ready") == 0
    assert scrape.value("smsc_queue_depth", kind="scheduled") == 0
    assert scrape.value("smsc_queue_depth", kind="parked") == 0
    for priority in "0123":
        assert scrape.value("smsc_queue_ready_by_priority", priority=priority) == 0


# --- the carrier side -----------------------------------------------------------------------


def test_carrier_pdus_receipts_and_binds(scrape: Scrape) -> None:
    def pdus(carrier: str, command: str, status: str) -> float:
        return scrape.value(
            "smsc_carrier_pdus_total", carrier=carrier, command=command, status=status
        )

    assert pdus("cheap", "submit_sm", "ESME_ROK") == 5
    assert pdus("cheap", "submit_sm", "ESME_RSYSERR") == 2
    assert pdus("cheap", "submit_sm", "ESME_RINVDSTADR") == 1
    assert pdus("mid", "submit_sm", "ESME_ROK") == 2
    assert pdus("cheap", "deliver_sm", "ESME_ROK") == 5
    assert pdus("mid", "deliver_sm", "ESME_ROK") == 2
    receipts = {("cheap", "DELIVERED"): 4, ("cheap", "UNDELIVERABLE"): 1, ("mid", "DELIVERED"): 2}
    for (carrier, state), n in receipts.items():
        assert scrape.value("smsc_carrier_receipts_total", carrier=carrier, state=state) == n
    for carrier in ("cheap", "mid"):
        assert scrape.value("smsc_carrier_binds", carrier=carrier) == 1
        assert scrape.value("smsc_carrier_binds_configured", carrier=carrier) == 1
        assert scrape.value("smsc_carrier_bind_attempts_total", carrier=carrier, result="ok") == 1
        assert scrape.value("smsc_carrier_in_flight", carrier=carrier) == 0
        assert scrape.value("smsc_carrier_available", carrier=carrier) == 1
        # No rate configured and no throttle met: no limit (ESME_RSYSERR is no throttle).
        assert scrape.value("smsc_carrier_rate_limit", carrier=carrier) == float("inf")
        assert scrape.value("smsc_carrier_rate_cuts_total", carrier=carrier) == 0


def test_carrier_latency_histograms(scrape: Scrape) -> None:
    counts = {"cheap": (8, 5), "mid": (2, 2)}  # (answers, final receipts)
    for carrier, (answers, receipts) in counts.items():
        submit = scrape.value("smsc_carrier_submit_latency_seconds_count", carrier=carrier)
        assert submit == answers
        receipt = scrape.value("smsc_receipt_latency_seconds_count", carrier=carrier)
        assert receipt == receipts
        inf = scrape.value("smsc_receipt_latency_seconds_bucket", carrier=carrier, le="+Inf")
        assert inf == receipts
    assert scrape.types["smsc_receipt_latency_seconds"] == "histogram"


def test_store_commit_latency(scrape: Scrape) -> None:
    transactions = scrape.value("smsc_store_transactions_total")
    assert transactions >= 1
    assert scrape.value("smsc_store_commit_seconds_count") == transactions
    # Each message is written at least twice (added, finished): 12 messages.
    assert scrape.value("smsc_store_records_total") >= 24
    assert scrape.value("smsc_store_failed_records_total") == 0


def test_store_size_rows_and_health_are_read_at_scrape_time(scrape: Scrape) -> None:
    # A row per message (none is old enough to be purged); globex's held receipt was
    # delivered and released before the scrape.
    assert scrape.value("smsc_store_rows", table="messages") == len(scrape.ids)
    assert scrape.value("smsc_store_rows", table="held") == 0
    assert scrape.value("smsc_store_size_bytes", file="db") > 0
    assert scrape.value("smsc_store_size_bytes", file="wal") > 0
    assert scrape.value("smsc_store_writable") == 1
    for reason in ("disk_full", "read_only", "io_error", "busy", "no_memory"):
        assert scrape.value("smsc_store_write_errors_total", reason=reason) == 0
    assert scrape.value("smsc_store_refused_total", kind="add") == 0
    assert scrape.value("smsc_store_refused_total", kind="hold") == 0
    assert scrape.value("smsc_store_read_timeouts_total") == 0
    assert scrape.value("smsc_store_purged_messages_total") == 0
    assert scrape.value("smsc_store_held_expired_total") == 0


# --- conventions ----------------------------------------------------------------------------


def test_names_units_and_labels_follow_the_conventions(scrape: Scrape) -> None:
    for name, kind in scrape.types.items():
        assert name.startswith("smsc_"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name
    for name, labels in scrape.samples:
        if scrape.types.get(name.removesuffix("_total")) == "counter":
            assert name.endswith(("_total", "_created")), name
        for label, value in labels:
            # never a message id, a number or an address
            assert value not in scrape.ids, (name, label, value)
            assert not re.fullmatch(r"\+?\d{5,}", value), (name, label, value)
            assert "127.0.0.1" not in value, (name, label, value)


def test_the_dashboard_queries_only_metrics_that_exist(scrape: Scrape) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    expressions = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert len(expressions) >= 10
    referenced = {name for expr in expressions for name in re.findall(r"\b(smsc_[a-z_]+)\b", expr)}
    exposed = scrape.names()
    missing = sorted(referenced - exposed)
    assert not missing, f"the dashboard queries series no smsc exposes: {missing}"
    # Every panel points at the datasource variable, so the dashboard imports anywhere.
    assert any(v["type"] == "datasource" for v in dashboard["templating"]["list"])
    for panel in dashboard["panels"]:
        if panel.get("type") != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


# --- the pieces -----------------------------------------------------------------------------


def test_histogram_buckets_follow_prometheus_le_semantics() -> None:
    histogram = Histogram([0.1, 1.0])
    for value in (0.05, 0.1, 0.5, 1.0, 7.0):
        histogram.observe(value)
    assert histogram.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(8.65)


def test_no_route_reasons_are_a_fixed_set() -> None:
    assert no_route_reason(NO_MATCH) == "no_prefix"
    assert no_route_reason(NOT_DIGITS) == "bad_destination"
    assert no_route_reason("no eligible carrier on route '44'") == "no_eligible_carrier"
    assert no_route_reason("pinned carrier cheap unavailable") == "pinned"
