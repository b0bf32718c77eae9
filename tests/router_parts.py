"""What the router's part tests share: messages, a real store on a temporary directory,
a router config (optionally with a carrier at a :class:`MinimalMC`), and a recording
:class:`router.ports.ReportSink` — the one port these parts talk to that is not ours.

Each part is built with real collaborators (store, queue, carriers, finals...); only the
sink is a fake, as ``smsc`` implements it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from minimal_mc import DEADLINE, MinimalMC

from router.carriers import Carriers
from router.config import (
    CarrierConfig,
    CarrierPrice,
    HealthConfig,
    IntakeConfig,
    Reconnect,
    RetryConfig,
    Route,
    RouterConfig,
    RoutingConfig,
    StoreConfig,
)
from router.dispatch import Dispatcher
from router.finals import Finals
from router.intake import PacedIntake
from router.metrics import RouterMetrics
from router.model import Address, DeliveryReport, Message, StoredMessage
from router.ports import SettledCallback
from router.queue import MessageQueue
from router.receipts import Receipts
from router.stores.sqlite import SqliteStore
from router.upstream import Answer
from smppcore.aio import Connection
from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import DeliverSm

T0 = 1_700_000_000.0
ROK = int(CommandStatus.ESME_ROK)
RETRY_LATER = int(CommandStatus.ESME_RX_T_APPN)
ACCOUNT = "acme"
UPSTREAM = ("upstream", "secret")


def message(
    id: str,
    *,
    destination: str = "447700900123",
    expires_at: float | None = None,
    registered_delivery: int = 1,
    submitted_at: float = T0,
) -> Message:
    return Message(
        id=id,
        account=ACCOUNT,
        source=Address(5, 0, "Shop"),
        destination=Address(1, 1, destination),
        short_message=f"text of {id}".encode(),
        registered_delivery=registered_delivery,
        submitted_at=submitted_at,
        expires_at=expires_at,
    )


def carrier(
    name: str, mc: MinimalMC | None = None, *, binds: int = 1, **settings: object
) -> CarrierConfig:
    """A carrier bound to ``mc`` (or to a port nothing listens on: it never binds)."""
    return CarrierConfig(
        name=name,
        port=mc.port if mc is not None else 9,
        system_id=UPSTREAM[0],
        password=UPSTREAM[1],
        binds=binds,
        enquire_link_interval=60.0,
        reconnect=Reconnect(min=0.05, max=0.2, jitter=0.0),
        **settings,  # type: ignore[arg-type]
    )


def router_config(
    *carriers: CarrierConfig,
    prefix: str = "44",
    ack_after: str = "enqueue",
    queue_max: int = 100,
    pace_above: int = 0,
    max_wait: float = 1.0,
    max_attempts: int = 4,
    breaker_failures: int = 20,
    breaker_open: float = 10.0,
    tmp_path: Path | None = None,
) -> RouterConfig:
    """Every carrier on one route (``prefix``), cheapest first; no exploration (2 % of
    messages would go to a dearer carrier at random)."""
    routes = (
        (
            Route(
                prefix=prefix,
                carriers=tuple(
                    CarrierPrice(carrier=c.name, price=str(i + 1)) for i, c in enumerate(carriers)
                ),
            ),
        )
        if carriers
        else ()
    )
    return RouterConfig(
        carriers=carriers,
        routes=routes,
        queue_max=queue_max,
        ack_after=ack_after,  # type: ignore[arg-type]
        intake=IntakeConfig(pace_above=pace_above, max_wait=max_wait),
        health=HealthConfig(breaker_failures=breaker_failures, breaker_open=breaker_open),
        store=StoreConfig(path=str(tmp_path / "smsc.db")) if tmp_path else StoreConfig(),
        retry=RetryConfig(max_attempts=max_attempts),
        routing=RoutingConfig(explore=0.0),
    )


def metrics_for(config: RouterConfig) -> RouterMetrics:
    return RouterMetrics(c.name for c in config.carriers)


@asynccontextmanager
async def open_store(tmp_path: Path, **settings: object) -> AsyncIterator[SqliteStore]:
    """A real SQLite store in ``tmp_path``, closed after."""
    store = SqliteStore(StoreConfig(path=str(tmp_path / "smsc.db"), **settings))  # type: ignore[arg-type]
    await store.open()
    try:
        yield store
    finally:
        await store.close()


class Sink:
    """A :class:`router.ports.ReportSink` that records what it is given.

    ``settle``: True settles every delivery at once (delivered), False settles it as
    failed (neither delivered nor held), None leaves it to the test (:attr:`pending`).
    ``mo_accepts`` False refuses MO (the store cannot hold it)."""

    def __init__(self, *, settle: bool | None = True, mo_accepts: bool = True) -> None:
        self.settle = settle
        self.mo_accepts = mo_accepts
        self.reports: list[tuple[StoredMessage, DeliveryReport]] = []
        self.mo: list[tuple[str, Message]] = []
        self.pending: list[SettledCallback] = []
        self._changed: asyncio.Event | None = None

    def report(
        self,
        stored: StoredMessage,
        report: DeliveryReport,
        settled: SettledCallback | None = None,
    ) -> None:
        self.reports.append((stored, report))
        self._settle(settled)

    def mobile_originated(
        self, account: str, message: Message, settled: SettledCallback | None = None
    ) -> bool | None:
        if not self.mo_accepts:
            return False
        self.mo.append((account, message))
        self._settle(settled)
        return True

    def _settle(self, settled: SettledCallback | None) -> None:
        if self._changed is not None:
            self._changed.set()
        if settled is None:
            return
        if self.settle is None:
            self.pending.append(settled)
        else:
            settled(self.settle)

    def states(self) -> dict[str, MessageState]:
        """Our id → the state last reported for it."""
        return {report.message_id: report.state for _, report in self.reports}

    async def wait_for(self, count: int, timeout: float = DEADLINE) -> None:
        """Until ``count`` reports have come (woken by each one)."""
        self._changed = asyncio.Event()
        async with asyncio.timeout(timeout):
            while len(self.reports) < count:
                self._changed.clear()
                await self._changed.wait()


class Answers:
    """How a carrier's deliver_sm is answered (a ``Respond``): the statuses, in order,
    and a wait for the next one."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self._changed = asyncio.Event()

    def __call__(self, status: int) -> None:
        self.statuses.append(int(status))
        self._changed.set()

    async def wait_for(self, count: int, timeout: float = DEADLINE) -> list[int]:
        async with asyncio.timeout(timeout):
            while len(self.statuses) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.statuses


class Parts:
    """The router's parts wired as :class:`router.router.Router` wires them, each built
    directly (its constructor, its real collaborators): for tests of one part that need
    the others. ``running`` is left False: a test drives passes itself (``dispatch``) or
    sets it."""

    def __init__(
        self, config: RouterConfig, store: SqliteStore, sink: Sink, *, wall: float | None = None
    ) -> None:
        clock: Callable[[], float] = time.time if wall is None else (lambda: wall)
        self.config = config
        self.store = store
        self.sink = sink
        self.queue = MessageQueue(config.queue_max)
        self.metrics = metrics_for(config)
        durable = config.ack_after == "store"
        self.finals = Finals(
            store=store, sink=sink, metrics=self.metrics, durable=durable, wall=clock
        )
        self.carriers = Carriers(
            config,
            queue=self.queue,
            metrics=self.metrics,
            on_deliver=self._on_deliver,
            wake=self._wake,
            wall=clock,
        )
        self.receipts = Receipts(
            config,
            store=store,
            carriers=self.carriers,
            finals=self.finals,
            metrics=self.metrics,
            wall=clock,
        )
        self.intake = PacedIntake(
            config,
            queue=self.queue,
            store=store,
            carriers=self.carriers,
            finals=self.finals,
            metrics=self.metrics,
            wake=self._wake,
            wall=clock,
        )
        self.dispatcher = Dispatcher(
            config,
            queue=self.queue,
            store=store,
            carriers=self.carriers,
            intake=self.intake,
            receipts=self.receipts,
            finals=self.finals,
            metrics=self.metrics,
            wall=clock,
        )
        self.queue.on_ready = self.dispatcher.wake_up

    def _wake(self) -> None:
        self.dispatcher.wake_up()

    def _on_deliver(
        self, carrier: str, pdu: DeliverSm, conn: Connection, answer: Answer
    ) -> int | None:
        return self.receipts.deliver(carrier, pdu, None)  # enqueue mode: answered at once

    def set_running(self, running: bool) -> None:
        self.carriers.running = self.intake.running = self.dispatcher.running = running

    async def stop(self) -> None:
        self.set_running(False)
        self.dispatcher.stop()
        await self.carriers.stop(DEADLINE)
        await self.receipts.settle(DEADLINE)
        await self.receipts.cancel()


@asynccontextmanager
async def running_parts(
    tmp_path: Path, config: RouterConfig, sink: Sink, *, bound: bool = True
) -> AsyncIterator[Parts]:
    """:class:`Parts` on a real store, started and running; every carrier bound first
    when ``bound``."""
    async with open_store(tmp_path) as store:
        parts = Parts(config, store, sink)
        await parts.carriers.start(time.time())
        try:
            if bound:
                await parts.carriers.wait_bound(DEADLINE)
            parts.set_running(True)
            yield parts
        finally:
            await parts.stop()
