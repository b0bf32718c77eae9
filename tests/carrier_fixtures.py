"""Helpers for the carrier simulator's tests: a running Carrier on loopback port 0, a
recording ESME, raw-socket access for wire checks, and an event loop whose clock a test can
move forward (so "an hour later" takes no time and nothing sleeps).

Every wait is on an event or a response under ``asyncio.timeout``; a wait for something
that must NOT happen is always closed by a marker that must happen after it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import uvloop

from simulator.carrier import Carrier
from simulator.config import CarrierConfig
from smppcore.aio import Connection, Handler, connect
from smppcore.codec import FrameBuffer, decode, encode
from smppcore.config import load_config
from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import (
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    DataSm,
    DataSmResp,
    DeliverSm,
    DeliverSmResp,
    Pdu,
    QuerySm,
    QuerySmResp,
    SubmitSm,
    SubmitSmResp,
)
from smppcore.receipt import Receipt, is_final, parse_receipt
from smppcore.session import SessionConfig
from smppcore.tlv import Tag

#: The deadline of every wait (seconds); nothing should come near it.
DEADLINE = 5.0

SYSTEM_ID = "esme"
PASSWORD = "secret"


class WarpLoop(asyncio.SelectorEventLoop):
    """A selector loop whose clock a test can move forward with :meth:`advance`.

    Every timer (``call_at``/``call_later``, ``asyncio.timeout``, the carrier's delays and
    token buckets) reads ``time()``, so advancing it makes what was due later due now.
    """

    skew = 0.0

    def time(self) -> float:
        return super().time() + self.skew

    def advance(self, seconds: float) -> None:
        self.skew += seconds


#: The loops the live tests run on. ``asyncio`` is a WarpLoop whose clock nobody moves.
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": WarpLoop,
    "uvloop": uvloop.new_event_loop,
}


def advance(seconds: float) -> None:
    """Move the running (warp) loop's clock forward by ``seconds``."""
    loop = asyncio.get_running_loop()
    assert isinstance(loop, WarpLoop), "advance() needs the WarpLoop (use the warp fixture)"
    loop.advance(seconds)


#: Session timers off, so that only what a test sets can fire (and warping is harmless).
QUIET_SESSION: dict[str, Any] = {
    "window": 200,
    "inbound_window": 1000,
    "enquire_link_interval": None,
    "inactivity_timeout": None,
    "session_init_timeout": None,
}
ESME_SESSION = SessionConfig(
    window=500,
    inbound_window=1000,  # the carrier's window is 200: never throttle its deliver_sm
    enquire_link_interval=None,
    inactivity_timeout=None,
    session_init_timeout=None,
)

#: A profile that answers at once, delivers everything and sends receipts at once.
FAST_PROFILE: dict[str, Any] = {
    "seed": 1,
    "submit_latency": {"kind": "fixed", "ms": 0},
    "receipt_delay": {"kind": "fixed", "ms": 0},
    "enroute_delay": {"kind": "fixed", "ms": 0},
    "states": {"DELIVRD": 1.0},
}


def profile(**changes: Any) -> dict[str, Any]:
    """FAST_PROFILE with ``changes``."""
    return {**FAST_PROFILE, **changes}


def carrier_config(**overrides: Any) -> CarrierConfig:
    """A CarrierConfig on loopback port 0 with one account (esme/secret) on FAST_PROFILE;
    ``overrides`` replace top-level keys (``accounts``, ``profiles``, ``held``, ...)."""
    data: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "session": QUIET_SESSION,
        "accounts": [{"system_id": SYSTEM_ID, "password": PASSWORD}],
        "profiles": {"default": FAST_PROFILE},
    }
    data.update(overrides)
    return load_config(data, CarrierConfig)


@asynccontextmanager
async def running_carrier(
    config: CarrierConfig | None = None, *, stop_timeout: float = 1.0, **overrides: Any
) -> AsyncIterator[Carrier]:
    """Start a Carrier (``config``, or ``carrier_config(**overrides)``) and stop it after."""
    carrier = Carrier(config or carrier_config(**overrides))
    await carrier.start()
    try:
        yield carrier
    finally:
        async with asyncio.timeout(DEADLINE + stop_timeout):
            await carrier.stop(timeout=stop_timeout)


# --- the ESME side ----------------------------------------------------------------------


class Esme(Handler):
    """A test ESME: records every deliver_sm / data_sm and answers it (ESME_ROK)."""

    def __init__(self) -> None:
        self.delivered: list[DeliverSm] = []
        self.delivered_at: list[float] = []
        self.closed_reason: str | None = None
        self.conn: Connection | None = None
        self._changed = asyncio.Event()
        self._seq = 0

    # Handler ------------------------------------------------------------------------------

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            self.delivered.append(pdu)
            self.delivered_at.append(asyncio.get_running_loop().time())
            conn.respond(DeliverSmResp(sequence_number=pdu.sequence_number))
        elif isinstance(pdu, DataSm):
            conn.respond(DataSmResp(sequence_number=pdu.sequence_number))
        else:
            super().request_received(conn, pdu)
        self._changed.set()

    def session_closed(self, conn: Connection, reason: str) -> None:
        self.closed_reason = reason
        self._changed.set()

    # waiting ------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        """Wait until ``predicate()`` holds; checked whenever something is received."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def receipts(self, n: int, timeout: float = DEADLINE) -> list[DeliverSm]:
        """Wait until at least ``n`` deliver_sm arrived; returns all of them."""
        await self.wait_for(lambda: len(self.delivered) >= n, timeout)
        return list(self.delivered)

    async def receipt_for(self, message_id: str, *, final: bool = True) -> DeliverSm:
        """Wait for the (final, or intermediate) receipt of ``message_id``."""
        found: list[DeliverSm] = []

        def seen() -> bool:
            found[:] = [
                p
                for p in self.delivered
                if p.tlv(Tag.RECEIPTED_MESSAGE_ID) == message_id
                and is_final(MessageState(p.tlv(Tag.MESSAGE_STATE))) == final
            ]
            return bool(found)

        await self.wait_for(seen)
        return found[0]

    def receipts_of(self, message_id: str) -> list[DeliverSm]:
        return [p for p in self.delivered if p.tlv(Tag.RECEIPTED_MESSAGE_ID) == message_id]

    # requests -----------------------------------------------------------------------------

    @property
    def c(self) -> Connection:
        assert self.conn is not None
        return self.conn

    async def request(self, pdu: Pdu) -> Pdu:
        async with asyncio.timeout(DEADLINE):
            return await self.c.request(pdu)

    async def submit(
        self,
        destination: str = "447700900001",
        text: bytes = b"hello",
        *,
        source: str = "MyBrand",
        registered_delivery: int = 1,
        **fields: Any,
    ) -> SubmitSmResp:
        resp = await self.request(
            SubmitSm(
                source_addr=source,
                destination_addr=destination,
                registered_delivery=registered_delivery,
                short_message=text,
                **fields,
            )
        )
        assert isinstance(resp, SubmitSmResp), resp
        return resp

    async def submit_ok(self, destination: str = "447700900001", **kw: Any) -> str:
        """Submit and return the message_id (the submit must be accepted)."""
        resp = await self.submit(destination, **kw)
        assert resp.command_status == CommandStatus.ESME_ROK, resp
        assert resp.message_id
        return resp.message_id

    async def query(self, message_id: str, source: str = "") -> QuerySmResp:
        resp = await self.request(QuerySm(message_id=message_id, source_addr=source))
        assert isinstance(resp, QuerySmResp), resp
        return resp

    async def until_final(self, message_id: str) -> QuerySmResp:
        """Ask query_sm until the message is final: each ask is a round trip, not a nap."""
        async with asyncio.timeout(DEADLINE):
            while True:
                resp = await self.c.request(QuerySm(message_id=message_id))
                assert isinstance(resp, QuerySmResp), resp
                if resp.command_status or is_final(MessageState(resp.message_state)):
                    return resp

    async def close(self) -> None:
        if self.conn is not None and not self.conn.closed:
            self.conn.close()
            await self.conn.wait_closed(DEADLINE)


async def wait_any(predicate: Callable[[], bool], *esmes: Esme, timeout: float = DEADLINE) -> None:
    """Wait until ``predicate()`` holds; checked whenever any of ``esmes`` receives."""
    async with asyncio.timeout(timeout):
        while not predicate():
            for esme in esmes:
                esme._changed.clear()
            waiters = [asyncio.ensure_future(esme._changed.wait()) for esme in esmes]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()
                await asyncio.gather(*waiters, return_exceptions=True)


BIND_KINDS: dict[str, type[Pdu]] = {
    "tx": BindTransmitter,
    "rx": BindReceiver,
    "trx": BindTransceiver,
}


async def open_esme(carrier: Carrier) -> Esme:
    """A connected, not yet bound ESME."""
    esme = Esme()
    esme.conn = await connect(
        "127.0.0.1", carrier.port, config=ESME_SESSION, handler=esme, timeout=DEADLINE
    )
    return esme


async def bind_esme(
    carrier: Carrier,
    kind: str = "trx",
    system_id: str = SYSTEM_ID,
    password: str = PASSWORD,
) -> Esme:
    """A bound ESME (raises BindError when the carrier refuses)."""
    esme = await open_esme(carrier)
    try:
        async with asyncio.timeout(DEADLINE):
            await esme.c.bind(
                BIND_KINDS[kind](system_id=system_id, password=password)  # type: ignore[call-arg]
            )
    except BaseException:
        await esme.close()
        raise
    return esme


def receipt_of(pdu: DeliverSm) -> Receipt:
    receipt = parse_receipt(pdu.short_message)
    assert receipt is not None, pdu.short_message
    return receipt


# --- raw wire ---------------------------------------------------------------------------

HEADER = struct.Struct(">IIII")


def header(length: int, command_id: int, status: int, sequence: int) -> bytes:
    return HEADER.pack(length, command_id, status, sequence)


class RawPeer:
    """A plain TCP socket to the carrier: hand-made bytes out, whole PDUs back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self._frames = FrameBuffer()
        self._pending: list[bytes] = []

    @classmethod
    async def open(cls, carrier: Carrier) -> RawPeer:
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", carrier.port)
        return cls(reader, writer)

    def send(self, *items: bytes | Pdu) -> None:
        self.writer.write(b"".join(i if isinstance(i, bytes) else encode(i) for i in items))

    async def read_frame(self) -> bytes:
        """The next whole PDU's bytes, exactly as the carrier wrote them."""
        async with asyncio.timeout(DEADLINE):
            while not self._pending:
                data = await self.reader.read(65536)
                assert data, "connection closed by the carrier"
                self._pending += self._frames.feed(data)
                assert self._frames.error is None, self._frames.error
        return self._pending.pop(0)

    async def read(self) -> Pdu:
        return decode(await self.read_frame())

    async def exchange(self, pdu: Pdu) -> Pdu:
        self.send(pdu)
        return await self.read()

    async def at_eof(self) -> bool:
        """Wait (bounded) for the carrier to close the connection; True once it did."""
        async with asyncio.timeout(DEADLINE):
            rest = await self.reader.read()
        assert not self._pending, f"unread PDUs before EOF: {self._pending!r}"
        assert not rest, f"unexpected bytes before EOF: {rest!r}"
        return True

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(DEADLINE):
                await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
