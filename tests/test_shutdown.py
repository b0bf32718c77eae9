"""Graceful shutdown keeps what was accepted: the messages still queued when smsc stops
(in ``ack_after: enqueue`` as in ``store`` mode) are in the store, and the next start on the
same store sends them and reports them to their account."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from loops import Run
from smsc_fixtures import (
    DEADLINE,
    FAST,
    app_config,
    bind_client,
    closed_port,
    running_app,
    stored,
    wait_final_receipts,
)

from router.config import CarrierConfig
from smppcore.constants import MessageState
from smppcore.pdu import EnquireLink
from smsc.app import App


@pytest.mark.parametrize("ack_after", ["enqueue", "store"])
def test_messages_queued_at_shutdown_are_sent_after_the_next_start(
    run1: Run, tmp_path: Path, ack_after: str
) -> None:
    async def main() -> None:
        # First run: the route's only carrier ("up") is a real one that is down, so every
        # accepted message is still queued when the node stops.
        live = app_config(tmp_path, {"up": {}}, router={"ack_after": ack_after})
        down = msgspec.structs.replace(
            live,
            simulated_carriers=(),
            router=msgspec.structs.replace(
                live.router,
                carriers=(CarrierConfig(name="up", port=closed_port(), binds=1),),
            ),
        )
        app = App(down)
        await app.start()
        try:
            esme = await bind_client(app, "tx")
            ids = [await esme.submit_ok() for _ in range(5)]
            assert app.router is not None
            assert app.router.queue_stats().depth == 5
            await esme.close()
        finally:
            async with asyncio.timeout(DEADLINE):
                await app.stop(timeout=2.0)

        # Second run, same store: the carrier is up now (simulated).
        async with running_app(live) as again:
            receiver = await bind_client(again, "rx")
            try:
                await wait_final_receipts(receiver, ids)
                for message_id in ids:
                    got = await stored(again, message_id)
                    assert got.state == MessageState.DELIVERED
                    assert got.carrier == "up"
            finally:
                await receiver.close()

    run1(main())


def test_shutdown_keeps_its_overall_deadline_with_a_carrier_that_never_answers(
    run1: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        hole = {"seed": 1, "misbehave": {"black_hole_after_pdus": 1}}  # answers the bind only
        config = app_config(
            tmp_path,
            {"hole": {**FAST, **hole}},
            upstreams={"hole": {"response_timeout": 60.0}},
            shutdown_timeout=1.0,
        )
        app = App(config)
        await app.start()
        loop = asyncio.get_running_loop()
        try:
            assert app.router is not None
            router = app.router
            await router.wait_carriers_bound(DEADLINE)
            esme = await bind_client(app, "trx")
            await esme.submit_ok()
            # A round trip on the session: the dispatcher (woken by the submit) has sent the
            # message upstream by the time the answer is back.
            await esme.request(EnquireLink())
            assert router.queue_stats().in_flight == 1
        finally:
            started = loop.time()
            async with asyncio.timeout(DEADLINE):
                await app.stop()  # shutdown_timeout: 1 s, though the submit waits up to 60 s
            took = loop.time() - started
        # What it must not do is wait for the submit's 60 s response_timeout. What it may
        # take: the 1 s budget, then the carrier's unbind grace (0.5 s: router/upstream.py
        # gives an unbind at least that, and this carrier never answers it), then the
        # simulators' and the store's close — ~1.6 s here, timers that a slow, loaded
        # machine does not shorten plus work that it lengthens; 3 s of slack for that.
        assert took < 1.0 + 0.5 + 3.0, took

    run1(main())


@pytest.mark.parametrize("ack_after", ["enqueue", "store"])
def test_a_submit_waiting_at_shutdown_is_answered_before_its_client_is_unbound(
    run1: Run, tmp_path: Path, ack_after: str
) -> None:
    """Intake pacing holds a submit unanswered while the queue is crowded. At shutdown it
    must be answered (accepted: it is queued and stored) before the client is unbound; an
    answer after the unbind never reaches the client, which then sends the message again."""

    async def main() -> None:
        hole = {"seed": 1, "misbehave": {"black_hole_after_pdus": 1}}  # answers the bind only
        config = app_config(
            tmp_path,
            {"hole": {**FAST, **hole}},
            upstreams={"hole": {"window": 1, "response_timeout": 60.0}},
            router={"ack_after": ack_after, "intake": {"pace_above": 1, "max_wait": 60.0}},
            shutdown_timeout=1.0,  # the in-flight submit is abandoned after it
        )
        app = App(config)
        await app.start()
        try:
            assert app.router is not None
            router = app.router
            await router.wait_carriers_bound(DEADLINE)
            esme = await bind_client(app, "trx")
            await esme.submit_ok()  # in flight to the carrier, which never answers
            await esme.submit_ok()  # queued: the carrier's window is full
            waiting = asyncio.ensure_future(esme.submit())  # paced: one ready is a crowd
            await esme.request(EnquireLink())  # the submit has reached the router
            assert router.paced == 1
            assert not waiting.done()
        finally:
            async with asyncio.timeout(DEADLINE):
                await app.stop()
        resp = await waiting
        assert resp.command_status == 0
        await esme.close()

    run1(main())
