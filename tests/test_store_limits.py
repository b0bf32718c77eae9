"""What ``smsc serve`` does when its store cannot keep up its promises: the store's file
system fills up under load (a small tmpfs the test mounts and fills), the database hangs
(another process holds its write lock), an account with no receiver is flooded with MO.

Clients get clear temporary errors instead of acknowledgements that would be lost; the
store says why once (an ERROR line, metrics); service resumes by itself when space returns;
nothing acknowledged is lost. Every wait is on an answer or an event, under a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from loops import Run
from minimal_mc import MinimalMC
from prometheus_client.parser import text_string_to_metric_families
from small_fs import fill, small_tmpfs
from smsc_fixtures import (
    DEADLINE,
    FAST,
    OTHER_ID,
    OTHER_PASSWORD,
    UPSTREAM_ID,
    UPSTREAM_PASSWORD,
    app_config,
    bind_client,
    running_app,
)

from router.config import StoreConfig
from router.model import Address, DeliveryReport, Message, StoredMessage
from router.stores.sqlite import SqliteStore
from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import DeliverSm, QuerySm, QuerySmResp
from smsc.accounts import AccountState
from smsc.app import App
from smsc.config import SmscAccount, SmscConfig
from smsc.delivery import Delivery

REFUSED = {CommandStatus.ESME_RMSGQFUL, CommandStatus.ESME_RSYSERR}

#: Against hangs while the writer catches up with an outage's backlog (not a speed).
BACKLOG_DEADLINE = 60.0


def config_with_mc(
    tmp_path: Path, mc: MinimalMC, store: dict[str, Any], **router: Any
) -> SmscConfig:
    """smsc with one carrier, the minimal MC (it sends a receipt for every submit), MO from
    it to globex; the store as given."""
    config = app_config(
        tmp_path,
        {"mc": FAST},
        upstreams={"mc": {"host": mc.host, "port": mc.port, "mo_account": OTHER_ID}},
        router={"store": store, **router},
    )
    return msgspec.structs.replace(config, simulated_carriers=())


async def scrape(app: App) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    url = f"http://127.0.0.1:{app.http_port}/metrics"
    async with aiohttp.ClientSession() as http, asyncio.timeout(DEADLINE), http.get(url) as r:
        assert r.status == 200
        text = await r.text()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def ready(app: App) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{app.http_port}/api/v1/ready"
    async with aiohttp.ClientSession() as http, asyncio.timeout(DEADLINE), http.get(url) as r:
        return r.status, await r.json()


def mo(text: bytes = b"hello") -> DeliverSm:
    return DeliverSm(source_addr="447700900123", destination_addr="1234", short_message=text)


async def submit_batch(esme: Any, n: int) -> list[tuple[int, str]]:
    """``n`` pipelined submits: (status, message_id) each."""
    resps = await asyncio.gather(*(esme.submit(text=b"x" * 100) for _ in range(n)))
    return [(r.command_status, r.message_id) for r in resps]


class Logged(logging.Handler):
    """An event set when ``logger`` logs a record at ``level`` or above: to await what the
    store says about itself (from the loop's thread or another) under a deadline."""

    def __init__(self, logger: str, level: int) -> None:
        super().__init__(level)
        self._logger = logging.getLogger(logger)
        self._loop = asyncio.get_running_loop()
        self.event = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self._loop.call_soon_threadsafe(self.event.set)

    def __enter__(self) -> Logged:
        self._logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self._logger.removeHandler(self)


def on_disk(path: Path) -> set[str]:
    """Message ids in the database file, as another process sees it (committed only)."""
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT id FROM messages")}


@pytest.mark.parametrize("ack_after", ["store", "enqueue"])
def test_a_full_disk_under_load_refuses_submits_and_mo_then_resumes_losing_nothing(
    run1: Run, tmp_path: Path, caplog: pytest.LogCaptureFixture, ack_after: str
) -> None:
    """Submits in pipelined batches while the store's file system fills up.

    ``ack_after: store``: every submit is either acknowledged and on disk, or refused
    (ESME_RSYSERR for those already waiting for their commit, ESME_RMSGQFUL after). An MO
    for globex (no receiver: it would be held) is answered ESME_RX_T_APPN, for the carrier
    to send again. One ERROR line and the metrics say why. Once the filler file is removed
    submits are accepted again, the MO is taken, and every acknowledged message is on disk.

    ``ack_after: enqueue`` — what is at risk: the submits acknowledged before the writer
    found the disk full are kept in memory, NOT on disk, until space returns (a process
    killed meanwhile loses them); later ones are refused (ESME_RMSGQFUL)."""

    async def main() -> None:
        with small_tmpfs(tmp_path / "fs", "16m") as fs:
            db_path = fs / "smsc.db"
            # queue_max bounds what waits in memory for the disk (on a slow machine more is
            # acknowledged before the writer finds the disk full): what it holds must fit
            # in the 16 MB file system (with its WAL) once the filler is gone.
            store = {"path": str(db_path), "retry_max": 0.05, "queue_max": 2_000}
            async with MinimalMC({UPSTREAM_ID: UPSTREAM_PASSWORD}) as mc:
                config = config_with_mc(tmp_path, mc, store, ack_after=ack_after)
                async with running_app(config) as app:
                    await scenario(app, mc, fs, db_path)

    async def scenario(app: App, mc: MinimalMC, fs: Path, db_path: Path) -> None:
        esme = await bind_client(app)
        acked: list[str] = []
        for _ in range(3):  # load before the disk fills: all taken
            batch = await submit_batch(esme, 50)
            assert {status for status, _ in batch} == {CommandStatus.ESME_ROK}
            acked += [mid for _, mid in batch]
        filler = fill(fs)
        statuses: list[int] = []
        with (
            caplog.at_level(logging.WARNING, logger="router.stores"),
            Logged("router.stores", logging.ERROR) as unwritable,
        ):
            async with asyncio.timeout(DEADLINE):
                while not REFUSED & set(statuses):
                    batch = await submit_batch(esme, 50)
                    statuses += [status for status, _ in batch]
                    acked += [mid for status, mid in batch if status == CommandStatus.ESME_ROK]
            assert set(statuses) <= REFUSED | {CommandStatus.ESME_ROK}, statuses
            # No acknowledgement after the first refusal: the store stays refused.
            first = next(i for i, s in enumerate(statuses) if s != CommandStatus.ESME_ROK)
            assert CommandStatus.ESME_ROK not in statuses[first:], statuses
            if app.config.router.ack_after == "enqueue":
                assert set(statuses[first:]) == {CommandStatus.ESME_RMSGQFUL}
                # At risk: acknowledged, kept in memory only until space returns.
                assert app.store.queued > 0
                assert not set(acked) <= on_disk(db_path)

            # In ``enqueue`` mode the queue may fill (queue_max) before the writer's
            # transaction finds the disk full: the store says so when it does.
            async with asyncio.timeout(DEADLINE):
                await unwritable.event.wait()
            assert app.store.unwritable == "disk_full"

            [carrier] = mc.bound(UPSTREAM_ID)
            async with asyncio.timeout(DEADLINE):
                refused_mo = await carrier.send_request(mo(b"first"))
            assert refused_mo.command_status == CommandStatus.ESME_RX_T_APPN

            metrics = await scrape(app)
            assert metrics[("smsc_store_writable", frozenset())] == 0
            disk_full = frozenset({("reason", "disk_full")})
            assert metrics[("smsc_store_write_errors_total", disk_full)] >= 1
            assert metrics[("smsc_store_refused_total", frozenset({("kind", "hold")}))] == 1
            events = frozenset({("event", "mo_refused"), ("carrier", "mc")})
            assert metrics[("smsc_router_events_total", events)] == 1
            assert await ready(app) == (
                503,
                {"ready": False, "store": False, "carriers": {"mc": 1}},
            )

            filler.unlink()  # space returns: submits are taken again, by themselves
            async with asyncio.timeout(DEADLINE):
                while True:
                    batch = await submit_batch(esme, 10)
                    acked += [mid for status, mid in batch if status == CommandStatus.ESME_ROK]
                    if {status for status, _ in batch} == {CommandStatus.ESME_ROK}:
                        break
                taken_mo = await carrier.send_request(mo(b"again"))
            assert taken_mo.command_status == CommandStatus.ESME_ROK
        assert (await ready(app))[0] == 200
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1, errors  # once, not per message
        assert "disk_full" in errors[0].getMessage()

        # The records kept in memory through the outage are written first (thousands: on a
        # loaded machine longer than a read's read_timeout), then a receiver gets the MO.
        async with asyncio.timeout(BACKLOG_DEADLINE):
            await app.store.flush(BACKLOG_DEADLINE)
        globex = await bind_client(app, "rx", OTHER_ID, OTHER_PASSWORD)
        await globex.wait_for(lambda: len(globex.delivered) == 1, BACKLOG_DEADLINE)
        assert globex.delivered[0].short_message == b"again"
        await globex.close()
        await esme.close()
        async with asyncio.timeout(DEADLINE):
            await app.store.flush()
        assert set(acked) <= on_disk(db_path)  # nothing acknowledged is lost
        assert len(set(acked)) == len(acked)

    run1(main())


def test_query_sm_is_answered_a_temporary_error_when_the_store_hangs(
    run1: Run, tmp_path: Path
) -> None:
    """Another process holds the database's write lock: a query_sm about a message whose
    write is queued behind it gets ESME_RSYSERR after store.read_timeout, instead of
    waiting as long as SQLite does; once the lock is gone the query is answered."""

    async def main() -> None:
        config = app_config(
            tmp_path,
            {"sim": FAST},
            router={"store": {"path": str(tmp_path / "smsc.db"), "read_timeout": 0.3}},
        )
        async with running_app(config) as app:
            esme = await bind_client(app)
            blocker = sqlite3.connect(tmp_path / "smsc.db", isolation_level=None)
            try:
                blocker.execute("BEGIN IMMEDIATE")
                message_id = await esme.submit_ok()  # ack_after: enqueue
                resp = await esme.request(QuerySm(message_id=message_id))
                assert isinstance(resp, QuerySmResp)
                assert resp.command_status == CommandStatus.ESME_RSYSERR
                assert app.store.read_timeouts == 1
            finally:
                blocker.execute("ROLLBACK")
                blocker.close()
            resp = await esme.query(message_id)
            assert resp.command_status == CommandStatus.ESME_ROK
            await esme.close()

    run1(main())


def test_the_app_purges_on_schedule_and_stops_purging_before_the_store_closes(
    run1: Run, tmp_path: Path
) -> None:
    """``store.purge_interval``: the app's purge task runs at start; messages final for
    longer than ``keep_days`` are gone; the task ends with the app."""
    path = tmp_path / "smsc.db"

    async def seed() -> None:
        store = SqliteStore(StoreConfig(path=str(path)))
        await store.open()
        try:
            for i in range(30):
                mid = f"old{i}"
                src, dst = Address(5, 0, "ACME"), Address(1, 1, "447700900123")
                store.add(Message(id=mid, account="acme", source=src, destination=dst))
                store.set_final(mid, DeliveryReport(mid, MessageState.DELIVERED, done_at=1.0))
            await store.flush()
        finally:
            await store.close()

    async def main() -> None:
        await seed()
        config = app_config(
            tmp_path, {"sim": FAST}, router={"store": {"path": str(path), "purge_batch": 7}}
        )
        async with running_app(config) as app:
            esme = await bind_client(app)
            kept = await esme.submit_ok()
            async with asyncio.timeout(DEADLINE):  # purges run in order: after the app's
                assert await app.store.purge(time.time()) == 0
            assert app.store.purged_messages == 30
            assert await app.store.get("old0") is None
            assert await app.store.get(kept) is not None
            await esme.close()
        assert not [t for t in asyncio.all_tasks() if t.get_name() == "store-purge"]

    run1(main())


@pytest.mark.asyncio
async def test_a_delivery_the_store_refuses_to_hold_is_refused_or_dropped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """acme has no receiver; the store takes one more record. An MO is refused (False:
    the router answers the carrier a temporary error); a receipt, which its carrier was
    already answered for, is dropped: logged and counted, not kept in memory."""
    store = SqliteStore(StoreConfig(path=str(tmp_path / "smsc.db"), queue_max=1))
    await store.open()
    try:
        account = SmscAccount(system_id="acme", password="pw")
        delivery = Delivery({"acme": AccountState(account, 0.0)}, store)
        src, dst = Address(5, 0, "ACME"), Address(1, 1, "447700900123")
        when = 1_800_000_000.0
        message = Message(id="m1", account="acme", source=src, destination=dst, submitted_at=when)
        assert delivery.mobile_originated("acme", message) is True  # held
        assert delivery.mobile_originated("acme", message) is False  # refused
        receipted = msgspec.structs.replace(message, registered_delivery=1)
        stored = StoredMessage(message=receipted, state=MessageState.DELIVERED)
        with caplog.at_level(logging.WARNING, logger="smsc.delivery"):
            delivery.report(stored, DeliveryReport("m1", MessageState.DELIVERED, done_at=when))
        assert delivery.dropped == {"acme": 1}
        assert (delivery.held, store.refused_holds) == (1, 2)
        assert any("dropped" in r.getMessage() for r in caplog.records)
    finally:
        await store.close()
