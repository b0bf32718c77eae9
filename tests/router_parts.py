"""What the router's part tests share: messages, a real store on a temporary directory,
a router config (optionally with a carrier at a :class:`MinimalMC`), and a recording
:class:`router.ports.ReportSink` — the one port these parts talk to that is not ours.

Each part is built with real collaborators (store, queue, carriers, finals...); only the
sink is a fake, as ``smsc`` implements it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from minimal_mc import DEADLINE, MinimalMC

from router.config import (
    CarrierConfig,
    CarrierPrice,
    HealthConfig,
    IntakeConfig,
    Reconnect,
    RetryConfig,
    Route,
    RouterConfig,
    StoreConfig,
)
from router.metrics import RouterMetrics
from router.model import Address, DeliveryReport, Message, StoredMessage
from router.ports import SettledCallback
from router.store import SqliteStore
from smppcore.constants import CommandStatus, MessageState

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
    tmp_path: Path | None = None,
) -> RouterConfig:
    """Every carrier on one route (``prefix``), cheapest first."""
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
        health=HealthConfig(breaker_failures=breaker_failures),
        store=StoreConfig(path=str(tmp_path / "smsc.db")) if tmp_path else StoreConfig(),
        retry=RetryConfig(max_attempts=max_attempts),
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
