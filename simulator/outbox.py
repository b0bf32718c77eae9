"""Delivery toward one account's receive-capable binds, holding what cannot go yet.

Receipts and MO go over the submitting transceiver when it is still bound, else over any
receiver or transceiver of the same system_id (round robin). With none bound, or when a
delivery fails (connection lost, no answer, a temporary error), the deliver_sm is held —
bounded, oldest dropped first, each for at most ``ttl`` seconds — and sent when a
receive-capable bind appears.

An item is a deliver_sm struct (a template: sequence_number 0) or, on the receipts' hot
path, its encoded body (``bytes``: what follows the header), sent without the codec (an
SMPP 3.3 peer gets it decoded, without TLVs: ``Connection.send_request_encoded_callback``).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from functools import partial

from smppcore.aio import Connection
from smppcore.constants import TEMPORARY_STATUSES, CommandId
from smppcore.errors import SmppError
from smppcore.pdu import Pdu

#: A deliver_sm to send: the struct, or its encoded body.
Item = Pdu | bytes
_DELIVER_SM = int(CommandId.DELIVER_SM)

log = logging.getLogger(__name__)

_RETRY_SECONDS = 1.0


# Session.can_deliver tests the session's state (an Enum: a Python-level __hash__) against
# a set, per receipt. States are singletons: remember the answer by the state's identity.
_DELIVERS_IN: dict[int, bool] = {}


def _can_deliver(conn: Connection) -> bool:
    """``conn.session.can_deliver and not conn.closed``, without hashing the state."""
    session = conn.session
    ok = _DELIVERS_IN.get(id(session.state))
    if ok is None:
        ok = _DELIVERS_IN[id(session.state)] = session.can_deliver
    return ok and not conn.closed


class Outbox:
    """One account's delivery path."""

    def __init__(
        self,
        system_id: str,
        *,
        max_held: int,
        ttl: float,
        on_drop: Callable[[int], None],
        on_sent: Callable[[Item], None] | None = None,
    ) -> None:
        self.system_id = system_id
        self.max_held = max_held
        self.ttl = ttl
        self._on_drop = on_drop
        self._on_sent = on_sent
        self._receivers: list[Connection] = []
        self._rr = 0
        self._held: deque[tuple[float, Item]] = deque()
        self._retry: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def receivers(self) -> int:
        return len(self._receivers)

    def add_receiver(self, conn: Connection) -> None:
        self._receivers.append(conn)
        self.flush()

    def remove(self, conn: Connection) -> None:
        if conn in self._receivers:
            self._receivers.remove(conn)

    def send(self, item: Item, prefer: Connection | None = None) -> None:
        """Deliver ``item`` now, or hold it."""
        expires = self._loop.time() + self.ttl
        conn = prefer if prefer is not None and _can_deliver(prefer) else self._pick(None)
        if conn is None:
            self._hold(item, expires)
            return
        self._send_on(conn, item, expires)

    def flush(self) -> None:
        """Send what is held while receivers are bound and their windows take it."""
        now = self._loop.time()
        held = self._held
        while held and self._receivers:
            expires, pdu = held[0]
            if expires <= now:
                held.popleft()
                self._on_drop(1)
                continue
            conn = self._pick(None)
            if conn is None or conn.session.waiting:
                break  # its window is full: try again shortly
            held.popleft()
            self._send_on(conn, pdu, expires)
        if held and self._retry is None and self._receivers:
            self._retry = self._loop.call_later(_RETRY_SECONDS, self._retry_due)

    def _retry_due(self) -> None:
        self._retry = None
        self.flush()

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None

    def _pick(self, prefer: Connection | None) -> Connection | None:
        if prefer is not None and _can_deliver(prefer):
            return prefer
        receivers = self._receivers
        n = len(receivers)
        for _ in range(n):
            self._rr = (self._rr + 1) % n
            conn = receivers[self._rr]
            if _can_deliver(conn):
                return conn
        return None

    def _send_on(self, conn: Connection, item: Item, expires: float) -> None:
        done = partial(self._done, item, expires)
        try:
            if isinstance(item, bytes):
                conn.send_request_encoded_callback(_DELIVER_SM, item, done)
            else:
                conn.send_request_callback(item, done)
        except SmppError:
            self._hold(item, expires)

    def _done(self, item: Item, expires: float, result: Pdu | SmppError) -> None:
        if isinstance(result, SmppError) or result.command_status in TEMPORARY_STATUSES:
            self._hold(item, expires)  # connection lost, no answer, or "try later"
            return
        if self._on_sent is not None:
            self._on_sent(item)

    def _hold(self, pdu: Item, expires: float) -> None:
        if self.max_held == 0 or expires <= self._loop.time():
            self._on_drop(1)
            return
        if len(self._held) >= self.max_held:
            self._held.popleft()
            self._on_drop(1)
        self._held.append((expires, pdu))
        if self._retry is None and self._receivers:
            self._retry = self._loop.call_later(_RETRY_SECONDS, self._retry_due)

