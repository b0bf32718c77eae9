"""The webhook sender's HTTP/1.1 client against real servers on loopback: an aiohttp
application (keep-alive, chunked answers, slow answers, errors, TLS) and raw asyncio
servers for what aiohttp does not do on purpose (closing a kept-alive connection when the
next request arrives, answers framed by the connection's end, garbage)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from carrier_fixtures import WarpLoop, advance
from loops import Run
from smsc_fixtures import DEADLINE

from smsc.webhook_client import HttpError, WebhookClient


class Seen:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        self.release = asyncio.Event()
        self.allowed = 0  # (how many of /gated's requests may be answered)
        self.changed = asyncio.Condition()

    async def allow(self, n: int) -> None:
        """Lets /gated answer its first ``n`` requests."""
        async with self.changed:
            self.allowed = n
            self.changed.notify_all()

    async def arrived(self, n: int, deadline: float = DEADLINE) -> None:
        """Until /gated has ``n`` requests (the one before each answered: aiohttp takes
        pipelined requests one after another)."""
        async with asyncio.timeout(deadline), self.changed:
            await self.changed.wait_for(lambda: len(self.requests) >= n)


def aiohttp_app(seen: Seen) -> web.Application:
    async def hook(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        seen.requests.append((request.method, request.path_qs, dict(request.headers), body))
        return web.Response(status=204)

    async def chunked(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(status=200)
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"taken", b", ", b"thank you"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def busy(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=503, text="later", headers={"Retry-After": "7"})

    async def slow(request: web.Request) -> web.StreamResponse:
        await request.read()
        await seen.release.wait()
        return web.Response(status=200)

    async def gated(request: web.Request) -> web.StreamResponse:
        """Answers each request when the test allows it (or at the end)."""
        body = await request.read()
        async with seen.changed:
            index = len(seen.requests)
            seen.requests.append((request.method, request.path_qs, dict(request.headers), body))
            seen.changed.notify_all()
            await seen.changed.wait_for(lambda: seen.allowed > index or seen.release.is_set())
        return web.Response(status=204)

    async def large(request: web.Request) -> web.StreamResponse:
        await request.read()
        return web.Response(status=200, body=b"x" * 200_000)

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_get("/hook", hook)
    app.router.add_post("/chunked", chunked)
    app.router.add_post("/busy", busy)
    app.router.add_post("/slow", slow)
    app.router.add_post("/large", large)
    app.router.add_post("/gated", gated)
    return app


@asynccontextmanager
async def aiohttp_server(
    seen: Seen, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[str]:
    runner = web.AppRunner(aiohttp_app(seen), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        seen.release.set()
        async with seen.changed:
            seen.changed.notify_all()
        await runner.cleanup()


class Raw(asyncio.Protocol):
    """A raw server connection: ``answer(request_number, head)`` gives the bytes to write
    (None: close the connection without answering)."""

    def __init__(self, answer: Callable[[int, bytes], bytes | None], counts: list[int]) -> None:
        self.answer = answer
        self.counts = counts
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.counts.append(0)
        self.index = len(self.counts) - 1

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while b"\r\n\r\n" in self.buf:  # the client's requests here have no body
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            self.counts[self.index] += 1
            reply = self.answer(self.counts[self.index], head)
            if reply is None:
                self.transport.close()
                return
            self.transport.write(reply)


@asynccontextmanager
async def raw_server(
    answer: Callable[[int, bytes], bytes | None],
) -> AsyncIterator[tuple[str, list[int]]]:
    counts: list[int] = []
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Raw(answer, counts), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", counts
    finally:
        server.close()


def new_client(timeout: float = DEADLINE, **kw: object) -> WebhookClient:
    return WebhookClient(timeout=timeout, max_idle=4, **kw)  # type: ignore[arg-type]


def test_requests_reuse_one_kept_alive_connection(run: Run) -> None:
    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen) as base:
            client = new_client()
            for n in range(3):
                body = b'{"n": %d}' % n
                headers = {"Content-Type": "application/json", "Smsc-Event-Id": str(n)}
                resp = await client.request("POST", f"{base}/hook?x=1", body, headers)
                assert resp.status == 204
            resp = await client.request("GET", f"{base}/hook?a=b%20c")
            assert resp.status == 204
            await client.close()
        assert client.opened == 1
        assert [(m, p, b) for m, p, _, b in seen.requests] == [
            ("POST", "/hook?x=1", b'{"n": 0}'),
            ("POST", "/hook?x=1", b'{"n": 1}'),
            ("POST", "/hook?x=1", b'{"n": 2}'),
            ("GET", "/hook?a=b%20c", b""),
        ]
        headers = seen.requests[2][2]
        assert headers["Smsc-Event-Id"] == "2"
        assert headers["Content-Type"] == "application/json"
        assert headers["User-Agent"] == "smsc-webhooks"
        assert headers["Host"] == base.removeprefix("http://")

    run(main())


def test_chunked_answers_are_read_whole_and_the_connection_kept(run: Run) -> None:
    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen) as base:
            client = new_client()
            first = await client.request("POST", f"{base}/chunked", b"{}")
            second = await client.request("POST", f"{base}/chunked", b"{}")
            await client.close()
        assert first.status == second.status == 200
        assert first.body == second.body == b"taken, thank you"
        assert client.opened == 1

    run(main())


def test_error_answers_come_back_with_their_headers(run: Run) -> None:
    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen) as base:
            client = new_client()
            resp = await client.request("POST", f"{base}/busy", b"{}")
            missing = await client.request("POST", f"{base}/nowhere", b"{}")
            await client.close()
        assert (resp.status, resp.headers["retry-after"], resp.body) == (503, "7", b"later")
        assert missing.status == 404
        assert client.opened == 1

    run(main())


def test_a_large_body_is_read_but_kept_only_up_to_the_bound(run: Run) -> None:
    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen) as base:
            client = WebhookClient(timeout=DEADLINE, max_idle=4, max_body=1000)
            resp = await client.request("POST", f"{base}/large", b"{}")
            after = await client.request("POST", f"{base}/hook", b"{}")
            await client.close()
        assert (resp.status, resp.body) == (200, b"x" * 1000)
        assert after.status == 204
        assert client.opened == 1

    run(main())


def test_a_slow_answer_times_out_and_its_connection_is_not_reused(run: Run) -> None:
    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen) as base:
            client = new_client(timeout=0.3)
            with pytest.raises(TimeoutError):
                await client.request("POST", f"{base}/slow", b"{}")
            # The next request is not the one that times out: it gets the usual deadline
            # (0.3 s for a new connection and an answer is too little on a loaded machine).
            client.timeout = DEADLINE
            resp = await client.request("POST", f"{base}/hook", b"{}")
            await client.close()
        assert resp.status == 204
        assert client.opened == 2

    run(main())


def test_a_server_that_closes_kept_alive_connections_gets_the_request_anew(run: Run) -> None:
    def answer(n: int, head: bytes) -> bytes | None:
        # answers the first request on each connection, closes at the second
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if n == 1 else None

    async def main() -> None:
        async with raw_server(answer) as (base, counts):
            client = new_client()
            statuses = [(await client.request("POST", f"{base}/h", b"{}")).status for _ in "abc"]
            await client.close()
        assert statuses == [200, 200, 200]
        assert counts == [2, 2, 1]  # each connection: one answer, one request it dropped

    run(main())


def test_connection_close_and_answers_ended_by_the_close(run: Run) -> None:
    def answer(n: int, head: bytes) -> bytes | None:
        return b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"

    async def main() -> None:
        async with raw_server(answer) as (base, counts):
            client = new_client()
            first = await client.request("POST", f"{base}/close", b"{}")
            second = await client.request("POST", f"{base}/close", b"{}")
            await client.close()
        assert (first.status, second.status) == (202, 202)
        assert counts == [1, 1]  # "Connection: close": a new connection for the next

    def ender(n: int, head: bytes) -> bytes | None:
        return b"HTTP/1.0 200 OK\r\n\r\nall of it"

    async def by_eof() -> None:
        # the server writes the body and then closes: the body ends there
        loop = asyncio.get_running_loop()

        class Closing(Raw):
            def data_received(self, data: bytes) -> None:
                super().data_received(data)
                assert self.transport is not None
                self.transport.close()

        counts: list[int] = []
        server = await loop.create_server(lambda: Closing(ender, counts), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = new_client()
        resp = await client.request("POST", f"http://127.0.0.1:{port}/x", b"{}")
        again = await client.request("POST", f"http://127.0.0.1:{port}/x", b"{}")
        await client.close()
        server.close()
        assert (resp.status, resp.body) == (200, b"all of it")
        assert again.body == b"all of it"
        assert client.opened == 2  # an answer ended by the close is not kept alive

    run(main())
    run(by_eof())


def test_what_is_not_http_is_an_error_not_a_hang(run: Run) -> None:
    async def main() -> None:
        async with raw_server(lambda n, head: b"SSH-2.0-OpenSSH\r\n\r\n") as (base, _):
            client = new_client()
            with pytest.raises(HttpError, match="status line"):
                await client.request("POST", f"{base}/x", b"{}")
            await client.close()
        async with raw_server(lambda n, head: None) as (base, _):
            client = new_client()
            with pytest.raises(HttpError, match="closed"):
                await client.request("POST", f"{base}/x", b"{}")
            await client.close()
        client = new_client()
        with pytest.raises(HttpError, match="not an http"):
            await client.request("POST", "ftp://example.org/x", b"{}")
        with pytest.raises(HttpError, match="line break"):
            await client.request("POST", f"{base}/x", b"{}", {"X": "a\r\nInjected: 1"})
        with pytest.raises(ConnectionRefusedError):  # nobody listens there any more
            await client.request("POST", f"{base}/x", b"{}")
        await client.close()

    run(main())


def test_urls_are_sent_as_ascii_and_bad_ones_refused(run: Run) -> None:
    heads: list[bytes] = []

    def answer(n: int, head: bytes) -> bytes | None:
        heads.append(head)
        return b"HTTP/1.1 204 No Content\r\n\r\n"

    async def main() -> None:
        async with raw_server(answer) as (base, _):
            client = new_client()
            resp = await client.request("POST", f"{base}/h/caf\u00e9?q=\u00fc&r=%20")
            auth = base.replace("http://", "http://user:pa%3Ass@")
            await client.request("GET", f"{auth}/x")
            for bad in (f"{base}/a\x7fb", f"{base}/a\tb", "http://127.0.0.1:99999/x"):
                with pytest.raises(HttpError):
                    await client.request("POST", bad, b"{}")
            await client.close()
        assert resp.status == 204
        post = heads[0].split(b"\r\n")
        assert post[0] == b"POST /h/caf%C3%A9?q=%C3%BC&r=%20 HTTP/1.1"
        assert b"Content-Length: 0" in post
        get = heads[1].split(b"\r\n")
        assert get[0] == b"GET /x HTTP/1.1"
        assert b"Host: " + base.removeprefix("http://").encode() in get
        assert b"Authorization: Basic dXNlcjpwYSUzQXNz" in get  # user:pa%3Ass as written
        assert not any(h.lower().startswith(b"content-length") for h in get)

    run(main())


def test_https_through_the_loops_tls(run1: Run, tmp_path: Path) -> None:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen, server_ctx) as base:
            client = new_client(ssl_context=client_ctx)
            one = await client.request("POST", f"{base}/hook", b"1")
            two = await client.request("POST", f"{base}/chunked", b"2")
            await client.close()
            untrusted = new_client()  # the system's trust: the test CA is not in it
            with pytest.raises(ssl.SSLError):
                await untrusted.request("POST", f"{base}/hook", b"3")
            await untrusted.close()
        assert (one.status, two.status, two.body) == (204, 200, b"taken, thank you")
        assert client.opened == 1
        assert [b for *_, b in seen.requests] == [b"1"]

    run1(main())


def test_posts_pipelined_in_one_write_are_answered_in_order(run: Run) -> None:
    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen) as base:
            client = new_client()
            requests = [(b'{"n": %d}' % n, {"Smsc-Event-Id": str(n)}) for n in range(10)]
            answers = await client.post_many(f"{base}/hook", requests)
            busy = await client.post_many(f"{base}/busy", requests[:3])
            await client.close()
        assert [getattr(a, "status", a) for a in answers] == [204] * 10
        assert [b for _, _, _, b in seen.requests] == [b for b, _ in requests]
        assert [h["Smsc-Event-Id"] for _, _, h, _ in seen.requests] == [str(n) for n in range(10)]
        assert [(getattr(a, "status", a), a.headers["retry-after"]) for a in busy] == [  # type: ignore[union-attr]
            (503, "7")
        ] * 3
        assert client.opened == 1  # one connection, kept alive between the two writes

    run(main())


def test_pipelined_posts_a_server_closed_on_before_answering_are_sent_again(run: Run) -> None:
    def answer(n: int, head: bytes) -> bytes | None:
        # answers two requests on each connection, closes at the third
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok" if n <= 2 else None

    def nothing(n: int, head: bytes) -> bytes | None:
        return None  # closes at the first request, every time

    async def main() -> None:
        async with raw_server(answer) as (base, counts):
            client = new_client()
            answers = await client.post_many(f"{base}/h", [(b"", {})] * 5)
            await client.close()
        assert [getattr(a, "status", a) for a in answers] == [200] * 5
        assert counts == [3, 3, 1]  # each connection: two answers, one request it dropped
        async with raw_server(nothing) as (base, counts):
            client = new_client()
            answers = await client.post_many(f"{base}/h", [(b"", {})] * 3)
            await client.close()
        assert all(isinstance(a, HttpError) for a in answers)  # (no progress: not again)
        assert counts == [1]

    run(main())


def warped(main: Coroutine[Any, Any, None]) -> None:
    """Runs ``main`` on a loop whose clock the test moves (``advance``): a timeout that
    must fire fires when the clock is moved past it, however slow the machine."""
    with asyncio.Runner(loop_factory=WarpLoop) as runner:
        runner.run(main)


#: The client's timeout in the warped tests: far above any stall of the machine.
TIMEOUT = 60.0


def test_each_pipelined_answer_has_the_timeout_from_the_answer_before() -> None:
    """A receiver answers pipelined POSTs one after another, each ``TIMEOUT / 3`` after
    the one before: five take over ``TIMEOUT`` in all, and each is answered (the timeout
    is one POST's, not the batch's)."""
    step = TIMEOUT / 3

    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen) as base:
            client = new_client(timeout=TIMEOUT)
            posting = asyncio.create_task(client.post_many(f"{base}/gated", [(b"{}", {})] * 5))
            for n in range(1, 6):
                await seen.arrived(n)  # (so the answer before it was sent)
                if n > 1:
                    advance(step)
                await seen.allow(n)
            async with asyncio.timeout(DEADLINE + 5 * step):
                answers = await posting
            await client.close()
        assert [getattr(a, "status", a) for a in answers] == [204] * 5
        assert client.opened == 1

    warped(main())


def test_a_receiver_that_answers_the_first_and_stalls_the_rest() -> None:
    """The first answer stands (its event is delivered); the rest time out, ``timeout``
    seconds after it (the receiver never answers them)."""

    async def main() -> None:
        seen = Seen()
        async with aiohttp_server(seen) as base:
            client = new_client(timeout=TIMEOUT)
            posting = asyncio.create_task(client.post_many(f"{base}/gated", [(b"{}", {})] * 3))
            await seen.allow(1)
            await seen.arrived(2)  # the first answered; the second never will be
            for _ in range(5):  # (the clock past the deadline the first answer set)
                advance(TIMEOUT)
                await asyncio.wait([posting], timeout=DEADLINE)
                if posting.done():
                    break
            answers = posting.result()
            await client.close()
        assert getattr(answers[0], "status", answers[0]) == 204
        assert all(isinstance(a, TimeoutError) for a in answers[1:]), answers
        assert len(seen.requests) == 2  # (pipelined behind the second: never taken)

    warped(main())
