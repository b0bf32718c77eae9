"""The application HTTP API across the nodes of a cluster: two ``smsc serve`` nodes (Apps)
on loopback sharing a real redis-server, each with the API on a port of its own, and the
simulated carrier ``sim`` with one bind for the whole cluster (node A holds it: every
receipt lands on A).

A message sent through node B's API with a ``callback_url`` gets its status event when its
receipt lands on node A; B's and A's API both list it and show it; an ``Idempotency-Key``
replayed on the other node replays the answer (the message is sent once); a webhook event
that node A was POSTing when it died is POSTed by node B once A's claim on it has lapsed;
with Redis away the API answers 503 problems and nothing it acknowledged is lost."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web
from http_fixtures import SECRET, Client, Receiver, api_config
from loops import Run
from redis_server import RedisServer, redis_server, redis_url  # noqa: F401
from smsc_fixtures import DEADLINE, running_app
from test_legacy_dlr import kannel
from test_legacy_http import Http

from smsc.app import App
from smsc.config import SmscConfig

LEASE = 2.0
HEARTBEAT = 0.1


def node_config(tmp_path: Path, url: str, node_id: int, **kw: Any) -> SmscConfig:
    where = tmp_path / f"node{node_id}"
    where.mkdir(exist_ok=True)
    return api_config(
        where,
        {"sim": {}},
        node_id=node_id,
        cluster={"redis": url, "lease": LEASE, "heartbeat": HEARTBEAT},
        **kw,
    )


@asynccontextmanager
async def two_nodes(tmp_path: Path, url: str, **kw: Any) -> AsyncIterator[tuple[App, App]]:
    """Node A (holds sim's one bind: receipts arrive there) and node B."""
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(running_app(node_config(tmp_path, url, 1, **kw)))
        b = await stack.enter_async_context(
            running_app(node_config(tmp_path, url, 2, **kw), wait_for=[])
        )
        assert a.cluster.bind_slots.get("sim") == 1
        assert b.cluster.bind_slots.get("sim", 0) == 0
        yield a, b


def final_events(receiver: Receiver, message_id: str) -> list[str]:
    return [
        c.event["type"]
        for c in receiver.taken()
        if c.event["data"].get("message_id") == message_id
        and c.event["type"] in ("message.delivered", "message.failed", "message.expired")
    ]


def test_a_message_sent_on_b_gets_its_callback_when_its_receipt_lands_on_a(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with Receiver() as receiver, two_nodes(tmp_path, redis_url) as (_a, b):
            async with Client(b.api_port) as on_b:
                reply = await on_b.post(
                    "/v1/messages",
                    json_body={
                        "to": "447700900001",
                        "text": "hi",
                        "callback_url": receiver.url("/cb"),
                        "reference": "order-7",
                    },
                )
            assert reply.status == 202, reply
            message_id = reply.body["messages"][0]["id"]
            await receiver.wait_for(lambda: bool(final_events(receiver, message_id)))
            assert final_events(receiver, message_id) == ["message.delivered"]
            call = next(c for c in receiver.taken() if c.event["data"]["message_id"] == message_id)
            assert call.path == "/cb"
            assert call.event["data"]["reference"] == "order-7"

    run1(main())


def test_either_node_shows_and_lists_the_messages_sent_through_both(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with (
            two_nodes(tmp_path, redis_url) as (a, b),
            Client(a.api_port) as on_a,
            Client(b.api_port) as on_b,
        ):
            sent = []
            for i, c in enumerate([on_a, on_b, on_a, on_b]):
                reply = await c.post(
                    "/v1/messages",
                    json_body={"to": f"44770090000{i}", "text": "hi", "reference": f"r{i}"},
                )
                assert reply.status == 202, reply
                sent.append(reply.body["messages"][0]["id"])
            for c in (on_a, on_b):
                for i, message_id in enumerate(sent):
                    shown = await c.get(f"/v1/messages/{message_id}")
                    assert shown.status == 200, shown
                    assert shown.body["reference"] == f"r{i}"
                listed = await c.get("/v1/messages", params={"limit": "3"})
                assert [m["id"] for m in listed.body["messages"]] == sent[::-1][:3]
                rest = await c.get(
                    "/v1/messages", params={"limit": "3", "cursor": listed.body["next_cursor"]}
                )
                assert [m["id"] for m in rest.body["messages"]] == sent[:1]
                one = await c.get("/v1/messages", params={"to": "447700900001"})
                assert [m["id"] for m in one.body["messages"]] == [sent[1]]

    run1(main())


def test_an_idempotency_key_replayed_on_the_other_node_sends_once(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with two_nodes(tmp_path, redis_url) as (a, b):
            async with Client(a.api_port) as on_a, Client(b.api_port) as on_b:
                body = {"to": "447700900001", "text": "once"}
                key = {"Idempotency-Key": "order-42"}
                first = await on_a.post("/v1/messages", json_body=body, headers=key)
                again = await on_b.post("/v1/messages", json_body=body, headers=key)
                other = await on_b.post(
                    "/v1/messages", json_body={**body, "text": "twice"}, headers=key
                )
                listed = await on_b.get("/v1/messages")
            assert first.status == again.status == 202
            assert again.body == first.body
            assert again.headers.get("Idempotent-Replayed") == "true"
            assert other.status == 422
            assert [m["id"] for m in listed.body["messages"]] == [first.body["messages"][0]["id"]]

    run1(main())


def test_one_idempotency_key_sent_on_both_nodes_at_once_sends_once(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with (
            two_nodes(tmp_path, redis_url) as (a, b),
            Client(a.api_port) as on_a,
            Client(b.api_port) as on_b,
        ):
            body = {"to": "447700900001", "text": "once"}
            key = {"Idempotency-Key": "order-43"}
            replies = await asyncio.gather(
                *(c.post("/v1/messages", json_body=body, headers=key) for c in (on_a, on_b))
            )
            statuses = sorted(r.status for r in replies)
            assert statuses in ([202, 202], [202, 409]), replies
            ids = {r.body["messages"][0]["id"] for r in replies if r.status == 202}
            assert len(ids) == 1
            listed = await on_b.get("/v1/messages")
            assert [m["id"] for m in listed.body["messages"]] == list(ids)
            again = await on_a.post("/v1/messages", json_body=body, headers=key)
            assert again.status == 202
            assert again.headers.get("Idempotent-Replayed") == "true"

    run1(main())


def test_kannels_callbacks_of_a_message_sent_on_b_come_from_a_in_order(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """dlr-mask 1|8 through B's Kannel endpoint: A submits it (its carrier's acceptance:
    type 8) and gets its receipt (type 1); A reads the dlr-url from the shared records."""

    async def main() -> None:
        async with (
            Receiver() as receiver,
            two_nodes(tmp_path, redis_url) as (_a, b),
            Http(b) as on_b,
        ):
            message_id = await kannel(on_b, receiver, "447700900001", 1 | 8)
            await receiver.wait_for(lambda: len(receiver.taken()) == 2)
            # put in the outbox in order (its event ids), POSTed at once (either may land first)
            calls = sorted(receiver.taken(), key=lambda c: int(c.headers["Smsc-Event-Id"]))
            assert [c.query["type"] for c in calls] == ["8", "1"]
            assert {c.query["id"] for c in calls} == {message_id}

    run1(main())


async def dead_lettered(nodes: list[App]) -> None:
    """Until one node's sender has dead-lettered an event (A's, as a rule: it has it)."""
    senders = [node.web.sender for node in nodes if node.web.sender is not None]

    def dead() -> bool:
        return any(s.metrics.outcomes.get(("acme", "dead"), 0) for s in senders)

    waits = [asyncio.create_task(s.wait_for(dead, DEADLINE)) for s in senders]
    try:
        done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        assert any(task.result() for task in done)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


def test_a_dead_letter_of_node_a_is_listed_and_sent_again_from_node_b(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with Receiver(fail_first=10**6, fail_status=503) as receiver:
            hooks = {"webhooks": {"status_url": receiver.url("/status"), "secret": SECRET}}
            async with (
                two_nodes(tmp_path, redis_url, account=hooks, webhooks={"max_age": 0.3}) as (a, b),
                Client(a.api_port) as on_a,
                Client(b.api_port) as on_b,
            ):
                reply = await on_a.post(
                    "/v1/messages", json_body={"to": "447700900001", "text": "x"}
                )
                assert reply.status == 202
                message_id = reply.body["messages"][0]["id"]
                await dead_lettered([a, b])
                for c in (on_a, on_b):  # (a read waits for the writes its node queued)
                    await c.get("/v1/webhooks/failures")
                listed_on_a = (await on_a.get("/v1/webhooks/failures")).body["failures"]
                listed_on_b = (await on_b.get("/v1/webhooks/failures")).body["failures"]
                assert listed_on_b == listed_on_a
                (failure,) = listed_on_b
                assert failure["event"]["data"]["message_id"] == message_id
                receiver.fail_first = 0  # the receiver is back
                again = await on_b.post(f"/v1/webhooks/failures/{failure['id']}/retry")
                assert again.status == 202
                await receiver.wait_for(lambda: bool(receiver.taken()))
                assert receiver.taken()[0].event["id"] == failure["event"]["id"]
                assert (await on_a.get("/v1/webhooks/failures")).body["failures"] == []
                twice = await on_a.post(f"/v1/webhooks/failures/{failure['id']}/retry")
                assert twice.status == 404

    run1(main())


class StuckThenAnswering:
    """A webhook receiver that leaves every call unanswered until :meth:`answer` (a node
    POSTing to it is stuck mid-POST); from then on it answers 204 and records the body."""

    def __init__(self) -> None:
        self.stuck = 0
        self.bodies: list[bytes] = []
        self.changed = asyncio.Event()
        self._answering = asyncio.Event()
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        self.url = ""

    async def __aenter__(self) -> StuckThenAnswering:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._answering.set()
        await self._runner.cleanup()

    def answer(self) -> None:
        self._answering.set()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not self._answering.is_set():
            self.stuck += 1
            self.changed.set()
            async with asyncio.timeout(DEADLINE):
                await self._answering.wait()
            return web.Response(status=503)  # (its caller is gone by now)
        self.bodies.append(body)
        self.changed.set()
        return web.Response(status=204)

    async def until(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


def test_an_event_a_dead_node_was_posting_is_posted_by_the_other_after_its_lease(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with StuckThenAnswering() as receiver, AsyncExitStack() as a_running:
            a = await a_running.enter_async_context(
                running_app(node_config(tmp_path, redis_url, 1))
            )
            async with running_app(node_config(tmp_path, redis_url, 2), wait_for=[]) as b:
                async with Client(a.api_port) as on_a:
                    reply = await on_a.post(
                        "/v1/messages",
                        json_body={
                            "to": "447700900001",
                            "text": "hi",
                            "callback_url": receiver.url,
                        },
                    )
                assert reply.status == 202, reply
                message_id = reply.body["messages"][0]["id"]
                await receiver.until(lambda: receiver.stuck >= 1)  # A is POSTing it
                await a_running.aclose()  # A dies mid-POST: its claim stays in Redis
                receiver.answer()
                await receiver.until(lambda: bool(receiver.bodies))
                [body] = receiver.bodies
                assert message_id.encode() in body
                assert b"message.delivered" in body
                sender = b.web.sender
                assert sender is not None
                assert await sender.wait_for(lambda: bool(sender.metrics.outcomes), DEADLINE)
                assert sender.metrics.outcomes == {("acme", "delivered"): 1}  # POSTed by B

    run1(main())


def test_a_node_that_stops_cleanly_gives_back_the_event_it_was_posting_at_once(
    run1: Run,
    redis_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Its claim would hold the event for webhooks.timeout + cluster.lease (32 s here,
    past the test's deadline): given back at the stop, the other node POSTs it now."""

    async def main() -> None:
        slow = {"webhooks": {"timeout": 30.0}}
        async with StuckThenAnswering() as receiver, AsyncExitStack() as a_running:
            a = await a_running.enter_async_context(
                running_app(node_config(tmp_path, redis_url, 1, **slow))
            )
            async with running_app(node_config(tmp_path, redis_url, 2, **slow), wait_for=[]) as b:
                async with Client(a.api_port) as on_a:
                    reply = await on_a.post(
                        "/v1/messages",
                        json_body={
                            "to": "447700900001",
                            "text": "hi",
                            "callback_url": receiver.url,
                        },
                    )
                assert reply.status == 202, reply
                await receiver.until(lambda: receiver.stuck >= 1)  # A is POSTing it
                await a_running.aclose()  # A stops cleanly mid-POST
                receiver.answer()
                sender = b.web.sender
                assert sender is not None
                assert await sender.wait_for(lambda: bool(sender.metrics.outcomes), DEADLINE)
                assert sender.metrics.outcomes == {("acme", "delivered"): 1}  # POSTed by B
                [body] = receiver.bodies
                assert reply.body["messages"][0]["id"].encode() in body

    run1(main())


def test_with_redis_away_the_api_answers_503_and_loses_nothing_it_acknowledged(
    run1: Run, tmp_path: Path
) -> None:
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis", aof=True, appendfsync="always")
    server.start()

    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(node_config(tmp_path, server.url, 1)) as a,
            Client(a.api_port) as c,
        ):

            async def send(to: str) -> int:
                body = {"to": to, "text": "hi", "callback_url": receiver.url("/cb")}
                reply = await c.post("/v1/messages", json_body=body)
                return reply.status

            assert await send("447700900001") == 202
            await receiver.wait_for(lambda: len(receiver.taken()) == 1)
            sender = a.web.sender
            assert sender is not None
            assert await sender.wait_for(lambda: bool(sender.metrics.outcomes), DEADLINE)
            assert await a.web.outbox.next_due(set()) is None  # (its outcome is written)
            server.stop()
            assert await send("447700900002") == 503
            for path in ("/v1/messages", "/v1/messages/1000001", "/v1/webhooks/failures"):
                reply = await c.get(path)
                assert reply.status == 503, (path, reply)
                assert reply.body["title"] == "Unavailable"
            server.start()  # same port: the node is not told
            async with asyncio.timeout(DEADLINE):
                while (status := await send("447700900003")) != 202:
                    assert status == 503  # (until the client has connected again)
            await receiver.wait_for(lambda: len(receiver.taken()) == 2)
            listed = await c.get("/v1/messages")
            assert [m["to"] for m in listed.body["messages"]] == ["447700900003", "447700900001"]

    try:
        run1(main())
    finally:
        server.stop()
