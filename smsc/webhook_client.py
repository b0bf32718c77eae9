"""A small keep-alive HTTP/1.1 client for webhook POSTs, on asyncio protocols.

aiohttp's ClientSession costs several times more CPU per request than the request itself
needs (request and response objects, tracing hooks, a task per body read); a webhook is
one small POST whose answer is a status line (and a body nobody reads). This client keeps
a pool of persistent connections per (scheme, host, port) and, per request: takes an idle
connection (or opens one: TCP, or TLS through the loop's ssl support), writes the request
in one write, and parses the response's status line, headers and body (Content-Length,
chunked, or until the connection closes). :meth:`WebhookClient.post_many` writes several
POSTs to one URL at once on one connection (HTTP/1.1 pipelining) and reads their answers
in order, each within ``timeout`` of the one before.

Bounded: at most ``max_idle`` idle connections per host and ``max_hosts`` hosts with idle
connections (the oldest are closed beyond that); a body is kept up to ``max_body`` bytes
(the rest is read and dropped). Every request has a deadline (``timeout``: connecting,
writing and the whole response); a connection whose request timed out or failed is closed,
never reused. A request on a reused connection that the server closed before answering
(a keep-alive race) is sent once more on a new connection — and pipelined requests the
server closed the connection on before answering, while each round gets some answered:
webhooks are at-least-once.

A ``guarded`` request (a callback URL an application gave: smsc/callback_guard.py) resolves
the host itself and connects only to an address the guard allows, trying those in the
order the resolver gave; none: :class:`~smsc.callback_guard.CallbackRefused`. An idle
connection is reused for it only when the address it is connected to is allowed too.
The client never follows redirects.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from collections import deque
from urllib.parse import quote, urlsplit

import msgspec

from smsc.callback_guard import CallbackGuard, CallbackRefused

#: Idle connections older than this are not reused (servers close theirs after 5–75 s).
IDLE_SECONDS = 15.0
_MAX_HEAD = 64 * 1024


class HttpError(Exception):
    """The connection failed or the server's answer is not HTTP/1.x we can read."""


class Response(msgspec.Struct, frozen=True):
    status: int
    #: Header names in lower case; a repeated header keeps its last value.
    headers: dict[str, str]
    body: bytes


class _Target(msgspec.Struct, frozen=True):
    key: tuple[str, str, int]  # scheme, host, port
    host: str
    port: int
    tls: bool
    head: bytes  # "Host: ...\r\n" (and Authorization from the URL's user info)
    target: str  # path and query


class _Conn(asyncio.Protocol):
    """One connection: its requests (one, or several pipelined), answered in order;
    parses the answers."""

    def __init__(self, max_body: int) -> None:
        self.max_body = max_body
        self.transport: asyncio.Transport | None = None
        #: The address connected to (what a guarded request's reuse is judged by), and
        #: the guard's verdict on it once asked (None: not yet).
        self.address = ""
        self.allowed: bool | None = None
        self.closed = False
        self.idle_since = 0.0
        self._buf = bytearray()
        #: The requests not yet answered, oldest first: (its answer, a HEAD's?).
        self._waiters: deque[tuple[asyncio.Future[Response], bool]] = deque()
        self._got_any = False
        # parse state of the current response
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep = False
        self._left = -1  # body bytes still due (Content-Length / current chunk); -1: none
        self._mode = ""  # "", "length", "chunked", "close"
        self._chunk_state = ""  # "size", "data", "crlf", "trailer"
        self._body = bytearray()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            self.address = str(peer[0])

    @property
    def waiting(self) -> bool:
        """Are answers still due on this connection?"""
        return bool(self._waiters)

    def data_received(self, data: bytes) -> None:
        if not self._waiters:  # nothing asked: the server talks out of turn
            self._fail(HttpError("data from the server with no request pending"))
            return
        self._got_any = True
        self._buf += data
        try:
            self._parse()
        except HttpError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        self.closed = True  # (the transport closes: not to be taken for a request now)
        if self._waiters and self._mode == "close" and self._status:
            self._finish(keep=False)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiters and self._mode == "close" and self._status:
            self._finish(keep=False)
        why = f"the server closed the connection{f': {exc}' if exc else ''}"
        early = not self._got_any  # (those after the first: nothing of theirs was read)
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_Closed(why, early=early))
            early = True

    # --- requests ---

    def send(self, data: bytes, no_body: bool) -> asyncio.Future[Response]:
        return self.send_many(data, 1, no_body)[0]

    def send_many(
        self, data: bytes, count: int, no_body: bool = False
    ) -> list[asyncio.Future[Response]]:
        """Write ``count`` requests (``data``, in one write); their answers, in order."""
        assert self.transport is not None
        assert not self._waiters
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Response]] = []
        for _ in range(count):
            fut: asyncio.Future[Response] = loop.create_future()
            self._waiters.append((fut, no_body))
            futures.append(fut)
        self._got_any = False
        self._status = 0
        self._mode = ""
        self._body = bytearray()
        self.transport.write(data)
        return futures

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # --- parsing ---

    def _parse(self) -> None:
        while self._waiters:
            if not self._status:
                if not self._parse_head():
                    return
                continue
            if self._mode == "length":
                take = min(self._left, len(self._buf))
                self._keep_body(self._buf[:take])
                del self._buf[:take]
                self._left -= take
                if self._left:
                    return
                self._finish(keep=self._keep)
            elif self._mode == "chunked":
                if not self._parse_chunks():
                    return
                self._finish(keep=self._keep)
            else:  # "close": everything until the connection ends
                self._keep_body(self._buf)
                self._buf.clear()
                return

    def _parse_head(self) -> bool:
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buf) > _MAX_HEAD:
                raise HttpError("response head too large")
            return False
        lines = bytes(self._buf[:end]).decode("latin-1").split("\r\n")
        del self._buf[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code = rest[:3]
        if not version.startswith("HTTP/1.") or not code.isdigit():
            raise HttpError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
        status = int(code)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(f"malformed header line: {line[:80]!r}")
            headers[name.strip().lower()] = value.strip()
        if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
            return True
        connection = headers.get("connection", "").lower()
        self._keep = (
            "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
        )
        self._status = status
        self._headers = headers
        if self._waiters[0][1] or status in (204, 304):
            self._mode, self._left = "length", 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode, self._chunk_state = "chunked", "size"
        elif "content-length" in headers:
            value = headers["content-length"]
            if not value.isdigit():
                raise HttpError(f"bad Content-Length: {value[:40]!r}")
            self._mode, self._left = "length", int(value)
        else:
            self._mode, self._keep = "close", False
        return True

    def _parse_chunks(self) -> bool:
        """True when the chunked body (and its trailer) is complete."""
        buf = self._buf
        while True:
            if self._chunk_state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 1024:
                        raise HttpError("chunk size line too long")
                    return False
                size = bytes(buf[:end]).split(b";", 1)[0].strip()
                del buf[: end + 2]
                try:
                    self._left = int(size, 16)
                except ValueError:
                    raise HttpError(f"bad chunk size: {size[:20]!r}") from None
                self._chunk_state = "data" if self._left else "trailer"
            elif self._chunk_state == "data":
                take = min(self._left, len(buf))
                self._keep_body(buf[:take])
                del buf[:take]
                self._left -= take
                if self._left:
                    return False
                self._chunk_state = "crlf"
            elif self._chunk_state == "crlf":
                if len(buf) < 2:
                    return False
                if buf[:2] != b"\r\n":
                    raise HttpError("chunk not followed by CRLF")
                del buf[:2]
                self._chunk_state = "size"
            else:  # trailer: header lines up to an empty one
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > _MAX_HEAD:
                        raise HttpError("chunked trailer too large")
                    return False
                del buf[: end + 2]
                if end == 0:
                    return True

    def _keep_body(self, data: bytes | bytearray) -> None:
        room = self.max_body - len(self._body)
        if room > 0:
            self._body += data[:room]

    def _finish(self, keep: bool) -> None:
        waiter, _ = self._waiters.popleft()
        response = Response(self._status, self._headers, bytes(self._body))
        # the next answer's parse state (its first octets may be in the buffer already)
        self._status, self._mode, self._body = 0, "", bytearray()
        self._got_any = bool(self._buf)
        if not keep or (self._buf and not self._waiters):
            self.close()  # (bytes beyond the answers: the connection is out of step)
        if not waiter.done():
            waiter.set_result(response)

    def _fail(self, exc: Exception) -> None:
        self.close()
        first = True
        while self._waiters:  # (those after the first: nothing of theirs was read)
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(exc if first else _Closed(str(exc), early=True))
            first = False


class _Closed(HttpError):
    def __init__(self, why: str, early: bool) -> None:
        super().__init__(why)
        #: Nothing of an answer was read: the request may be sent again on a new connection.
        self.early = early


class WebhookClient:
    """``await request(method, url, body, headers)`` → :class:`Response`; raises
    TimeoutError after ``timeout`` seconds, :class:`HttpError` or OSError when no answer
    came. ``await close()`` at the end."""

    def __init__(
        self,
        *,
        timeout: float,
        max_idle: int,
        max_hosts: int = 256,
        max_body: int = 64 * 1024,
        user_agent: str = "smsc-webhooks",
        ssl_context: ssl.SSLContext | None = None,
        guard: CallbackGuard | None = None,
    ) -> None:
        self.timeout = timeout
        #: What guarded requests may connect to (None: a guarded request is refused).
        self.guard = guard
        self.max_idle = max_idle
        self.max_hosts = max_hosts
        self.max_body = max_body
        self._agent = f"User-Agent: {user_agent}\r\n".encode()
        self._idle: dict[tuple[str, str, int], list[_Conn]] = {}
        self._busy: set[_Conn] = set()
        self._targets: dict[str, _Target] = {}
        #: TLS settings for https URLs (None: the system's trust, made when first needed).
        self._ssl = ssl_context
        self.opened = 0  # connections opened, for tests and metrics

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        *,
        guarded: bool = False,
    ) -> Response:
        """``guarded``: connect only to an address :attr:`guard` allows (else
        CallbackRefused, before anything is sent)."""
        target = self._target(url)
        data = self._encode(method, target, body, headers)
        async with asyncio.timeout(self.timeout):
            while True:
                conn, reused = self._take(target.key), True
                if conn is not None and guarded and not self._reusable(conn):
                    conn.close()  # (opened for a trusted request: not for this one)
                    conn = None
                if conn is None:
                    conn, reused = await self._open(target, guarded), False
                self._busy.add(conn)
                try:
                    return await conn.send(data, method == "HEAD")
                except _Closed as exc:
                    if not (reused and exc.early):
                        raise
                    # a keep-alive connection the server had closed: once more, anew
                finally:
                    self._busy.discard(conn)
                    if conn.closed:
                        conn.close()
                    else:
                        self._give(target.key, conn)
                    # (a timeout cancels send's await: the connection is closed below)

    def _encode(
        self, method: str, target: _Target, body: bytes, headers: dict[str, str] | None
    ) -> bytes:
        lines = [f"{method} {target.target} HTTP/1.1\r\n".encode(), target.head, self._agent]
        for name, value in (headers or {}).items():
            if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
                raise HttpError(f"header {name!r} holds a line break")
            try:
                lines.append(f"{name}: {value}\r\n".encode("latin-1"))
            except UnicodeEncodeError:
                raise HttpError(f"header {name!r} is not Latin-1") from None
        if body or method not in ("GET", "HEAD"):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        lines.append(b"\r\n")
        return b"".join(lines) + body

    async def post_many(
        self, url: str, requests: list[tuple[bytes, dict[str, str]]]
    ) -> list[Response | Exception]:
        """POST each (body, headers) to ``url`` (not guarded), pipelined on one
        connection (in one write): the answers, in order — or, for each that got none,
        why (TimeoutError, HttpError, OSError). The first answer is due within
        ``timeout`` (connecting included), each next one within ``timeout`` of the one
        before (a receiver answers pipelined requests one after another); an answer got
        stands whatever befalls those after it. The requests a server closed the
        connection on before answering (nothing of their answer read) are sent again, in
        order, on a new connection while each round gets some answered."""
        target = self._target(url)
        results: list[Response | Exception | None] = [None] * len(requests)
        datas: list[bytes] = []
        pending: list[int] = []
        for i, (body, headers) in enumerate(requests):
            try:
                datas.append(self._encode("POST", target, body, headers))
                pending.append(i)
            except HttpError as exc:
                datas.append(b"")
                results[i] = exc
        loop = asyncio.get_running_loop()
        waited = False  # (an answer waited for: the next one's deadline runs from it)
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                while pending:
                    conn, reused = self._take(target.key), True
                    if conn is None:
                        conn, reused = await self._open(target, False), False
                    self._busy.add(conn)
                    futures: list[asyncio.Future[Response]] = []
                    again = []
                    try:
                        futures = conn.send_many(b"".join(datas[i] for i in pending), len(pending))
                        for i, future in zip(pending, futures, strict=True):
                            if waited and not future.done():
                                deadline.reschedule(loop.time() + self.timeout)
                            waited = True
                            try:
                                results[i] = await future
                            except HttpError as exc:
                                results[i] = exc
                                if isinstance(exc, _Closed) and exc.early:
                                    again.append(i)  # (sent again below, unless no progress)
                    finally:
                        for future in futures:
                            future.cancel()  # (those not answered when the time ran out)
                        self._busy.discard(conn)
                        if conn.closed:
                            conn.close()
                        else:
                            self._give(target.key, conn)
                    if len(again) == len(pending) and not reused:
                        break  # a new connection that answered none: their errors stand
                    pending = again
        except TimeoutError as exc:
            for i, result in enumerate(results):
                if result is None or (isinstance(result, _Closed) and result.early):
                    results[i] = exc
        except (HttpError, OSError) as exc:  # (opening a connection failed)
            for i in pending:
                results[i] = exc
        return [r if r is not None else HttpError("no answer") for r in results]

    async def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()
        for conn in self._busy:
            conn.close()
        self._busy.clear()

    # --- the pool ---

    def _take(self, key: tuple[str, str, int]) -> _Conn | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if not conn.closed and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def _give(self, key: tuple[str, str, int], conn: _Conn) -> None:
        if conn.waiting:  # its request did not end (a timeout): out of step
            conn.close()
            return
        conns = self._idle.get(key)
        if conns is None:
            if len(self._idle) >= self.max_hosts:  # forget the host added longest ago
                for old in self._idle.pop(next(iter(self._idle))):
                    old.close()
            conns = self._idle[key] = []
        if len(conns) >= self.max_idle:
            conns.pop(0).close()
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def _allowed(self, address: str) -> bool:
        return self.guard is not None and self.guard.allows(address)

    def _reusable(self, conn: _Conn) -> bool:
        """May a guarded request go over ``conn``? (Judged once per connection.)"""
        if conn.allowed is None:
            conn.allowed = self._allowed(conn.address)
        return conn.allowed

    async def _open(self, target: _Target, guarded: bool) -> _Conn:
        loop = asyncio.get_running_loop()
        context = None
        if target.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        hosts = [target.host]
        if guarded:
            hosts = await self._allowed_addresses(target)
        error: OSError | None = None
        for host in hosts:  # (guarded: each address allowed, in the resolver's order)
            try:
                _, conn = await loop.create_connection(
                    lambda: _Conn(self.max_body),
                    host,
                    target.port,
                    ssl=context,
                    server_hostname=target.host if context is not None else None,
                )
            except OSError as exc:
                error = exc
                continue
            if guarded:
                conn.allowed = self._allowed(conn.address)
                if not conn.allowed:  # (never: it is an address we allowed)
                    conn.close()
                    raise CallbackRefused(self._refusal(target.host, conn.address))
            self.opened += 1
            return conn
        assert error is not None
        raise error

    async def _allowed_addresses(self, target: _Target) -> list[str]:
        """The addresses ``target``'s host resolves to that the guard allows, in the
        resolver's order; CallbackRefused when there are none."""
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        found = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allowed = [a for a in found if self._allowed(a)]
        if not allowed:
            raise CallbackRefused(self._refusal(target.host, ", ".join(found) or "nothing"))
        return allowed

    def _refusal(self, host: str, address: str) -> str:
        if self.guard is None:
            return f"{host}: callbacks given with a message are not allowed here"
        return self.guard.refusal(host, address)

    def _target(self, url: str) -> _Target:
        found = self._targets.get(url)
        if found is not None:
            return found
        if any(ord(c) <= 32 or ord(c) == 127 for c in url):  # (urlsplit drops some)
            raise HttpError(f"URL holds a space or control character: {url[:200]!r}")
        parts = urlsplit(url)
        try:
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("not http(s)")
            tls = parts.scheme == "https"
            port = parts.port or (443 if tls else 80)
            host = parts.hostname
            netloc = parts.netloc.rpartition("@")[2]
            if not netloc.isascii():  # an international name: its ASCII (IDNA) form
                ascii_host = host.encode("idna").decode("ascii")
                netloc = netloc.replace(host, ascii_host)
                host = ascii_host
        except ValueError:  # (UnicodeError is one)
            raise HttpError(f"not an http(s) URL: {url[:200]!r}") from None
        head = f"Host: {netloc}\r\n"
        if parts.username is not None:
            user = f"{parts.username}:{parts.password or ''}".encode()
            head += f"Authorization: Basic {base64.b64encode(user).decode()}\r\n"
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if not path.isascii():  # as a browser sends it: non-ASCII as UTF-8, %-escaped
            path = "".join(c if c.isascii() else quote(c) for c in path)
        found = _Target((parts.scheme, host, port), host, port, tls, head.encode(), path)
        if len(self._targets) >= 4096:
            self._targets.clear()
        self._targets[url] = found
        return found
