"""The load harness end to end on loopback: against the carrier simulator (receipts,
throttling, dropped binds) and against scripted servers with known delays and receipts.

Workers run in the test's own event loop here (``LocalLink``; two of them where receipts
must cross from one worker's bind to the other's), so the counts can be checked against
what the server saw; tests/test_load_cli.py runs real worker processes. Every run is
bounded by its ``duration``/``messages`` and every wait by a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from carrier_fixtures import PASSWORD, SYSTEM_ID, profile, running_carrier
from loops import LOOP_FACTORIES, Run

from simulator.load.config import LoadConfig, decode_config
from simulator.load.run import Coordinator, LocalLink, run_load
from smppcore.aio import Connection, Handler, start_server
from smppcore.constants import CommandId, EsmClass, MessageState
from smppcore.pdu import (
    BindReceiverResp,
    BindTransceiverResp,
    BindTransmitterResp,
    DeliverSm,
    EnquireLink,
    Pdu,
    SubmitSm,
    SubmitSmResp,
)
from smppcore.session import SessionConfig
from smppcore.tlv import Tag, tlv

#: A whole run (binding, sending, draining, receipts, unbinding) must end within this.
RUN_DEADLINE = 9.0



@pytest.fixture
def run_uv() -> Iterator[Run]:
    with asyncio.Runner(loop_factory=LOOP_FACTORIES["uvloop"]) as runner:
        yield runner.run


def config(port: int, **sections: dict[str, Any]) -> LoadConfig:
    data: dict[str, Any] = {
        "target": {"port": port, "system_id": SYSTEM_ID, "password": PASSWORD},
        "binds": {"count": 1, "window": 20, "reconnect_delay": 0.02, "reconnect_delay_max": 0.1},
        "load": {"workers": 1},
        "report": {"progress": "never"},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return decode_config(data)


async def harness(cfg: LoadConfig) -> dict[str, Any]:
    async with asyncio.timeout(RUN_DEADLINE):
        return await run_load(cfg, launcher=LocalLink)


def assert_counts_add_up(s: dict[str, Any]) -> None:
    """Every submit_sm sent ended exactly one way."""
    assert s["submitted"] == (
        s["accepted"] + s["rejected"] + s["timeouts"] + s["lost"] + s["abandoned"]
    ), s
    assert s["rejected"] == sum(s["rejected_by_status"].values())
    assert s["retried"] >= s["resubmitted"]
    assert s["latency"]["count"] == s["accepted"] + s["rejected"]


# --- against the carrier simulator ------------------------------------------------------------


def test_counts_and_receipts_add_up_across_two_workers(run: Run) -> None:
    """Transmitter+receiver binds in two workers: receipts arrive on any receiver and are
    matched by the worker that owns the message id."""

    async def main() -> None:
        states = {"DELIVRD": 0.5, "UNDELIV": 0.3, "EXPIRED": 0.2}
        prof = profile(receipt_delay={"kind": "fixed", "ms": 30}, states=states)
        async with running_carrier(profiles={"default": prof}) as carrier:
            cfg = config(
                carrier.port,
                binds={"count": 2, "type": "transmitter+receiver"},
                load={"workers": 2, "messages": 1200, "duration": None},
                traffic={
                    "mix": [
                        {"weight": 4, "coding": "gsm7", "length": 60},
                        {"weight": 1, "coding": "ucs2", "length": 100, "long": "udh"},
                    ]
                },
                receipts={"grace": 5},
            )
            report = await harness(cfg)
            s = report["summary"]
            assert_counts_add_up(s)
            assert s["messages"] == 1200
            assert s["submitted"] > 1200  # the long ones took two submit_sm each
            assert s["accepted"] == s["submitted"]
            assert s["submitted"] == carrier.metrics.pdus_in[(CommandId.SUBMIT_SM, 0)]
            r = s["receipts"]
            assert r["received"] == s["accepted"]
            assert r["by_state"] == {k: v for k, v in carrier.metrics.receipts.items()}
            assert set(r["by_state"]) == set(states)
            assert (r["missing"], r["unmatched"], r["late"], r["pending_at_stop"]) == (0, 0, 0, 0)
            assert r["latency"]["min_ms"] >= 29.0
            assert s["connections"]["binds"] == 4
            assert (
                sum(p.get("accepted_per_s", 0) * p["seconds"] for p in report["series"])
                == (s["accepted"])
            )
            assert not s["interrupted"]
            assert s["complete"]

    run(main())


def test_throttling_is_counted_backed_off_and_retried(run_uv: Run) -> None:
    async def main() -> None:
        accounts = [
            {"system_id": SYSTEM_ID, "password": PASSWORD, "throughput": 200.0, "burst": 20}
        ]
        async with running_carrier(accounts=accounts) as carrier:
            cfg = config(
                carrier.port,
                binds={"count": 2, "window": 10},
                load={"rate": 600, "duration": 1.5},
                traffic={"registered_delivery": False},
                throttling={"backoff": 0.02, "backoff_max": 0.1, "max_retries": 1000},
            )
            s = (await harness(cfg))["summary"]
            assert_counts_add_up(s)
            throttled = carrier.metrics.pdus_out[(CommandId.SUBMIT_SM_RESP, 0x58)]
            assert s["throttled"] == throttled > 0
            assert s["resubmitted"] > 0
            assert s["rejected"] == 0  # every refusal was retried
            # The bucket allows 200/s plus its burst: what got through respects it.
            assert s["accepted"] <= 200 * (s["elapsed_s"] + 0.2) + 20
            assert s["accepted"] == carrier.metrics.pdus_out[(CommandId.SUBMIT_SM_RESP, 0)]

    run_uv(main())


def test_without_retry_throttled_submits_are_rejected_with_their_status(run_uv: Run) -> None:
    async def main() -> None:
        accounts = [
            {"system_id": SYSTEM_ID, "password": PASSWORD, "throughput": 100.0, "burst": 10}
        ]
        async with running_carrier(accounts=accounts) as carrier:
            cfg = config(
                carrier.port,
                load={"messages": 300, "duration": None},
                traffic={"registered_delivery": False},
                throttling={"retry": False, "backoff": 0.01, "backoff_max": 0.02},
            )
            s = (await harness(cfg))["summary"]
            assert_counts_add_up(s)
            assert s["rejected_by_status"] == {"ESME_RTHROTTLED": s["throttled"]}
            assert s["throttled"] > 0
            assert s["accepted"] + s["throttled"] == 300

    run_uv(main())


def test_queue_full_is_counted_like_throttling(run_uv: Run) -> None:
    async def main() -> None:
        prof = profile(receipt_delay={"kind": "fixed", "ms": 5000}, max_pending=50)
        async with running_carrier(profiles={"default": prof}) as carrier:
            cfg = config(
                carrier.port,
                load={"messages": 80, "duration": None},
                traffic={"registered_delivery": False},
                throttling={"retry": False, "backoff": 0.01, "backoff_max": 0.02},
            )
            s = (await harness(cfg))["summary"]
            assert_counts_add_up(s)
            assert s["accepted"] == 50
            assert s["queue_full"] == 30
            assert s["rejected_by_status"] == {"ESME_RMSGQFUL": 30}

    run_uv(main())


def test_a_dropped_bind_is_made_again_and_the_run_goes_on(run: Run) -> None:
    async def main() -> None:
        prof = profile(misbehave={"drop_after_pdus": 150})
        async with running_carrier(profiles={"default": prof}) as carrier:
            cfg = config(
                carrier.port,
                binds={"count": 2, "window": 10},
                load={"messages": 1000, "duration": None},
                traffic={"registered_delivery": False},
            )
            s = (await harness(cfg))["summary"]
            assert_counts_add_up(s)
            conn = s["connections"]
            assert conn["drops"] >= 5
            assert conn["reconnects"] >= 5
            assert conn["binds"] == 2 + conn["reconnects"]
            assert s["lost"] > 0  # in flight when the connection went
            assert s["messages"] == 1000
            assert s["accepted"] == carrier.metrics.pdus_out[(CommandId.SUBMIT_SM_RESP, 0)]

    run(main())


def test_a_refused_first_bind_is_fatal(run_uv: Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            cfg = config(carrier.port, target={"password": "wrong"})
            s = (await harness(cfg))["summary"]
            assert "ESME_RINVPASWD" in s["error"]
            assert s["submitted"] == 0

    run_uv(main())


def test_nothing_listening_is_fatal(run_uv: Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            port = carrier.port
        s = (await harness(config(port, binds={"connect_timeout": 2})))["summary"]
        assert f"cannot bind to 127.0.0.1:{port}" in s["error"]

    run_uv(main())


# --- against scripted servers -----------------------------------------------------------------


class Script:
    """A tiny MC: answers binds and submit_sm after ``delay(n)`` seconds for the n-th submit,
    with message id ``m<n>``; ``receipt(n)`` says whether a receipt goes "before" the
    submit_sm_resp, "after" it, or not at all (None)."""

    def __init__(
        self,
        *,
        delay: Callable[[int], float] = lambda n: 0.0,
        receipt: Callable[[int], str | None] = lambda n: None,
        notify_at: int = 0,
    ) -> None:
        self.delay = delay
        self.receipt = receipt
        self.submits = 0
        self.notify_at = notify_at
        self.reached = asyncio.Event()
        self.conns: list[Connection] = []

    def handler(self, conn: Connection) -> Handler:
        self.conns.append(conn)
        return _ScriptHandler(self)


def receipt_pdu(message_id: str, state: MessageState = MessageState.DELIVERED) -> DeliverSm:
    text = f"id:{message_id} sub:001 dlvrd:001 submit date:2401010000 done date:2401010000"
    return DeliverSm(
        esm_class=int(EsmClass.DELIVERY_RECEIPT),
        short_message=f"{text} stat:DELIVRD err:000 text:hi".encode(),
        tlvs=(tlv(Tag.RECEIPTED_MESSAGE_ID, message_id), tlv(Tag.MESSAGE_STATE, int(state))),
    )


def _deliver(conn: Connection, pdu: Pdu) -> None:
    if conn.closed or conn.session.closed:
        return
    fut = conn.send_request(pdu)
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())


class _ScriptHandler(Handler):
    def __init__(self, script: Script) -> None:
        self.script = script

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        resp_cls = {
            CommandId.BIND_TRANSCEIVER: BindTransceiverResp,
            CommandId.BIND_TRANSMITTER: BindTransmitterResp,
            CommandId.BIND_RECEIVER: BindReceiverResp,
        }.get(CommandId(pdu.command_id))
        if resp_cls is not None:
            conn.respond(resp_cls(pdu.sequence_number, 0, "script"))
            return
        if not isinstance(pdu, SubmitSm):
            super().request_received(conn, pdu)
            return
        script = self.script
        n = script.submits
        script.submits += 1
        if script.notify_at and script.submits >= script.notify_at:
            script.reached.set()
        message_id = f"m{n}"
        loop = asyncio.get_running_loop()
        resp = SubmitSmResp(pdu.sequence_number, 0, message_id)
        when = script.receipt(n)
        if when == "before":
            _deliver(conn, receipt_pdu(message_id))
        delay = script.delay(n)
        if delay:
            loop.call_later(delay, _respond, conn, resp)
        else:
            conn.respond(resp)
        if when == "after":
            loop.call_later(delay + 0.005, _deliver, conn, receipt_pdu(message_id))


def _respond(conn: Connection, resp: Pdu) -> None:
    if not conn.closed and not conn.session.closed:
        conn.respond(resp)


SERVER_SESSION = SessionConfig(
    window=1000,
    inbound_window=1000,
    enquire_link_interval=None,
    inactivity_timeout=None,
    session_init_timeout=None,
)


@asynccontextmanager
async def scripted(script: Script) -> Any:
    server = await start_server(script.handler, config=SERVER_SESSION)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for conn in script.conns:
            conn.close()
        async with asyncio.timeout(5):
            await server.wait_closed()


def test_percentiles_are_right_on_a_known_delay_profile(run: Run) -> None:
    """The n-th submit is answered after (n mod 10 + 1) × 10 ms: ten equal shares of
    10, 20, ..., 100 ms, so p50 is 50 ms, p90 90 ms, p99 and max 100 ms."""

    async def main() -> None:
        script = Script(delay=lambda n: (n % 10 + 1) / 100)
        async with scripted(script) as port:
            cfg = config(
                port,
                binds={"count": 1, "window": 100},
                load={"messages": 1000, "duration": None},
                traffic={"registered_delivery": False},
            )
            s = (await harness(cfg))["summary"]
        lat = s["latency"]
        assert lat["count"] == 1000 == s["accepted"]
        # The delays set lower bounds the harness must never undercut (uvloop may fire a
        # timer 1 ms early), and the percentiles must keep their order. Server and harness
        # share this loop, and CI loads the machine: answers come late by amounts no bound
        # can fix (p50 was seen at 228 ms), so no upper bounds here; the histogram's
        # accuracy is tested exactly in test_load_units.py.
        assert lat["min_ms"] >= 9.0
        assert lat["p50_ms"] >= 49.0
        assert lat["p90_ms"] >= 89.0
        assert lat["p99_ms"] >= 99.0
        assert lat["min_ms"] <= lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert lat["mean_ms"] >= 54.0

    run(main())


def test_open_loop_counts_latency_from_the_intended_send_time(run_uv: Run) -> None:
    """A server answering in 100 ms behind a window of 5 carries 50 msg/s; asked for 200/s,
    the messages queue in the generator. Latency from the intended time shows the queue
    (coordinated omission accounted for); the service time alone would hide it."""

    async def main() -> None:
        script = Script(delay=lambda n: 0.1)
        async with scripted(script) as port:
            cfg = config(
                port,
                binds={"count": 1, "window": 5},
                load={"rate": 200, "duration": 1.0},
                traffic={"registered_delivery": False},
            )
            s = (await harness(cfg))["summary"]
        assert_counts_add_up(s)
        service, latency = s["service_time"], s["latency"]
        assert 99.0 <= service["p50_ms"] <= 110.0
        assert latency["p99_ms"] > 5 * service["p99_ms"]
        assert latency["max_ms"] > 600
        assert s["accepted"] <= 60
        assert s["unsent"] >= 130
        assert s["mode"] == "open-loop"
        assert s["target_rate"] == 200

    run_uv(main())


def test_open_loop_keeps_its_rate_when_the_server_keeps_up(run_uv: Run) -> None:
    """The scripted server and the harness share this loop, so the server keeps up only
    while the process gets the CPU for both: 400/s leaves a slow, loaded CI machine room
    (at 1000/s, pinned to one busy core, it fell a fifth behind its schedule)."""

    async def main() -> None:
        script = Script()
        async with scripted(script) as port:
            cfg = config(
                port,
                binds={"count": 2},
                load={"rate": 400, "ramp": 0.5, "duration": 1.5},
                traffic={"registered_delivery": False},
            )
            s = (await harness(cfg))["summary"]
        # 100 messages during the ramp (its area), then 400/s for one second: each one
        # scheduled was sent or is counted unsent, and (the server keeping up) sent.
        assert s["messages"] + s["unsent"] == pytest.approx(500, abs=3)
        assert s["messages"] == pytest.approx(500, abs=3)
        assert s["unsent"] <= 3
        assert s["latency"]["p50_ms"] < 5

    run_uv(main())


def test_receipts_early_late_missing_unmatched_and_mo(run: Run) -> None:
    """Receipts for even submits (every fourth one before its submit_sm_resp), none for
    odd ones; plus two receipts for ids nobody sent and three MO messages."""

    async def main() -> None:
        def receipt(n: int) -> str | None:
            return None if n % 2 else ("before" if n % 4 == 0 else "after")

        script = Script(receipt=receipt, notify_at=200)
        async with scripted(script) as port:
            cfg = config(
                port,
                binds={"count": 2, "window": 10},
                load={"workers": 2, "messages": 200, "duration": None},
                receipts={"grace": 0.3},
            )
            run_task = asyncio.ensure_future(harness(cfg))
            async with asyncio.timeout(RUN_DEADLINE):
                await script.reached.wait()
            conn = script.conns[0]
            for message_id in ("nobody-1", "nobody-2"):
                _deliver(conn, receipt_pdu(message_id))
            for text in (b"hello", b"STOP", b"yes"):
                _deliver(conn, DeliverSm(source_addr="4477", short_message=text))
            s = (await run_task)["summary"]
        r = s["receipts"]
        assert s["accepted"] == 200
        assert r["received"] == 100
        assert r["by_state"] == {"DELIVRD": 100}
        assert r["missing"] == 100
        assert r["unmatched"] == 2
        assert s["mo"] == 3

    run(main())


def test_stop_request_yields_a_partial_report(run_uv: Run) -> None:
    async def main() -> None:
        script = Script(delay=lambda n: 0.01, notify_at=300)
        async with scripted(script) as port:
            cfg = config(
                port,
                binds={"count": 2, "window": 10},
                load={"duration": 60},
                receipts={"grace": 60},
            )
            coordinator = Coordinator(cfg, launcher=LocalLink)
            task = asyncio.ensure_future(coordinator.run())
            async with asyncio.timeout(RUN_DEADLINE):
                await script.reached.wait()
                coordinator.request_stop()
                report = await task
        s = report["summary"]
        assert s["interrupted"] is True
        assert s["elapsed_s"] < RUN_DEADLINE
        assert s["messages"] >= 300
        assert_counts_add_up(s)
        assert s["accepted"] >= 300
        # No receipts come from this server: all still awaited when stopped, none "missing".
        assert s["receipts"]["pending_at_stop"] == s["accepted"]
        assert s["receipts"]["missing"] == 0
        assert report["series"]

    run_uv(main())


def test_enquire_link_both_ways_and_an_unbind_by_the_server(run_uv: Run) -> None:
    """The harness answers the server's enquire_link, probes an idle link itself, and binds
    again after the server unbinds it."""

    async def main() -> None:
        script = Script(delay=lambda n: 0.3, notify_at=5)
        async with scripted(script) as port:
            cfg = config(
                port,
                binds={"count": 1, "window": 5, "enquire_link_interval": 0.1},
                load={"duration": 1.5},
                traffic={"registered_delivery": False},
            )
            task = asyncio.ensure_future(harness(cfg))
            async with asyncio.timeout(RUN_DEADLINE):
                await script.reached.wait()
                first = script.conns[0]
                answer = await first.request(EnquireLink())
                assert answer.command_status == 0
                await first.unbind()  # the harness answers unbind_resp and binds again
                s = (await task)["summary"]
        conn = s["connections"]
        assert conn["enquire_links_received"] == 1
        assert conn["enquire_links_sent"] >= 1  # 0.1 s of silence while answers take 0.3 s
        assert conn["unbinds_by_peer"] == 1
        assert conn["reconnects"] == 1
        assert conn["binds"] == 2
        assert conn["drops"] == 0
        assert len(script.conns) == 2
        assert_counts_add_up(s)

    run_uv(main())
