"""Helpers for the end-to-end tests of ``smsc serve``: an :class:`~smsc.app.App` on loopback
port 0 with its store under ``tmp_path``, metrics on port 0 and its own simulated carriers
(fixed 0 ms latency and receipt delay unless a test says otherwise), and ESME clients built
on smppcore.aio.

Start-up is awaited, never slept through: :func:`running_app` returns once every carrier
bind is up (``Router.wait_carriers_bound``, woken by bind state changes). Every wait has a
deadline; everything started is stopped in ``finally``.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from carrier_fixtures import ESME_SESSION, QUIET_SESSION, Esme
from processes import SmscProcess, smsc_process

from router.model import StoredMessage
from smppcore.aio import Connection
from smppcore.config import load_config
from smppcore.constants import MessageState
from smppcore.pdu import BindReceiver, BindTransceiver, BindTransmitter, DeliverSm, Pdu
from smppcore.receipt import Receipt, is_final, parse_receipt
from smppcore.session import Role
from smppcore.tlv import Tag
from smsc.app import App
from smsc.config import SmscConfig

#: The deadline of every wait (seconds); nothing should come near it.
DEADLINE = 10.0

#: The ESME account the tests bind with (and a second one, to show isolation).
SYSTEM_ID = "acme"
PASSWORD = "acme-pw"
OTHER_ID = "globex"
OTHER_PASSWORD = "globex"

#: The account smsc binds with at its simulated carriers.
UPSTREAM_ID = "smsc"
UPSTREAM_PASSWORD = "upstream"

#: A carrier that answers at once, delivers everything and sends the receipt at once.
FAST: dict[str, Any] = {
    "seed": 1,
    "submit_latency": {"kind": "fixed", "ms": 0},
    "receipt_delay": {"kind": "fixed", "ms": 0},
    "enroute_delay": {"kind": "fixed", "ms": 0},
    "states": {"DELIVRD": 1.0},
}


def profile(**changes: Any) -> dict[str, Any]:
    """FAST with ``changes``."""
    return {**FAST, **changes}


def simulator(profile_: dict[str, Any] | None = None, **account: Any) -> dict[str, Any]:
    """The inline config of a simulated carrier: one account for smsc, one profile."""
    return {
        "system_id": "sim",
        "session": QUIET_SESSION,
        "accounts": [
            {
                "system_id": UPSTREAM_ID,
                "password": UPSTREAM_PASSWORD,
                "max_sessions": 16,
                **account,
            }
        ],
        "profiles": {"default": profile_ or FAST},
    }


def upstream(name: str, **overrides: Any) -> dict[str, Any]:
    """The router's side of a carrier: one transceiver, quick reconnects, short pauses."""
    return {
        "name": name,
        "system_id": UPSTREAM_ID,
        "password": UPSTREAM_PASSWORD,
        "binds": 1,
        "window": 50,
        "response_timeout": 2.0,
        "throttle_pause": 0.2,
        "reconnect": {"min": 0.05, "max": 0.2, "jitter": 0.1},
        **overrides,
    }


def prices(**by_carrier: str) -> list[dict[str, str]]:
    return [{"carrier": c, "price": p} for c, p in by_carrier.items()]


def accounts(**extra: Any) -> list[dict[str, Any]]:
    """The two test accounts; ``extra`` applies to the first."""
    return [
        {"system_id": SYSTEM_ID, "password": PASSWORD, **extra},
        {"system_id": OTHER_ID, "password": OTHER_PASSWORD},
    ]


def app_config(
    tmp_path: Path,
    carriers: dict[str, dict[str, Any]],
    routes: list[dict[str, Any]] | None = None,
    *,
    upstreams: dict[str, dict[str, Any]] | None = None,
    router: dict[str, Any] | None = None,
    **top: Any,
) -> SmscConfig:
    """An SmscConfig (decoded as a YAML file would be) with a simulated carrier per
    ``carriers`` entry (name → profile) and a route table (default: one "" route over the
    carriers, priced in the order given: the first is the cheapest). Exploration is off
    (``routing.explore: 0``: 2 % of messages would go to a fallback at random); ``router``
    may set it."""
    if routes is None:
        routes = [
            {
                "prefix": "",
                "carriers": [
                    {"carrier": name, "price": f"0.00{i + 1}"} for i, name in enumerate(carriers)
                ],
            }
        ]
    upstreams = upstreams or {}
    data: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "session": {
            "window": 100,
            "inbound_window": 100,
            "enquire_link_interval": None,
            "inactivity_timeout": None,
            "session_init_timeout": None,
        },
        "accounts": accounts(),
        "router": {
            "carriers": [upstream(name, **upstreams.get(name, {})) for name in carriers],
            "routes": routes,
            "store": {"path": str(tmp_path / "smsc.db")},
            "routing": {"explore": 0},
            **(router or {}),
        },
        "simulated_carriers": [
            {"name": name, "config": simulator(p)} for name, p in carriers.items()
        ],
        "log_level": "warning",
        **top,
    }
    return load_config(data, SmscConfig, source="test")


@asynccontextmanager
async def running_app(
    config: SmscConfig,
    *,
    wait_for: Iterable[str] | None = None,
    stop_timeout: float = 1.0,
    loader: Callable[[], SmscConfig] | None = None,
) -> AsyncIterator[App]:
    """Start ``config``; return once the carriers in ``wait_for`` (default: all) are bound;
    stop it afterwards (``stop_timeout`` bounds the whole shutdown). ``loader`` is what
    ``App.reload`` reads."""
    app = App(config, loader=loader)
    try:
        async with asyncio.timeout(DEADLINE):
            await app.start()
            assert app.router is not None
            await app.router.wait_carriers_bound(DEADLINE, wait_for)
        yield app
    finally:
        async with asyncio.timeout(DEADLINE):
            await app.stop(timeout=stop_timeout)


# --- clients ----------------------------------------------------------------------------

BINDS: dict[str, type[Pdu]] = {
    "tx": BindTransmitter,
    "rx": BindReceiver,
    "trx": BindTransceiver,
}


async def open_client(app: App, *, local_host: str | None = None) -> Esme:
    """A connected, not yet bound ESME (from ``local_host`` when given)."""
    esme = Esme()
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(DEADLINE):
        _, esme.conn = await loop.create_connection(
            lambda: Connection(Role.ESME, ESME_SESSION, esme),
            "127.0.0.1",
            app.port,
            local_addr=(local_host, 0) if local_host else None,
        )
    return esme


async def bind_client(
    app: App,
    kind: str = "trx",
    system_id: str = SYSTEM_ID,
    password: str = PASSWORD,
    *,
    local_host: str | None = None,
) -> Esme:
    """A bound ESME (raises BindError when smsc refuses)."""
    esme = await open_client(app, local_host=local_host)
    try:
        async with asyncio.timeout(DEADLINE):
            await esme.c.bind(BINDS[kind](system_id=system_id, password=password))  # type: ignore[call-arg]
    except BaseException:
        await esme.close()
        raise
    return esme


def receipt_id(pdu: DeliverSm) -> str:
    value = pdu.tlv(Tag.RECEIPTED_MESSAGE_ID)
    assert isinstance(value, str), pdu
    return value


def receipt_text(pdu: DeliverSm) -> Receipt:
    receipt = parse_receipt(pdu.short_message)
    assert receipt is not None, pdu.short_message
    return receipt


def final_receipts(esme: Esme) -> dict[str, list[DeliverSm]]:
    """The final receipts ``esme`` got, by receipted_message_id."""
    out: dict[str, list[DeliverSm]] = {}
    for pdu in esme.delivered:
        state = pdu.tlv(Tag.MESSAGE_STATE)
        if isinstance(state, int) and is_final(MessageState(state)):
            out.setdefault(receipt_id(pdu), []).append(pdu)
    return out


async def wait_final_receipts(esme: Esme, ids: Iterable[str], timeout: float = DEADLINE) -> None:
    """Wait until ``esme`` has a final receipt for every id of ``ids``."""
    wanted = set(ids)
    await esme.wait_for(lambda: wanted <= final_receipts(esme).keys(), timeout)


def assert_one_final_receipt_each(esme: Esme, ids: Iterable[str]) -> None:
    """Exactly one final receipt per id of ``ids``, each naming the id in text and TLV."""
    receipts = final_receipts(esme)
    for message_id in ids:
        got = receipts.get(message_id, [])
        assert len(got) == 1, (message_id, got)
        assert receipt_text(got[0]).message_id == message_id


async def stored(app: App, message_id: str) -> StoredMessage:
    found = await app.store.get(message_id)
    assert found is not None, message_id
    return found


# --- `smsc serve` as a process ----------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


ServeProcess = SmscProcess


@asynccontextmanager
async def serve_process(cwd: Path, *args: str, name: str = "serve") -> AsyncIterator[SmscProcess]:
    """``python -m smsc serve ARGS`` in ``cwd``, ready (see tests/processes.py)."""
    async with smsc_process("serve", cwd, *args, name=name) as process:
        yield process


def closed_port() -> int:
    """A loopback port nothing listens on (a carrier that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@contextmanager
def held_closed_port() -> Iterator[int]:
    """:func:`closed_port`, held for the block: bound and never listening, so that a
    connection to it is refused and nothing started meanwhile (an App's own listeners on
    port 0, say) can be given that port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        yield port
