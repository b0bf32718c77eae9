"""The API listener's fast lane (smsc/http_fast.py): plain ``POST /v1/messages`` requests
are read and answered by the lane, in order, on keep-alive and pipelined connections;
the first request that is not plain hands the connection to aiohttp, which answers it
and everything after it (other routes, chunked bodies, malformed heads, bodies over the
limit), over TCP and TLS. Raw sockets: what goes on the wire is what is asserted."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import ssl
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trustme
from carrier_fixtures import WarpLoop, advance
from http_fixtures import KEY, api_config
from loops import Run
from smsc_fixtures import DEADLINE, SYSTEM_ID, running_app

from smsc.http_config import HttpTls
from smsc.http_fast import MAX_HEAD, MORE, NOT_PLAIN, FastListener, read_plain


def post(to: str, *, key: str = KEY, extra: str = "", body: bytes | None = None) -> bytes:
    data = body if body is not None else json.dumps({"to": to, "text": "hi"}).encode()
    return (
        f"POST /v1/messages HTTP/1.1\r\nHost: smsc\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/json\r\n{extra}Content-Length: {len(data)}\r\n\r\n"
    ).encode() + data


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: smsc\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()


class Answer(msgspec.Struct, frozen=True):
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def answer(reader: asyncio.StreamReader) -> Answer:
    """The next answer on the connection (Content-Length or chunked body)."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).strip(), 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
    else:
        body = b""
    return Answer(status, headers, body)


async def exchange(port: int, data: bytes, count: int, **kw: Any) -> list[Answer]:
    """Write ``data`` at once and read ``count`` answers."""
    async with asyncio.timeout(DEADLINE):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, **kw)
        try:
            writer.write(data)
            return [await answer(reader) for _ in range(count)]
        finally:
            writer.close()


def test_plain_posts_on_one_connection_are_answered_in_turn(run: Run, tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_app(api_config(tmp_path)) as app:
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection("127.0.0.1", app.api_port)
                for n in range(3):
                    writer.write(post(f"4477009000{n:02d}"))
                    got = await answer(reader)
                    assert got.status == 202
                    assert got.headers["content-type"] == "application/json"
                    assert got.headers["date"].endswith(" GMT")
                    message = got.json()["messages"][0]
                    assert (message["to"], message["status"]) == (f"4477009000{n:02d}", "accepted")
                writer.close()

    run(main_())


def test_pipelined_posts_are_answered_in_order(run: Run, tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_app(api_config(tmp_path)) as app:
            numbers = [f"4477009001{n:02d}" for n in range(5)]
            got = await exchange(app.api_port, b"".join(post(n) for n in numbers), 5)
            assert [a.status for a in got] == [202] * 5
            assert [a.json()["messages"][0]["to"] for a in got] == numbers

    run(main_())


def test_a_long_pipeline_is_read_as_it_is_answered(run: Run, tmp_path: Path) -> None:
    """300 requests (~60 kB) in one write, over the lane's buffer bound (max_body + 8190
    octets): reading pauses and resumes; each is answered, in order."""

    async def main_() -> None:
        config = api_config(tmp_path)
        api = msgspec.structs.replace(config.http_api, max_body=1024)
        async with running_app(msgspec.structs.replace(config, http_api=api)) as app:
            numbers = [f"447700902{n:03d}" for n in range(300)]
            got = await exchange(app.api_port, b"".join(post(n) for n in numbers), 300)
            assert [a.json()["messages"][0]["to"] for a in got] == numbers

    run(main_())


def test_a_request_that_is_not_plain_hands_the_rest_of_the_connection_to_aiohttp(
    run: Run, tmp_path: Path
) -> None:
    async def main_() -> None:
        async with running_app(api_config(tmp_path)) as app:
            data = post("447700900201") + get("/v1/account") + post("447700900202")
            first, account, last = await exchange(app.api_port, data, 3)
            assert first.status == 202
            assert first.json()["messages"][0]["to"] == "447700900201"
            assert account.status == 200
            assert account.json()["system_id"] == SYSTEM_ID
            assert last.status == 202  # (now aiohttp's answer to the same route)
            assert last.json()["messages"][0]["to"] == "447700900202"

    run(main_())


def test_the_lane_answers_with_the_fields_aiohttp_answers_with(run: Run, tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_app(api_config(tmp_path)) as app:
            data = post("447700900211") + get("/v1/account") + post("447700900212")
            lane, _, route = await exchange(app.api_port, data, 3)
            assert (lane.status, route.status) == (202, 202)
            assert sorted(lane.headers) == sorted(route.headers)
            for name in ("content-type", "server"):
                assert lane.headers[name] == route.headers[name]

    run(main_())


def test_a_chunked_post_is_read_by_aiohttp(run: Run, tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_app(api_config(tmp_path)) as app:
            body = json.dumps({"to": "447700900301", "text": "chunked"}).encode()
            data = (
                f"POST /v1/messages HTTP/1.1\r\nHost: smsc\r\nAuthorization: Bearer {KEY}\r\n"
                "Transfer-Encoding: chunked\r\n\r\n"
            ).encode()
            data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
            (got,) = await exchange(app.api_port, data, 1)
            assert got.status == 202
            assert got.json()["messages"][0]["to"] == "447700900301"

    run(main_())


def test_a_compressed_post_is_read_by_aiohttp(run: Run, tmp_path: Path) -> None:
    """aiohttp inflates a body sent with ``Content-Encoding: gzip`` before the route reads
    it: such a request is not plain (the lane would give the route the gzip octets)."""

    async def main_() -> None:
        async with running_app(api_config(tmp_path)) as app:
            body = gzip.compress(json.dumps({"to": "447700900351", "text": "gz"}).encode())
            data = post("x", body=body, extra="Content-Encoding: gzip\r\n")
            (got,) = await exchange(app.api_port, data, 1)
            assert got.status == 202
            assert got.json()["messages"][0]["to"] == "447700900351"

    run(main_())


def test_bad_requests_get_the_same_answers_as_from_aiohttp(run: Run, tmp_path: Path) -> None:
    async def main_() -> None:
        config = api_config(tmp_path)
        api = msgspec.structs.replace(config.http_api, max_body=1024)
        async with running_app(msgspec.structs.replace(config, http_api=api)) as app:
            port = app.api_port
            (unknown,) = await exchange(port, post("447700900401", key="smsc_nope"), 1)
            assert unknown.status == 401
            assert unknown.headers["content-type"] == "application/problem+json"
            assert "Bearer" in unknown.headers["www-authenticate"]
            (broken,) = await exchange(port, post("x", body=b"{not json"), 1)
            assert broken.status == 400
            assert broken.json()["title"] == "Malformed body"
            (invalid,) = await exchange(port, post("not a number"), 1)
            assert (invalid.status, invalid.json()["field"]) == (422, "to")
            big = json.dumps({"to": "447700900402", "text": "x" * 2000}).encode()
            (too_big,) = await exchange(port, post("x", body=big), 1)
            assert too_big.status == 413
            assert too_big.headers["content-type"] == "application/problem+json"
            bad_head = b"POST /v1/messages HTTP/1.1\r\nHost smsc\r\nContent-Length: 2\r\n\r\n{}"
            (malformed,) = await exchange(port, bad_head, 1)
            assert malformed.status == 400

    run(main_())


def test_connection_close_is_answered_then_the_connection_closes(run: Run, tmp_path: Path) -> None:
    async def main_() -> None:
        async with running_app(api_config(tmp_path)) as app:
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection("127.0.0.1", app.api_port)
                writer.write(post("447700900501", extra="Connection: close\r\n"))
                got = await answer(reader)
                assert got.status == 202
                assert await reader.read() == b""
                writer.close()

    run(main_())


def test_the_lane_and_the_hand_off_work_over_tls(run: Run, tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "api.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "api.key"))

    async def main_() -> None:
        config = api_config(tmp_path)
        tls = HttpTls(cert=str(tmp_path / "api.pem"), key=str(tmp_path / "api.key"))
        api = msgspec.structs.replace(config.http_api, tls=tls)
        async with running_app(msgspec.structs.replace(config, http_api=api)) as app:
            ctx = ssl.create_default_context()
            ca.configure_trust(ctx)
            data = post("447700900601") + post("447700900602") + get("/v1/account")
            first, second, account = await exchange(app.api_port, data, 3, ssl=ctx)
            assert [first.status, second.status, account.status] == [202, 202, 200]
            assert second.json()["messages"][0]["to"] == "447700900602"
            assert account.json()["system_id"] == SYSTEM_ID

    run(main_())


def test_an_idle_connection_is_closed_after_keepalive() -> None:
    """On a loop whose clock the test moves: the request is answered well within
    ``keepalive`` however slow the machine, and the close comes when the clock passes it."""
    keepalive = 60.0

    async def handler(authorization: str, key: str | None, body: bytes) -> Any:
        return 202, "application/json", b"{}", {}

    async def main_() -> None:
        listener = FastListener(handler, lambda: None, max_body=1024, keepalive=keepalive)
        await listener.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
                writer.write(post("447700900701"))
                assert (await answer(reader)).status == 202
            advance(keepalive + keepalive / 8)  # (past keepalive, and the sweep after it)
            async with asyncio.timeout(DEADLINE):
                assert await reader.read() == b""  # closed by the listener, idle
                writer.close()
        finally:
            await listener.stop(1.0)

    with asyncio.Runner(loop_factory=WarpLoop) as runner:
        runner.run(main_())


@pytest.mark.parametrize("why", ["a field not Latin-1", "the handler failed"])
def test_an_answer_that_cannot_be_written_is_a_500_problem_and_the_connection_closes(
    run: Run, why: str
) -> None:
    """Not a hang: the client is answered (the request pipelined behind it is not taken:
    what the handler did is not known) and the connection closes."""
    bodies: list[bytes] = []

    async def handler(authorization: str, key: str | None, body: bytes) -> Any:
        bodies.append(body)
        if why == "the handler failed":
            raise RuntimeError("a bug")
        return 503, "application/problem+json", b"{}", {"Retry-After": "\u2026"}

    async def main_() -> None:
        listener = FastListener(handler, lambda: None, max_body=1024, keepalive=DEADLINE)
        await listener.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
                writer.write(post("447700900801", body=b"1") + post("447700900802", body=b"2"))
                got = await answer(reader)
                assert await reader.read() == b""  # closed after it
                writer.close()
        finally:
            await listener.stop(1.0)
        assert (got.status, got.headers["content-type"]) == (500, "application/problem+json")
        problem = json.loads(got.body)
        assert (problem["status"], problem["title"]) == (500, "Internal error")
        assert got.headers["connection"] == "close"
        assert bodies == [b"1"]

    run(main_())


@pytest.mark.parametrize(
    "start",
    [
        b"POST /v1/messages HTTP/1.1\r\nX: ",
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: 900\r\n\r\n",
    ],
    ids=["head", "body"],
)
def test_a_request_that_trickles_in_is_closed_after_keepalive(run: Run, start: bytes) -> None:
    """A head or a body sent an octet at a time, each well within ``keepalive``: the
    request is not whole ``keepalive`` seconds after the connection opened, and the
    connection is closed (octets moving do not keep it open)."""

    async def handler(authorization: str, key: str | None, body: bytes) -> Any:
        return 202, "application/json", b"{}", {}

    async def trickle(writer: asyncio.StreamWriter) -> None:
        writer.write(start)
        with contextlib.suppress(ConnectionError):
            while True:
                await asyncio.sleep(0.02)  # (the client's pace)
                writer.write(b"a")
                await writer.drain()

    async def main_() -> None:
        listener = FastListener(handler, lambda: None, max_body=1024, keepalive=0.2)
        await listener.start("127.0.0.1", 0)
        try:
            async with asyncio.timeout(DEADLINE):
                reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
                sender = asyncio.create_task(trickle(writer))
                try:
                    # closed by the listener (a reset: the octets it had not read)
                    with contextlib.suppress(ConnectionResetError):
                        assert await reader.read() == b""
                    assert reader.at_eof() or reader.exception() is not None
                finally:
                    sender.cancel()
                    await asyncio.gather(sender, return_exceptions=True)
                    writer.close()
        finally:
            await listener.stop(1.0)

    run(main_())


def test_stop_answers_the_request_in_progress_and_starts_no_other(run: Run) -> None:
    """A request pipelined behind the one being answered when the listener stops is not
    started (as aiohttp starts none at shutdown): the client gets the first answer, then
    the connection closes."""
    bodies: list[bytes] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(authorization: str, key: str | None, body: bytes) -> Any:
        bodies.append(body)
        started.set()
        await release.wait()
        return 202, "application/json", b"{}", {}

    async def main_() -> None:
        listener = FastListener(handler, lambda: None, max_body=1024)
        await listener.start("127.0.0.1", 0)
        async with asyncio.timeout(DEADLINE):
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(post("447700900751") + post("447700900752"))
            await started.wait()
            stopping = asyncio.create_task(listener.stop(DEADLINE))
            release.set()
            await stopping
            assert [json.loads(b)["to"] for b in bodies] == ["447700900751"]
            assert (await answer(reader)).status == 202
            assert await reader.read() == b""
            writer.close()

    run(main_())


# --- read_plain ------------------------------------------------------------------------------


def test_read_plain_takes_one_whole_request_and_leaves_the_next() -> None:
    first = post("447700900801", extra="Idempotency-Key: k-1\r\n")
    buf = bytearray(first + b"POST /v1/mess")
    got = read_plain(buf, 1024)
    assert not isinstance(got, str)
    assert (got.authorization, got.key) == (f"Bearer {KEY}", "k-1")
    assert json.loads(got.body)["to"] == "447700900801"
    assert buf == b"POST /v1/mess"
    assert read_plain(buf, 1024) == MORE


@pytest.mark.parametrize("cut", [1, 10, 40], ids=["line", "request-line", "head"])
def test_read_plain_waits_for_more_and_takes_nothing(cut: int) -> None:
    whole = post("447700900901")
    buf = bytearray(whole[:cut])
    assert read_plain(buf, 1024) == MORE
    assert buf == whole[:cut]


def test_read_plain_says_how_many_octets_a_request_whose_body_is_coming_needs() -> None:
    """(So that the lane waits for them without parsing the head again at each read.)"""
    whole = post("447700900902")
    buf = bytearray(whole[:-1])
    assert read_plain(buf, 1024) == len(whole)
    assert buf == whole[:-1]


@pytest.mark.parametrize(
    "data",
    [
        get("/v1/account"),
        b"POST /v1/messages HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/messages?x=1 HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"PUT /v1/messages HTTP/1.1\r\n",
        b"POST /v1/messages HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/messages HTTP/1.1\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/messages HTTP/1.1\r\nContent-Encoding: gzip\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: -2\r\n\r\n{}",
        b"POST /v1/messages HTTP/1.1\r\nContent-Length: 2000\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nHost: a\r\n folded\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/messages HTTP/1.1\r\nHost smsc\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/messages HTTP/1.1\r\nX: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
        b"POST /v1/messages HTTP/1.1\r\nX: " + b"a" * MAX_HEAD + b"\r\n\r\n",
        b"POST /v1/messages HTTP/1.1\r\nX: " + b"a" * MAX_HEAD,
    ],
    ids=[
        "other-route",
        "http-1.0",
        "query",
        "other-method",
        "chunked",
        "expect",
        "close",
        "upgrade",
        "compressed",
        "two-lengths",
        "bad-length",
        "over-max-body",
        "no-length",
        "folded",
        "no-colon",
        "control-octet",
        "long-head",
        "long-partial-head",
    ],
)
def test_read_plain_leaves_what_is_not_plain_to_aiohttp(data: bytes) -> None:
    buf = bytearray(data)
    assert read_plain(buf, 1024) == NOT_PLAIN
    assert buf == data
