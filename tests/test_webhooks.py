"""Status and inbound webhooks end to end: a real App on loopback with a simulated carrier,
messages sent through the HTTP API (or over SMPP), events POSTed to a real aiohttp
receiver that fails its first calls; signatures checked, retries and Retry-After
observed, dead letters listed and sent again, events that outlive a restart."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import yaml
from http_fixtures import OTHER_KEY, SECRET, Client, Receiver, api_config, api_port
from loops import Run
from smsc_fixtures import DEADLINE, SYSTEM_ID, bind_client, profile, running_app, serve_process

from smppcore.constants import CommandStatus
from smppcore.pdu import SubmitSm
from smsc.app import App
from smsc.webhooks import SIGNATURE_HEADER, sign, verify


def client(app: App) -> Client:
    return Client(app.api_port)


def hooks(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {
        "webhooks": {
            "status_url": receiver.url("/status"),
            "inbound_url": receiver.url("/inbound"),
            "secret": SECRET,
            **extra,
        }
    }


async def send_one(c: Client, **fields: Any) -> str:
    reply = await c.post("/v1/messages", json_body={"to": "447700900001", "text": "hi", **fields})
    assert reply.status == 202, reply
    message_id: str = reply.body["messages"][0]["id"]
    return message_id


async def scrape(app: App) -> str:
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{app.http_port}/metrics"
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=DEADLINE)) as resp:
            return await resp.text()


def final_calls(receiver: Receiver, message_id: str) -> list[Any]:
    return [
        c
        for c in receiver.calls
        if c.event["data"].get("message_id") == message_id
        and c.event["type"] in ("message.delivered", "message.failed", "message.expired")
    ]


def test_signatures_verify_and_tampering_or_age_fails() -> None:
    body = b'{"type":"message.delivered"}'
    now = 1_700_000_000
    header = sign(SECRET, now, body)
    assert header.startswith(f"t={now},v1=")
    assert verify(SECRET, header, body, now + 10)
    assert not verify(SECRET, header, body + b" ", now)
    assert not verify("another-secret-0123456", header, body, now)
    assert not verify(SECRET, header, body, now + 3600)
    assert not verify(SECRET, "v1=abc", body, now)


def test_a_receipt_is_retried_after_500s_signed_and_carries_the_reference(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with Receiver(fail_first=2) as receiver:
            config = api_config(tmp_path, account=hooks(receiver))
            async with running_app(config) as app, client(app) as c:
                message_id = await send_one(c, reference="order-7")
                await receiver.wait_for(
                    lambda: any(x.status == 204 for x in final_calls(receiver, message_id))
                )
                calls = final_calls(receiver, message_id)
                assert [x.status for x in calls] == [500, 500, 204]
                assert len({x.event["id"] for x in calls}) == 1  # the same event, again
                for x in calls:
                    assert x.path == "/status"
                    assert verify(SECRET, x.headers[SIGNATURE_HEADER], x.body, time.time())
                event = calls[-1].event
                assert event["type"] == "message.delivered"
                assert event["data"]["reference"] == "order-7"
                assert event["data"]["state"] == "delivered"
                assert event["data"]["carrier"] == "fast"
                assert isinstance(event["sequence"], int)
                metrics = await scrape(app)
                acct = f'account="{SYSTEM_ID}"'
                assert f'smsc_webhook_posts_total{{{acct},outcome="retried"}} 2.0' in metrics
                assert f'smsc_http_messages_total{{{acct},outcome="accepted"}} 1.0' in metrics

    run(main())


def test_a_receiver_that_closes_each_connection_still_gets_every_event_once(
    run1: Run, tmp_path: Path
) -> None:
    """Receipts arriving together go pipelined (several POSTs in one write); a receiver
    that answers one and closes the connection gets the rest on new connections, within
    the same attempt: none is retried, each arrives once, signed."""

    async def main() -> None:
        async with Receiver(close=True) as receiver:
            config = api_config(tmp_path, account=hooks(receiver))
            async with running_app(config) as app, client(app) as c:
                ids = await asyncio.gather(*(send_one(c) for _ in range(20)))
                await receiver.wait_for(lambda: all(final_calls(receiver, i) for i in ids))
                for message_id in ids:
                    (call,) = final_calls(receiver, message_id)
                    assert call.status == 204
                    assert verify(SECRET, call.headers[SIGNATURE_HEADER], call.body, time.time())
                assert 'outcome="retried"' not in await scrape(app)

    run1(main())


def test_retry_after_is_honoured(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver(fail_first=1, fail_status=429, retry_after="1") as receiver:
            config = api_config(tmp_path, account=hooks(receiver), webhooks={"backoff_max": 5.0})
            async with running_app(config) as app, client(app) as c:
                message_id = await send_one(c)
                await receiver.wait_for(lambda: len(final_calls(receiver, message_id)) == 2)
                first, second = final_calls(receiver, message_id)
                assert first.status == 429
                assert second.status == 204
                assert second.at - first.at >= 1.0  # not before the receiver said

    run1(main())


def test_an_event_past_max_age_is_dead_lettered_listed_and_sent_again(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with Receiver(fail_first=10**6, fail_status=503) as receiver:
            config = api_config(tmp_path, account=hooks(receiver), webhooks={"max_age": 0.3})
            async with running_app(config) as app, client(app) as c:
                message_id = await send_one(c)
                sender = app.web.sender
                assert sender is not None
                assert await sender.wait_for(
                    lambda: sender.metrics.outcomes.get((SYSTEM_ID, "dead"), 0) >= 1, DEADLINE
                )
                failures = (await c.get("/v1/webhooks/failures")).body["failures"]
                (failure,) = failures
                assert failure["event"]["data"]["message_id"] == message_id
                assert failure["last_error"] == "HTTP 503"
                tried = len(receiver.calls)
                assert tried >= 1
                receiver.fail_first = 0  # the receiver is back
                reply = await c.post(f"/v1/webhooks/failures/{failure['id']}/retry")
                assert reply.status == 202
                await receiver.wait_for(lambda: bool(receiver.taken()))
                assert receiver.taken()[0].event["id"] == failure["event"]["id"]
                assert await sender.wait_for(lambda: app.web.outbox.waiting == 0, DEADLINE)
                assert (await c.get("/v1/webhooks/failures")).body["failures"] == []
                again = await c.post(f"/v1/webhooks/failures/{failure['id']}/retry")
                assert again.status == 404

    run1(main())


def test_a_message_callback_url_overrides_and_no_receipt_means_no_event(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with (
            Receiver() as receiver,
            running_app(api_config(tmp_path)) as app,
            client(app) as c,
        ):
            quiet = await send_one(c, receipt=False, callback_url=receiver.url("/quiet"))
            loud = await send_one(c, callback_url=receiver.url("/mine"), reference="x1")
            await receiver.wait_for(lambda: bool(final_calls(receiver, loud)))
            (call,) = final_calls(receiver, loud)
            assert call.path == "/mine"
            assert call.event["data"]["reference"] == "x1"
            assert SIGNATURE_HEADER not in call.headers  # the account has no secret
            assert final_calls(receiver, quiet) == []  # it asked for no receipt

    run1(main())


def test_receipts_of_smpp_submits_and_mo_go_to_the_accounts_webhooks(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with Receiver() as receiver:
            config = api_config(
                tmp_path, account=hooks(receiver), upstreams={"fast": {"mo_account": SYSTEM_ID}}
            )
            async with running_app(config) as app:
                esme = await bind_client(app)
                try:
                    resp = await esme.request(
                        SubmitSm(
                            destination_addr="447700900001",
                            short_message=b"over smpp",
                            registered_delivery=1,
                        )
                    )
                    assert resp.command_status == CommandStatus.ESME_ROK
                    message_id = resp.message_id  # type: ignore[attr-defined]
                    await receiver.wait_for(lambda: bool(final_calls(receiver, message_id)))
                    app.inject_mo("fast", text="STOP please", source="447700900099")
                    await receiver.wait_for(
                        lambda: any(x.event["type"] == "message.inbound" for x in receiver.calls)
                    )
                    assert esme.delivered == []  # neither came over SMPP
                finally:
                    await esme.close()
                inbound = next(x for x in receiver.calls if x.event["type"] == "message.inbound")
                assert inbound.path == "/inbound"
                assert inbound.event["data"]["text"] == "STOP please"
                assert inbound.event["data"]["from"] == "447700900099"
                assert verify(SECRET, inbound.headers[SIGNATURE_HEADER], inbound.body, time.time())

    run1(main())


def test_events_waiting_for_a_receiver_outlive_a_restart(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver(fail_first=10**6) as receiver:
            config = api_config(tmp_path, account=hooks(receiver))
            async with running_app(config) as app, client(app) as c:
                message_id = await send_one(c, reference="kept")
                await receiver.wait_for(lambda: bool(final_calls(receiver, message_id)))
            receiver.fail_first = 0
            async with running_app(config) as app:
                await receiver.wait_for(
                    lambda: any(x.status == 204 for x in final_calls(receiver, message_id))
                )
                taken = [x for x in final_calls(receiver, message_id) if x.status == 204]
                assert len(taken) == 1
                assert taken[0].event["data"]["reference"] == "kept"

    run1(main())


def test_an_event_being_retried_is_delivered_after_kill_9_and_restart(
    run1: Run, tmp_path: Path
) -> None:
    """``smsc serve`` killed while the receiver fails: the event waits in the outbox file
    and the next ``smsc serve`` delivers it, once."""

    async def main() -> None:
        async with Receiver(fail_first=10**6) as receiver:
            config = api_config(tmp_path, account=hooks(receiver))
            path = tmp_path / "smsc.yaml"
            path.write_text(yaml.safe_dump(msgspec.to_builtins(config)))
            args = ("--config", str(path), "--api-port", "0")
            async with serve_process(tmp_path, *args, name="first") as first:
                async with Client(api_port(first.lines)) as c:
                    message_id = await send_one(c, reference="survives")
                await receiver.wait_for(lambda: len(final_calls(receiver, message_id)) >= 2)
                first.proc.send_signal(signal.SIGKILL)
                assert await first.exit_code() == -signal.SIGKILL
            receiver.fail_first = 0
            async with serve_process(tmp_path, *args, name="second"):
                await receiver.wait_for(
                    lambda: any(x.status == 204 for x in final_calls(receiver, message_id))
                )
            taken = [x for x in final_calls(receiver, message_id) if x.status == 204]
            assert len(taken) == 1
            assert taken[0].event["data"]["reference"] == "survives"

    run1(main())


def test_a_stuck_receiver_holds_only_its_own_slots_and_never_delays_another_account(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        release = asyncio.Event()
        async with Receiver(hang=release) as stuck, Receiver() as healthy:
            config = api_config(
                tmp_path,
                account=hooks(stuck),
                other={"webhooks": {"status_url": healthy.url("/ok"), "secret": SECRET}},
                webhooks={"per_endpoint": 2, "timeout": 30.0},
            )
            async with running_app(config) as app, client(app) as c:
                for _ in range(5):
                    await send_one(c)
                await stuck.wait_for(lambda: stuck.open == 2)
                async with Client(app.api_port, f"Bearer {OTHER_KEY}") as other:
                    theirs = await send_one(other)
                await healthy.wait_for(lambda: bool(final_calls(healthy, theirs)))
                assert stuck.most_open == 2  # its per_endpoint cap, all the while
                release.set()
                await stuck.wait_for(lambda: len(stuck.taken()) == 5)

    run1(main())


def test_a_stuck_receivers_pipelined_events_never_take_the_slots_of_another_account(
    run1: Run, tmp_path: Path
) -> None:
    """Events pipelined on one connection to a receiver that stops answering hold that
    connection only: ``concurrency`` counts connections, so another account's event goes
    out at once (not after the stuck batch's timeout)."""

    async def main() -> None:
        release = asyncio.Event()
        async with Receiver(hang=release) as stuck, Receiver() as healthy:
            config = api_config(
                tmp_path,
                account=hooks(stuck),
                other={"webhooks": {"status_url": healthy.url("/ok"), "secret": SECRET}},
                webhooks={"per_endpoint": 1, "concurrency": 2, "timeout": 30.0},
            )
            async with running_app(config) as app, client(app) as c:
                sender, outbox = app.web.sender, app.web.outbox
                assert sender is not None
                for _ in range(6):
                    await send_one(c)
                # one POST hangs (the next ones pipelined behind it, or waiting for its
                # connection: per_endpoint)
                assert await sender.wait_for(lambda: outbox.waiting == 6, DEADLINE)
                await stuck.wait_for(lambda: stuck.open == 1)
                release.set()  # the first is answered; the next ones, pipelined on its
                release.clear()  # connection, hang: two events or more on one connection
                await stuck.wait_for(lambda: len(stuck.calls) == 1 and stuck.open == 1)
                async with Client(app.api_port, f"Bearer {OTHER_KEY}") as other:
                    theirs = await send_one(other)
                await healthy.wait_for(lambda: bool(final_calls(healthy, theirs)))
                release.set()
                await stuck.wait_for(lambda: len(stuck.taken()) == 6)

    run1(main())


def test_five_failures_in_a_row_open_the_receivers_breaker(run1: Run, tmp_path: Path) -> None:
    """One POST at a time to the receiver: after 5 failures in a row nothing goes to it
    for backoff_min (1 s) — not even the events never tried — then it is tried again."""

    async def main() -> None:
        release = asyncio.Event()
        async with Receiver(fail_first=10**6, hang=release) as receiver:
            config = api_config(
                tmp_path,
                account=hooks(receiver),
                # (timeout: the first POST is held until the 8 events are in the outbox; a
                # POST that timed out meanwhile would be retried and counted as a failure)
                webhooks={
                    "per_endpoint": 1,
                    "backoff_min": 1.0,
                    "backoff_max": 5.0,
                    "timeout": 30.0,
                },
            )
            async with running_app(config) as app, client(app) as c:
                for _ in range(8):
                    await send_one(c)
                sender = app.web.sender
                assert sender is not None
                # every receipt waits in the outbox (the first held by the receiver)
                assert await sender.wait_for(lambda: app.web.outbox.waiting == 8, DEADLINE)
                release.set()
                await receiver.wait_for(lambda: len(receiver.calls) >= 6)
                calls = receiver.calls
                assert len({x.event["id"] for x in calls[:5]}) == 5  # five events, once each
                assert calls[5].at - calls[4].at >= 0.9  # the breaker was open

    run1(main())


def test_intermediate_states_when_asked_come_first_in_sequence(run1: Run, tmp_path: Path) -> None:
    async def main() -> None:
        async with Receiver() as receiver:
            slow = {"receipt_delay": {"kind": "fixed", "ms": 100}}
            config = api_config(
                tmp_path, {"fast": profile(**slow)}, account=hooks(receiver, intermediate=True)
            )
            async with running_app(config) as app, client(app) as c:
                message_id = await send_one(c)

                def events() -> list[dict[str, Any]]:
                    return [
                        x.event
                        for x in receiver.taken()
                        if x.event["data"]["message_id"] == message_id
                    ]

                # Both, whatever order they arrive in: the two POSTs may be in flight at
                # once (per_endpoint > 1), and receivers order by sequence, not arrival.
                await receiver.wait_for(lambda: len(events()) >= 2)
                first, second = sorted(events(), key=lambda e: e["sequence"])
                assert [first["type"], second["type"]] == ["message.enroute", "message.delivered"]
                assert first["sequence"] < second["sequence"]
                assert first["id"] != second["id"]

    run1(main())


def test_a_full_outbox_refuses_a_receipt_and_the_carrier_sends_it_again(
    run1: Run, tmp_path: Path
) -> None:
    """ack_after: store and an outbox of one event: while the receiver holds the first,
    the second receipt cannot be queued, so the carrier's deliver_sm is answered a
    temporary error; the carrier sends it again, and once there is room it is kept and
    delivered. Nothing is lost."""

    async def main() -> None:
        release = asyncio.Event()
        async with Receiver(hang=release) as receiver:
            config = api_config(
                tmp_path,
                account=hooks(receiver),
                webhooks={"max_pending": 1, "timeout": 30.0},
                router={"ack_after": "store"},
            )
            async with running_app(config) as app, client(app) as c:
                sink, sender = app.web._sink, app.web.sender
                assert sink is not None
                assert sender is not None
                first = await send_one(c)
                await receiver.wait_for(lambda: receiver.open == 1)
                second = await send_one(c)
                assert await sender.wait_for(lambda: sink.refused >= 1, DEADLINE)
                release.set()
                await receiver.wait_for(
                    lambda: all(final_calls(receiver, m) for m in (first, second))
                )
                assert sink.dropped == 0
                metrics = await scrape(app)
                assert "smsc_webhook_events_refused_total" in metrics

    run1(main())
