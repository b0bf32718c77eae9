"""The API's listener: a fast lane for ``POST /v1/messages`` in front of aiohttp.

aiohttp spends ~50 µs of CPU on each request here (its parser, the Request and Response
objects, routing, the middleware chain, two writes' worth of bookkeeping) where a plain
JSON POST needs a third of that (bench/http_api.py). Each connection of the API's
listener starts with a :class:`Lane`, which reads requests itself while they are the
plain kind: the line ``POST /v1/messages HTTP/1.1``, a head of well-formed fields within
``MAX_HEAD`` octets, one ``Content-Length`` no larger than ``max_body``, and no
``Transfer-Encoding``, ``Content-Encoding``, ``Expect``, ``Upgrade`` or ``Connection:
close``. Each is answered by :meth:`smsc.http_api.HttpApi.post_messages` — what the
aiohttp route runs — in order, one at a time: requests pipelined behind it wait in the
buffer (bounded: reading pauses past ``max_body`` + ``MAX_HEAD`` octets, and while the
transport's write buffer is full). A whole head whose body is still coming is not parsed
again until the octets its length asks for are in, however many reads they take. An
answer is one write: status line, ``Content-Type``, ``Content-Length``, ``Date``,
``Server`` (aiohttp's, as its answers give it), the problem's own fields
(``Retry-After``, ...), the body. A handler that fails, or an answer that cannot be
written (a field value that is not Latin-1), gets ``FAILED`` (a 500 problem, logged) and
the connection closes after it.

The first request that is not plain — another route or method, HTTP/1.0, a chunked,
compressed or oversized body, a malformed or oversized head — is left unread, and once
the answers before it are written the connection is handed to aiohttp: its protocol gets
the transport and the octets not yet parsed, and serves the rest of the connection as it
serves any (other routes, its 400, 413 and 431 answers, chunked bodies, keep-alive). TLS
is the loop's, under both. A connection with no request being answered is closed
``keepalive`` seconds after it opened or last answered — idle, or with a request that is
not whole by then (a head or a body that trickles in: octets moving do not keep it
open) — by a sweep every ``keepalive / 8`` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, Final

from aiohttp.http import SERVER_SOFTWARE

log = logging.getLogger(__name__)

#: The request line of the requests the lane reads itself.
PLAIN_LINE: Final = b"POST /v1/messages HTTP/1.1\r\n"
#: Octets of a plain request's head, at most (line and fields): aiohttp's line limit.
MAX_HEAD: Final = 8190
#: One header field: token, colon, value without control characters (obs-text allowed).
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*\r\n")
#: Fields that make a request aiohttp's: framing and protocol changes, and a coded body
#: (aiohttp inflates a gzip/deflate/br body before the route reads it).
_HAND_OFF_FIELDS: Final = frozenset(
    {b"transfer-encoding", b"expect", b"upgrade", b"content-encoding"}
)

#: (status, Content-Type, body, extra header fields) → the answer's octets.
Answer = tuple[int, str, bytes, dict[str, str]]
#: What answers a plain request: (Authorization, Idempotency-Key, body) → Answer.
Handler = Callable[[str, "str | None", bytes], Awaitable[Answer]]
#: The answer when the handler fails or its answer cannot be written (a field value that
#: is not Latin-1): smsc.http_api's 500 problem, and the connection closes after it.
FAILED: Final[Answer] = (
    500,
    "application/problem+json",
    b'{"type":"https://smsc.invalid/problems/internal-error","title":"Internal error",'
    b'"status":500,"detail":"see the smsc log","instance":"/v1/messages"}',
    {"Connection": "close"},
)


def _status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}\r\n".encode("latin-1")


_STATUS_LINES: Final = {s.value: _status_line(s.value) for s in HTTPStatus}


class _Date:
    """The ``Date`` field line, made once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.line = b""

    def __call__(self) -> bytes:
        now = int(time.time())
        if now != self.second:
            self.second = now
            self.line = f"Date: {formatdate(now, usegmt=True)}\r\n".encode("latin-1")
        return self.line


#: The ``Server`` field line aiohttp's answers carry (the lane's are the same).
_SERVER: Final = f"Server: {SERVER_SOFTWARE}\r\n".encode("latin-1")


def encode_answer(answer: Answer, date: bytes) -> bytes:
    """An answer's octets: head and body in one piece."""
    status, content_type, body, fields = answer
    parts = [
        _STATUS_LINES.get(status) or _status_line(status),
        b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type.encode("latin-1"), len(body)),
        date,
        _SERVER,
    ]
    for name, value in fields.items():
        parts.append(f"{name}: {value}\r\n".encode("latin-1"))
    parts.append(b"\r\n")
    parts.append(body)
    return b"".join(parts)


class _Plain:
    """A plain request read from the buffer."""

    __slots__ = ("authorization", "body", "key")

    def __init__(self, authorization: str, key: str | None, body: bytes) -> None:
        self.authorization = authorization
        self.key = key
        self.body = body


#: What :func:`read_plain` says when the buffer holds no whole request yet.
MORE: Final = "more"
#: ... and when its first request is not plain (the connection goes to aiohttp).
NOT_PLAIN: Final = "not plain"


def read_plain(buf: bytearray, max_body: int) -> _Plain | str | int:
    """The first request in ``buf`` (removed from it) when it is plain; else MORE (no
    octet removed), the octets it needs in all when its head is whole and plain but not
    its body (no octet removed), or NOT_PLAIN (nothing removed: for aiohttp to read)."""
    line = len(PLAIN_LINE)
    if len(buf) < line:
        return MORE if PLAIN_LINE.startswith(buf) else NOT_PLAIN
    if not buf.startswith(PLAIN_LINE):
        return NOT_PLAIN
    end = buf.find(b"\r\n\r\n", line - 2)
    if end < 0:
        return MORE if len(buf) <= MAX_HEAD else NOT_PLAIN
    if end + 4 > MAX_HEAD:
        return NOT_PLAIN
    length = -1
    authorization = ""
    key: str | None = None
    pos = line
    stop = end + 2
    while pos < stop:
        found = _FIELD.match(buf, pos, stop)
        if found is None:
            return NOT_PLAIN
        pos = found.end()
        name = found.group(1).lower()
        if name == b"content-length":
            value = found.group(2)
            if length >= 0 or not value.isdigit() or len(value) > 12:
                return NOT_PLAIN
            length = int(value)
        elif name == b"authorization":
            if not authorization:
                authorization = found.group(2).decode("utf-8", "surrogateescape")
        elif name == b"idempotency-key":
            if key is None:
                key = found.group(2).decode("utf-8", "surrogateescape")
        elif name == b"connection":
            value = found.group(2).lower()
            if b"close" in value or b"upgrade" in value:
                return NOT_PLAIN
        elif name in _HAND_OFF_FIELDS:
            return NOT_PLAIN
    if length < 0 or length > max_body:
        return NOT_PLAIN
    start = end + 4
    if len(buf) < start + length:
        return start + length
    body = bytes(buf[start : start + length])
    del buf[: start + length]
    return _Plain(authorization, key, body)


class Lane(asyncio.Protocol):
    """One connection, while its requests are plain (then aiohttp's)."""

    def __init__(self, listener: FastListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        #: The request being answered (its task), if any.
        self.task: asyncio.Task[None] | None = None
        #: Octets the buffer's first request needs (its head read: its body is coming).
        self.need = 0
        self.handed = False
        self.closed = False
        self._eof = False
        self._write_paused = False
        self._read_paused = False
        #: The loop's time the connection opened or last answered (by which the sweep
        #: judges it: not by octets read, which a trickling client keeps coming).
        self.active_at = 0.0

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.active_at = self.listener.loop.time()
        self.listener.lanes.add(self)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.task is None:
            self._next()
        # (requests pipelined behind the one being answered, or while the client does
        # not read its answers: read on once they are taken)
        if len(self.buf) > self.listener.max_buffer and not (self._read_paused or self.closed):
            self._read_paused = True
            assert self.transport is not None
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        return self.task is not None  # (open until the answer is written)

    def connection_lost(self, exc: Exception | None) -> None:
        # A request being answered is left to finish (as aiohttp does): its answer is
        # dropped; the listener cancels it at stop.
        self.closed = True
        self.listener.lanes.discard(self)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.task is None:
            self._next()

    # --- requests ---

    def _next(self) -> None:
        """Answer the next request in the buffer, or hand the connection to aiohttp."""
        if self.closed or self._write_paused:
            return
        if self.listener.stopping:  # (the answers written: no other request starts)
            self._close()
            return
        if self._read_paused:
            self._read_paused = False
            assert self.transport is not None
            self.transport.resume_reading()
        if not self.buf:
            if self._eof:
                self._close()
            return
        if len(self.buf) < self.need:  # (a body coming: its head is not parsed again)
            if self._eof:
                self._close()
            return
        request = read_plain(self.buf, self.listener.max_body)
        if isinstance(request, _Plain):
            self.need = 0
            self.task = self.listener.loop.create_task(self._answer(request))
            self.listener.tasks.add(self.task)
        elif request is NOT_PLAIN:
            self._hand_off()
        else:
            if isinstance(request, int):
                self.need = request
            if self._eof:  # (a part of a request, and no more coming)
                self._close()

    async def _answer(self, request: _Plain) -> None:
        listener = self.listener
        try:
            answer = await listener.handler(request.authorization, request.key, request.body)
            data, failed = encode_answer(answer, listener.date()), False
        except Exception:  # (a handler's bug, or a field that is not Latin-1: never a hang)
            log.exception("HTTP API: POST /v1/messages: no answer to write")
            data, failed = encode_answer(FAILED, listener.date()), True
        finally:
            task, self.task = self.task, None
            listener.tasks.discard(task)
        if self.closed:
            return
        assert self.transport is not None
        self.transport.write(data)
        if failed:  # (what the handler did is not known: the client is told, not kept)
            self._close()
            return
        self.active_at = listener.loop.time()
        self._next()

    def _hand_off(self) -> None:
        transport = self.transport
        assert transport is not None
        self.handed = True
        self.listener.lanes.discard(self)
        protocol = self.listener.aiohttp_protocol()
        rest, self.buf = bytes(self.buf), bytearray()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if rest:
            protocol.data_received(rest)
        if self._eof:
            protocol.eof_received()

    def _close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FastListener:
    """The API's TCP (or TLS) listener. ``await start(host, port, ssl)``, ``port``,
    ``await stop(timeout)``."""

    def __init__(
        self,
        handler: Handler,
        aiohttp_protocol: Callable[[], Any],
        *,
        max_body: int,
        keepalive: float = 75.0,
    ) -> None:
        #: Answers a plain request (smsc.http_api.HttpApi.post_messages).
        self.handler = handler
        #: aiohttp's protocol factory (its web.Server): takes the connections handed over.
        self.aiohttp_protocol = aiohttp_protocol
        self.max_body = max_body
        self.max_buffer = max_body + MAX_HEAD
        self.keepalive = keepalive
        self.date = _Date()
        #: Set by :meth:`stop`: a lane starts no request (nor hands one to aiohttp) then.
        self.stopping = False
        self.lanes: set[Lane] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    async def start(self, host: str, port: int, ssl: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: Lane(self), host, port, ssl=ssl, backlog=128, reuse_address=True
        )
        self._sweeper = asyncio.create_task(self._sweep(), name="http-api-idle-sweep")

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive / 8)
            idle_since = self.loop.time() - self.keepalive
            for lane in [x for x in self.lanes if x.task is None and x.active_at < idle_since]:
                lane._close()

    async def stop(self, timeout: float) -> None:
        """Stop accepting; answer the requests being answered (``timeout`` seconds at
        most, then they are cancelled) and start none pipelined behind them; close the
        lane's connections (aiohttp closes those it was handed)."""
        self.stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        if self._server is not None:
            self._server.close()
        for lane in [x for x in self.lanes if x.task is None]:
            lane._close()
        if self.tasks:
            _, pending = await asyncio.wait(set(self.tasks), timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for lane in list(self.lanes):
            lane._close()
        self.lanes.clear()
        self._server = None
