"""smppcore.aio: adapter tests with a fake transport (layer 2) and loopback tests against
tests/minimal_mc.py (layer 3), every one on both asyncio and uvloop.

Loops: each test is a plain function that runs its coroutine in an ``asyncio.Runner``
built by the shared ``run`` fixture (tests/loops.py), parametrized over both loops.

No test sleeps to wait: each awaits an event or a future under ``asyncio.timeout``. Timer
tests use short session timers (0.1-0.2 s).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import pytest
from loops import Run
from minimal_mc import DEADLINE, MinimalMC, frames, wire

from smppcore.aio import (
    READ_BUDGET,
    BindError,
    Connection,
    ConnectionClosed,
    Handler,
    RequestTimeout,
    connect,
)
from smppcore.constants import CommandStatus, EsmClass, MessageState
from smppcore.errors import LocalProtocolError
from smppcore.pdu import (
    BIND_CLASSES,
    BindTransceiver,
    BindTransceiverResp,
    BindTransmitter,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    SubmitSm,
    SubmitSmResp,
    Unbind,
    UnbindResp,
)
from smppcore.receipt import parse_receipt
from smppcore.session import ProtocolViolation, Role, SessionConfig, State
from smppcore.tlv import Tag

#: Session timers off, so that only what a test sets can fire.
QUIET = SessionConfig(
    enquire_link_interval=None, inactivity_timeout=None, session_init_timeout=None
)


def quiet(**changes: Any) -> SessionConfig:
    return msgspec.structs.replace(QUIET, **changes)


# --- a fake transport ---------------------------------------------------------------------


class FakeTransport(asyncio.Transport):
    """Records what the adapter does to its transport, in order, in :attr:`ops`."""

    def __init__(self, protocol: Connection) -> None:
        super().__init__()
        self.protocol = protocol
        self.ops: list[str] = []
        self.writes: list[bytes] = []
        self.reading = True
        self.pauses = 0
        self.resumes = 0
        self._closing = False
        self.wrote = asyncio.Event()
        self.closed = asyncio.Event()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self._closing, "write after close"
        self.writes.append(bytes(data))
        self.ops.append("write")
        self.wrote.set()

    def pause_reading(self) -> None:
        assert self.reading, "pause_reading while paused"
        self.reading = False
        self.pauses += 1
        self.ops.append("pause")

    def resume_reading(self) -> None:
        assert not self.reading, "resume_reading while reading"
        self.reading = True
        self.resumes += 1
        self.ops.append("resume")

    def is_reading(self) -> bool:
        return self.reading

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken at once

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self.ops.append("close")
        self.closed.set()
        # Like a real transport: connection_lost comes in a later callback.
        asyncio.get_running_loop().call_soon(self.protocol.connection_lost, None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("192.0.2.1", 2775)}.get(name, default)

    def sent(self) -> list[Pdu]:
        """Every PDU written so far (and forget them)."""
        data = b"".join(self.writes)
        self.writes.clear()
        self.wrote.clear()
        return frames(data)

    async def next_write(self) -> list[Pdu]:
        """Wait for the next write; returns the PDUs of every write so far."""
        async with asyncio.timeout(DEADLINE):
            await self.wrote.wait()
        return self.sent()


class Recorder(Handler):
    """Answers binds; answers other requests at once when ``answer``, else holds them."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.requests: list[Pdu] = []
        self.held: list[Pdu] = []
        self.violations: list[ProtocolViolation] = []
        self.closed: list[str] = []

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        self.requests.append(pdu)
        if isinstance(pdu, BIND_CLASSES):
            assert pdu.response_class is not None
            conn.respond(
                pdu.response_class(sequence_number=pdu.sequence_number, system_id="mc")  # type: ignore[call-arg]
            )
        elif self.answer:
            conn.respond(ok(pdu))
        else:
            self.held.append(pdu)

    def protocol_violation(self, conn: Connection, event: ProtocolViolation) -> None:
        self.violations.append(event)

    def session_closed(self, conn: Connection, reason: str) -> None:
        self.closed.append(reason)


def ok(pdu: Pdu) -> Pdu:
    assert pdu.response_class is not None
    if pdu.response_class is SubmitSmResp:
        return SubmitSmResp(
            sequence_number=pdu.sequence_number, message_id=f"m{pdu.sequence_number}"
        )
    return pdu.response_class(sequence_number=pdu.sequence_number)


def submit(seq: int = 0, text: bytes = b"hello") -> SubmitSm:
    return SubmitSm(
        sequence_number=seq, source_addr="1000", destination_addr="491701234567", short_message=text
    )


def fake(
    role: Role, config: SessionConfig | None = None, handler: Handler | None = None
) -> tuple[Connection, FakeTransport]:
    conn = Connection(role, config or QUIET, handler)
    transport = FakeTransport(conn)
    conn.connection_made(transport)
    return conn, transport


def bound_mc(
    config: SessionConfig | None = None, handler: Recorder | None = None
) -> tuple[Connection, FakeTransport, Recorder]:
    handler = handler or Recorder()
    conn, t = fake(Role.MC, config, handler)
    conn.data_received(wire(BindTransceiver(sequence_number=1, system_id="esme", password="pw")))
    [resp] = t.sent()
    assert isinstance(resp, BindTransceiverResp)
    assert resp.command_status == CommandStatus.ESME_ROK
    assert conn.session.state is State.BOUND_TRX
    return conn, t, handler


async def bound_esme(
    config: SessionConfig | None = None, handler: Handler | None = None
) -> tuple[Connection, FakeTransport]:
    conn, t = fake(Role.ESME, config, handler)
    fut = conn.send_request(BindTransceiver(system_id="esme", password="pw"))
    [bind] = await t.next_write()
    conn.data_received(wire(BindTransceiverResp(sequence_number=bind.sequence_number)))
    async with asyncio.timeout(DEADLINE):
        await fut
    assert conn.bound
    return conn, t


async def tick() -> None:
    """Let every callback scheduled so far run (call_soon is FIFO)."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, None)
    await fut


async def wait_done(fut: Awaitable[Any]) -> Any:
    async with asyncio.timeout(DEADLINE):
        return await fut


# --- layer 2: one write per batch ----------------------------------------------------------


def test_many_pdus_in_one_read_get_one_write(run: Run) -> None:
    async def main() -> None:
        conn, t, handler = bound_mc()
        batch = wire(*(submit(seq) for seq in range(2, 52)), EnquireLink(sequence_number=52))
        conn.data_received(batch)
        assert t.ops.count("write") == 2  # the bind_resp, then this whole batch
        answers = t.sent()
        # Responses may go out of order (§2.6): the core answers enquire_link while it reads,
        # the handler's answers follow in the same write.
        assert sorted((p.sequence_number, type(p).__name__) for p in answers) == [
            *((seq, "SubmitSmResp") for seq in range(2, 52)),
            (52, "EnquireLinkResp"),
        ]
        assert len(handler.requests) == 51  # the bind and 50 submits; enquire_link stays inside

    run(main())


def test_answers_given_later_in_one_tick_share_one_write(run: Run) -> None:
    async def main() -> None:
        conn, t, handler = bound_mc(handler=Recorder(answer=False))
        conn.data_received(wire(*(submit(seq) for seq in range(2, 32))))
        assert t.writes == []  # nothing answered yet
        for pdu in handler.held:
            conn.respond(ok(pdu))
        assert t.writes == []  # queued, flushed in one callback
        answers = await t.next_write()
        assert len(answers) == 30
        assert t.ops.count("write") == 2

    run(main())


def test_requests_sent_in_one_tick_share_one_write(run: Run) -> None:
    async def main() -> None:
        conn, t = await bound_esme(quiet(window=50))
        futs = [conn.send_request(submit()) for _ in range(20)]
        sent = await t.next_write()
        assert len(sent) == 20
        assert len({p.sequence_number for p in sent}) == 20
        conn.data_received(wire(*(ok(p) for p in sent)))
        responses = [await wait_done(f) for f in futs]
        assert [r.sequence_number for r in responses] == [p.sequence_number for p in sent]
        assert t.ops.count("write") == 2  # the bind, then the 20 submits

    run(main())


def test_with_coalesce_requests_of_several_turns_share_one_write_and_answers_do_not_wait(
    run: Run,
) -> None:
    """SessionConfig.coalesce: requests queued over several loop turns go out together
    once it has passed; an answer given meanwhile goes out at once, taking them along."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        conn, t = await bound_esme(quiet(window=50, coalesce=0.05))
        started = loop.time()
        first = [conn.send_request(submit()) for _ in range(3)]
        await asyncio.sleep(0)  # later loop turns, not a wait for anything
        await asyncio.sleep(0)
        second = [conn.send_request(submit()) for _ in range(2)]
        sent = await t.next_write()
        assert len(sent) == 5
        assert loop.time() - started >= 0.045  # uvloop's timers have 1 ms resolution
        conn.data_received(wire(*(ok(p) for p in sent)))
        for f in first + second:
            await wait_done(f)
        # An answer does not wait: it goes out now, with a request queued before it.
        queued = conn.send_request(submit())
        conn.data_received(wire(EnquireLink(sequence_number=77)))
        both = await t.next_write()
        assert [type(p) for p in both] == [SubmitSm, EnquireLinkResp]
        conn.data_received(wire(ok(both[0])))
        await wait_done(queued)

    run(main())


def test_coalescing_connections_on_one_loop_share_one_timer(run: Run) -> None:
    """Requests held back on several connections go out in one timer callback: a
    connection that starts holding later joins the tick already armed (it waits less than
    its coalesce, never more), and a shorter coalesce moves the tick earlier for all."""

    # Long coalesce times, so that a loaded machine's late loop turns cannot fire a tick
    # before the test looks (a 0.08 s coalesce with a 0.02 s sleep failed under load).
    slow, fast = 0.5, 0.005

    async def main() -> None:
        a, ta = await bound_esme(quiet(coalesce=slow))
        b, tb = await bound_esme(quiet(coalesce=slow))
        fa = a.send_request(submit())
        await asyncio.sleep(0)  # the scenario: b's request comes later (a loop turn later)
        fb = b.send_request(submit())
        assert not ta.writes
        assert not tb.writes
        [pa] = await ta.next_write()
        assert [type(p) for p in tb.sent()] == [SubmitSm]  # the same callback wrote both
        a.data_received(wire(ok(pa)))
        await wait_done(fa)
        fb.cancel()

        # d holds its requests longer than the test's deadline: they can only go out with
        # the earlier tick of a connection with a shorter coalesce (a wall-clock bound on
        # the wait, as here before, fails when a loaded machine stalls longer than that).
        d, td = fake(Role.ESME, quiet(coalesce=10 * DEADLINE))
        d_bound = d.send_request(BindTransceiver(system_id="esme", password="pw"))
        c, tc = await bound_esme(quiet(coalesce=fast))  # its bind's tick takes d's along
        [d_bind] = td.sent()
        d.data_received(wire(BindTransceiverResp(sequence_number=d_bind.sequence_number)))
        await wait_done(d_bound)
        fd = d.send_request(submit())
        fc = c.send_request(submit())
        await tc.next_write()
        assert [type(p) for p in td.sent()] == [SubmitSm]  # went with c's earlier tick
        fd.cancel()
        fc.cancel()

    run(main())


def test_a_large_read_is_handled_a_slice_per_loop_turn_with_reading_paused(run: Run) -> None:
    """A read of thousands of PDUs must not hold the loop: READ_BUDGET octets are handled
    now, the rest on later turns (reading paused meanwhile); every PDU is answered, in
    order, and reading resumes once the backlog is gone."""

    async def main() -> None:
        conn, t, handler = bound_mc(quiet(inbound_window=10_000))
        batch = wire(*(submit(seq) for seq in range(2, 2_002)))
        assert len(batch) > 4 * READ_BUDGET
        conn.data_received(batch)
        first = len(handler.requests) - 1  # the bind came first
        assert 0 < first < 2_000
        assert not t.reading
        async with asyncio.timeout(DEADLINE):
            while len(handler.requests) < 2_001:
                await tick()
        assert [p.sequence_number for p in handler.requests[1:]] == list(range(2, 2_002))
        assert sorted(p.sequence_number for p in t.sent()) == list(range(2, 2_002))
        assert t.reading
        assert (t.pauses, t.resumes) == (1, 1)

    run(main())


def test_pdus_split_across_reads_are_reassembled(run: Run) -> None:
    async def main() -> None:
        conn, t, handler = bound_mc()
        data = wire(submit(2), submit(3))
        for i in range(len(data)):
            conn.data_received(data[i : i + 1])
        assert [type(p) for p in t.sent()] == [SubmitSmResp, SubmitSmResp]
        assert [p.sequence_number for p in handler.requests[1:]] == [2, 3]

    run(main())


# --- layer 2: flow control -----------------------------------------------------------------


def test_reading_pauses_when_inbound_window_fills_and_resumes_when_answered(run: Run) -> None:
    async def main() -> None:
        conn, t, handler = bound_mc(quiet(inbound_window=5), Recorder(answer=False))
        conn.data_received(wire(*(submit(seq) for seq in range(2, 6))))  # 4 of 5
        assert t.is_reading()
        assert t.pauses == 0
        conn.data_received(wire(submit(6)))  # 5 of 5
        assert not t.is_reading()
        assert t.pauses == 1

        first = handler.held.pop(0)
        conn.respond(ok(first))
        assert t.is_reading()
        assert t.resumes == 1

        # 4 held; a burst of 3 in one read: one fits, two are throttled, reading pauses.
        conn.data_received(wire(submit(7), submit(8), submit(9)))
        assert not t.is_reading()
        assert t.pauses == 2
        written = t.sent()  # seq 2's answer (flushed with this batch) and two refusals
        assert [(p.sequence_number, p.command_status) for p in written] == [
            (2, CommandStatus.ESME_ROK),
            (8, CommandStatus.ESME_RTHROTTLED),
            (9, CommandStatus.ESME_RTHROTTLED),
        ]
        assert [p.sequence_number for p in handler.held] == [3, 4, 5, 6, 7]

        for pdu in handler.held:
            conn.respond(ok(pdu))
        assert t.is_reading()
        assert t.resumes == 2
        assert conn.session.inbound_pending == 0
        answers = await t.next_write()
        assert sorted(p.sequence_number for p in answers) == [3, 4, 5, 6, 7]

    run(main())


def test_drain_waits_for_resume_writing(run: Run) -> None:
    async def main() -> None:
        conn, _ = fake(Role.ESME)
        await conn.drain()  # writable: returns at once

        conn.pause_writing()
        waiter = asyncio.ensure_future(conn.drain(timeout=DEADLINE))
        done, _ = await asyncio.wait({waiter}, timeout=0.05)
        assert not done  # still paused
        conn.resume_writing()
        await wait_done(waiter)

    run(main())


def test_drain_has_a_deadline(run: Run) -> None:
    async def main() -> None:
        conn, _ = fake(Role.ESME, quiet(slot_timeout=0.1))
        conn.pause_writing()
        with pytest.raises(TimeoutError):
            await conn.drain(timeout=0.05)
        with pytest.raises(TimeoutError):
            await conn.drain()  # default deadline: slot_timeout
        conn.resume_writing()
        await conn.drain()

    run(main())


def test_drain_fails_when_connection_is_lost(run: Run) -> None:
    async def main() -> None:
        conn, _ = fake(Role.ESME)
        conn.pause_writing()
        waiter = asyncio.ensure_future(conn.drain(timeout=DEADLINE))
        await tick()
        assert not waiter.done()
        conn.connection_lost(ConnectionResetError())
        with pytest.raises(ConnectionClosed):
            await wait_done(waiter)
        with pytest.raises(ConnectionClosed):
            await conn.drain()

    run(main())


# --- layer 2: the futures of our requests -----------------------------------------------------


def test_pending_requests_fail_with_connection_closed_on_connection_lost(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        conn, t = await bound_esme(quiet(window=2), handler)
        futs = [conn.send_request(submit()) for _ in range(4)]
        assert conn.session.in_flight == 2
        assert conn.session.waiting == 2
        await t.next_write()

        conn.connection_lost(ConnectionResetError("peer reset"))
        for fut in futs:
            with pytest.raises(ConnectionClosed):
                await wait_done(fut)
        assert conn.closed
        assert handler.closed == ["connection lost"]
        await conn.wait_closed(DEADLINE)
        with pytest.raises(ConnectionClosed):
            conn.send_request(submit())

    run(main())


class LateHandler(Handler):
    """Records the late answers it hears of: (sequence number, status)."""

    def __init__(self) -> None:
        self.late: list[tuple[int, int]] = []

    def late_response(self, conn: Connection, request: Pdu, response: Pdu) -> None:
        assert request.sequence_number == response.sequence_number
        self.late.append((response.sequence_number, response.command_status))


def test_request_times_out_when_peer_never_answers(run: Run) -> None:
    async def main() -> None:
        handler = LateHandler()
        conn, t = await bound_esme(quiet(response_timeout=0.2), handler)
        fut = conn.send_request(submit())
        [sent] = await t.next_write()
        with pytest.raises(RequestTimeout) as info:
            await wait_done(fut)
        assert info.value.reason == "response"
        assert conn.bound
        conn.data_received(wire(ok(sent)))  # too late for the future: the handler hears it
        assert conn.session.late_responses == 1
        assert handler.late == [(sent.sequence_number, 0)]
        again = conn.send_request(submit())
        [second] = await t.next_write()
        conn.data_received(wire(ok(second)))
        assert (await wait_done(again)).command_status == CommandStatus.ESME_ROK

    run(main())


def test_request_times_out_waiting_for_a_window_slot(run: Run) -> None:
    async def main() -> None:
        conn, t = await bound_esme(quiet(window=1, slot_timeout=0.2, response_timeout=DEADLINE))
        first = conn.send_request(submit())
        second = conn.send_request(submit())
        with pytest.raises(RequestTimeout) as info:
            await wait_done(second)
        assert info.value.reason == "window"
        [sent] = await t.next_write()
        conn.data_received(wire(ok(sent)))
        assert (await wait_done(first)).command_status == CommandStatus.ESME_ROK

    run(main())


def test_waiting_request_goes_out_when_a_slot_frees(run: Run) -> None:
    async def main() -> None:
        conn, t = await bound_esme(quiet(window=1))
        first = conn.send_request(submit())
        second = conn.send_request(submit())
        [a] = await t.next_write()
        conn.data_received(wire(ok(a)))  # frees the slot: the second goes in the same batch
        [b] = t.sent()
        conn.data_received(wire(ok(b)))
        assert (await wait_done(first)).sequence_number == a.sequence_number
        assert (await wait_done(second)).sequence_number == b.sequence_number

    run(main())


def test_cancelled_request_propagates_and_its_late_answer_is_harmless(run: Run) -> None:
    async def main() -> None:
        conn, t = await bound_esme()
        task = asyncio.ensure_future(conn.request(submit()))
        [sent] = await t.next_write()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        conn.data_received(wire(ok(sent)))  # answered after the caller gave up
        assert conn.session.in_flight == 0
        assert conn.bound

    run(main())


def test_stall_stops_answers_reading_and_timers_but_keeps_the_link(run: Run) -> None:
    async def main() -> None:
        handler = Recorder(answer=False)
        conn, t, _ = bound_mc(quiet(enquire_link_interval=0.05), handler)
        conn.data_received(wire(submit(2)))
        conn.stall()
        assert not t.is_reading()
        conn.respond(ok(handler.held[0]))  # swallowed
        done, _ = await asyncio.wait({asyncio.ensure_future(t.wrote.wait())}, timeout=0.2)
        assert not done  # no answer, no enquire_link although its interval passed
        assert t.writes == []
        assert not t.is_closing()
        conn.connection_lost(None)
        await conn.wait_closed(DEADLINE)
        assert handler.closed == ["connection lost"]

    run(main())


# --- layer 2: the end of a session ---------------------------------------------------------


def test_peer_unbind_flushes_unbind_resp_then_closes(run: Run) -> None:
    async def main() -> None:
        conn, t, handler = bound_mc()
        conn.data_received(wire(Unbind(sequence_number=7)))
        async with asyncio.timeout(DEADLINE):
            await t.closed.wait()
        assert t.ops[-2:] == ["write", "close"]
        assert [(type(p), p.sequence_number) for p in t.sent()] == [(UnbindResp, 7)]
        await conn.wait_closed(DEADLINE)
        assert handler.closed == ["unbound by peer"]

    run(main())


def test_bad_command_length_gets_generic_nack_then_close(run: Run) -> None:
    async def main() -> None:
        conn, t, handler = bound_mc()
        conn.data_received(b"\x00\x00\x00\x08" + b"\x00\x00\x00\x04" + bytes(8))
        async with asyncio.timeout(DEADLINE):
            await t.closed.wait()
        assert t.ops[-2:] == ["write", "close"]
        [nack] = t.sent()
        assert isinstance(nack, GenericNack)
        assert nack.command_status == CommandStatus.ESME_RINVCMDLEN
        assert [v.status for v in handler.violations] == [CommandStatus.ESME_RINVCMDLEN]
        await conn.wait_closed(DEADLINE)

    run(main())


def test_unknown_command_gets_generic_nack_and_session_goes_on(run: Run) -> None:
    async def main() -> None:
        conn, t, handler = bound_mc()
        unknown = (16).to_bytes(4, "big") + (0x00000777).to_bytes(4, "big") + bytes(4)
        conn.data_received(unknown + (9).to_bytes(4, "big") + wire(submit(10)))
        [nack, resp] = t.sent()
        assert isinstance(nack, GenericNack)
        assert (nack.sequence_number, nack.command_status) == (9, CommandStatus.ESME_RINVCMDID)
        assert isinstance(resp, SubmitSmResp)
        await tick()
        assert not t.is_closing()
        assert conn.bound
        assert [v.status for v in handler.violations] == [CommandStatus.ESME_RINVCMDID]

    run(main())


def test_no_bind_within_session_init_timeout_closes(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        conn, t = fake(Role.MC, quiet(session_init_timeout=0.1), handler)
        async with asyncio.timeout(DEADLINE):
            await t.closed.wait()
        await conn.wait_closed(DEADLINE)
        assert handler.closed == ["no bind within session_init_timeout"]

    run(main())


def test_unanswered_enquire_link_closes(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        conn, t = await bound_esme(quiet(enquire_link_interval=0.1, response_timeout=0.2), handler)
        [probe] = await t.next_write()
        assert isinstance(probe, EnquireLink)
        async with asyncio.timeout(DEADLINE):
            await t.closed.wait()
        await conn.wait_closed(DEADLINE)
        assert handler.closed == ["enquire_link unanswered"]

    run(main())


def test_answered_enquire_link_keeps_the_session(run: Run) -> None:
    async def main() -> None:
        # Each probe is answered a loop turn or two after it is written: a short
        # response_timeout would close the session when the machine stalls in between
        # (what this test shows is that answered probes keep it, not how fast).
        conn, t = await bound_esme(quiet(enquire_link_interval=0.1, response_timeout=DEADLINE))
        for _ in range(3):
            [probe] = await t.next_write()
            assert isinstance(probe, EnquireLink)
            conn.data_received(wire(EnquireLinkResp(sequence_number=probe.sequence_number)))
            assert not conn.session.awaiting_responses  # the answer was matched to it
        assert conn.bound
        assert not t.is_closing()

    run(main())


def test_our_unbind_waits_for_unbind_resp_then_closes(run: Run) -> None:
    async def main() -> None:
        handler = Recorder()
        conn, t = await bound_esme(handler=handler)
        pending = conn.send_request(submit())
        task = asyncio.ensure_future(conn.unbind(timeout=DEADLINE))
        sent = await t.next_write()
        assert [type(p) for p in sent] == [SubmitSm, Unbind]
        conn.data_received(wire(ok(sent[0]), UnbindResp(sequence_number=sent[1].sequence_number)))
        await wait_done(task)
        assert conn.closed
        assert t.is_closing()
        assert (await wait_done(pending)).command_status == CommandStatus.ESME_ROK
        assert handler.closed == ["unbound"]

    run(main())


def test_our_unbind_closes_anyway_when_peer_is_silent(run: Run) -> None:
    async def main() -> None:
        conn, t = await bound_esme()
        await wait_done(asyncio.ensure_future(conn.unbind(timeout=0.1)))
        assert conn.closed
        assert t.is_closing()

    run(main())


def test_default_handler_refuses_requests(run: Run) -> None:
    async def main() -> None:
        conn, t = await bound_esme()  # the base Handler
        conn.data_received(wire(DeliverSm(sequence_number=5)))
        [resp] = t.sent()
        assert isinstance(resp, DeliverSmResp)
        assert resp.command_status == CommandStatus.ESME_RX_R_APPN

    run(main())


# --- layer 3: our connect() against the minimal MC on loopback ---------------------------


class Esme(Handler):
    """Our client's handler: answers deliver_sm, records it, wakes a waiter."""

    def __init__(self) -> None:
        self.delivered: list[DeliverSm] = []
        self.closed: list[str] = []
        self.changed = asyncio.Event()

    def request_received(self, conn: Connection, pdu: Pdu) -> None:
        if isinstance(pdu, DeliverSm):
            self.delivered.append(pdu)
            conn.respond(DeliverSmResp(sequence_number=pdu.sequence_number))
            self.changed.set()
        else:
            super().request_received(conn, pdu)

    def session_closed(self, conn: Connection, reason: str) -> None:
        self.closed.append(reason)
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], bool]) -> None:
        async with asyncio.timeout(DEADLINE):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


async def client(mc: MinimalMC, handler: Handler | None = None, **config: Any) -> Connection:
    conn = await connect(mc.host, mc.port, config=quiet(**config), handler=handler)
    return conn


def test_loopback_bind_submit_1000_receipt_unbind(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC(auto_receipt=False) as mc:
            esme = Esme()
            conn = await client(mc, esme, window=10)
            resp = await conn.bind(
                BindTransceiver(system_id="esme", password="secret", system_type="test")
            )
            assert isinstance(resp, BindTransceiverResp)
            assert resp.system_id == "minimal-mc"
            assert resp.tlv(Tag.SC_INTERFACE_VERSION) == 0x34
            assert conn.session.state is State.BOUND_TRX

            futs = [conn.send_request(submit(text=b"msg %d" % i)) for i in range(1000)]
            assert conn.session.in_flight == 10
            assert conn.session.waiting == 990
            async with asyncio.timeout(DEADLINE * 2):
                responses = await asyncio.gather(*futs)
            assert all(r.command_status == CommandStatus.ESME_ROK for r in responses)
            ids = [r.message_id for r in responses]  # type: ignore[attr-defined]
            assert len(set(ids)) == 1000
            assert ids == mc.message_ids
            assert [s.short_message for s in mc.submits] == [b"msg %d" % i for i in range(1000)]

            [mc_conn] = mc.bound("esme")
            ack = await wait_done(
                mc.push_receipt(
                    mc_conn, ids[-1], source_addr="491701234567", destination_addr="1000"
                )
            )
            assert isinstance(ack, DeliverSmResp)
            assert ack.command_status == CommandStatus.ESME_ROK
            await esme.wait_for(lambda: len(esme.delivered) == 1)
            [receipt] = esme.delivered
            assert receipt.esm_class == EsmClass.DELIVERY_RECEIPT
            assert receipt.tlv(Tag.RECEIPTED_MESSAGE_ID) == ids[-1]
            assert receipt.tlv(Tag.MESSAGE_STATE) == MessageState.DELIVERED
            parsed = parse_receipt(receipt.short_message)
            assert parsed is not None
            assert (parsed.message_id, parsed.state) == (ids[-1], MessageState.DELIVERED)

            await conn.unbind(timeout=DEADLINE)
            assert conn.closed
            await mc_conn.wait_closed(DEADLINE)
            assert esme.closed == ["unbound"]
            await mc.wait_for(lambda: mc.closed_reasons == ["unbound by peer"])

    run(main())


def test_loopback_window_limits_requests_in_flight(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            mc.hold = True
            conn = await client(mc, window=10)
            await conn.bind(BindTransmitter(system_id="esme", password="secret"))
            futs = [conn.send_request(submit()) for _ in range(25)]
            for seen in (10, 20, 25):
                await mc.wait_for(lambda n=seen: len(mc.submits) == n)  # type: ignore[misc]
                assert len(mc.submits) == seen  # never more than the window unanswered
                mc.release()
            responses = await wait_done(asyncio.gather(*futs))
            assert len({r.message_id for r in responses}) == 25
            await conn.unbind(timeout=DEADLINE)

    run(main())


def test_loopback_request_timeout_when_mc_holds(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            mc.hold = True
            conn = await client(mc, response_timeout=0.2)
            await conn.bind(BindTransmitter(system_id="esme", password="secret"))
            with pytest.raises(RequestTimeout) as info:
                await wait_done(conn.send_request(submit()))
            assert info.value.reason == "response"
            await conn.unbind(timeout=DEADLINE)

    run(main())


@pytest.mark.parametrize(
    ("system_id", "password", "status"),
    [
        ("esme", "wrong", CommandStatus.ESME_RINVPASWD),
        ("nobody", "secret", CommandStatus.ESME_RINVSYSID),
    ],
)
def test_loopback_bind_refused(run: Run, system_id: str, password: str, status: int) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            conn = await client(mc)
            with pytest.raises(BindError) as info:
                await conn.bind(BindTransceiver(system_id=system_id, password=password))
            assert info.value.status == status
            assert not conn.bound
            with pytest.raises(LocalProtocolError):
                conn.send_request(submit())  # not bound: refused before the wire
            await conn.unbind(timeout=DEADLINE)  # not bound: just closes
            assert conn.closed

    run(main())


def test_loopback_garbage_client_is_nacked_and_closed_others_unaffected(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            conn = await client(mc)
            await conn.bind(BindTransceiver(system_id="esme", password="secret"))
            assert (await wait_done(conn.request(submit()))).command_status == 0

            reader, writer = await asyncio.open_connection(mc.host, mc.port)
            try:
                writer.write(b"GET / HTTP/1.1\r\nHost: smsc\r\n\r\n")
                async with asyncio.timeout(DEADLINE):
                    answer = await reader.read()  # until EOF: the MC closes
            finally:
                writer.close()
                await writer.wait_closed()
            [nack] = frames(answer)
            assert isinstance(nack, GenericNack)
            assert nack.command_status == CommandStatus.ESME_RINVCMDLEN
            await mc.wait_for(lambda: "invalid command_length" in mc.closed_reasons)

            assert conn.bound
            assert (await wait_done(conn.request(submit()))).command_status == 0
            await conn.unbind(timeout=DEADLINE)

    run(main())


def test_loopback_unknown_command_is_nacked_and_connection_stays(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            reader, writer = await asyncio.open_connection(mc.host, mc.port)
            try:
                writer.write((16).to_bytes(4, "big") + (0x1234).to_bytes(4, "big") + bytes(4))
                writer.write((3).to_bytes(4, "big") + wire(EnquireLink(sequence_number=4)))
                async with asyncio.timeout(DEADLINE):
                    answer = await reader.readexactly(32)
            finally:
                writer.close()
                await writer.wait_closed()
            nack, resp = frames(answer)
            assert isinstance(nack, GenericNack)
            assert (nack.sequence_number, nack.command_status) == (3, CommandStatus.ESME_RINVCMDID)
            assert isinstance(resp, EnquireLinkResp)
            assert resp.sequence_number == 4

    run(main())


def test_loopback_mc_initiated_unbind_closes_both(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            esme = Esme()
            conn = await client(mc, esme)
            await conn.bind(BindTransceiver(system_id="esme", password="secret"))
            [mc_conn] = mc.bound()
            await mc_conn.unbind(timeout=DEADLINE)
            assert mc_conn.closed
            await conn.wait_closed(DEADLINE)
            assert esme.closed == ["unbound by peer"]

    run(main())


def test_loopback_receipt_to_a_transmitter_is_refused_locally(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            conn = await client(mc)
            await conn.bind(BindTransmitter(system_id="esme", password="secret"))
            [mc_conn] = mc.bound()
            with pytest.raises(LocalProtocolError):
                mc.push_receipt(mc_conn, "1")
            await conn.unbind(timeout=DEADLINE)

    run(main())


def test_loopback_tcp_nodelay_is_on(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            conn = await client(mc)
            await mc.wait_for(lambda: len(mc.connections) == 1)
            for c in (conn, mc.connections[0]):
                assert c.transport is not None
                sock = c.transport.get_extra_info("socket")
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert conn.peer is not None
            assert conn.peer[1] == mc.port
            conn.close()
            await conn.wait_closed(DEADLINE)

    run(main())


def test_loopback_connection_lost_fails_pending_requests(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            mc.hold = True
            esme = Esme()
            conn = await client(mc, esme)
            await conn.bind(BindTransmitter(system_id="esme", password="secret"))
            futs = [conn.send_request(submit()) for _ in range(3)]
            await mc.wait_for(lambda: len(mc.submits) == 3)
            for c in mc.connections:
                c.close()  # the MC drops the link
            for fut in futs:
                with pytest.raises(ConnectionClosed):
                    await wait_done(fut)
            await conn.wait_closed(DEADLINE)
            assert esme.closed == ["connection lost"]

    run(main())


def test_loopback_inbound_window_pauses_a_real_transport(run: Run) -> None:
    async def main() -> None:
        config = quiet(inbound_window=3)
        async with MinimalMC(config=config) as mc:
            mc.hold = True
            conn = await client(mc, window=10)
            await conn.bind(BindTransmitter(system_id="esme", password="secret"))
            futs = [conn.send_request(submit()) for _ in range(10)]
            await mc.wait_for(lambda: len(mc.submits) == 3)
            [mc_conn] = mc.bound()
            assert mc_conn.transport is not None
            assert not mc_conn.transport.is_reading()  # window full: paused
            mc.hold = False
            assert mc.release() == 3
            assert mc_conn.transport.is_reading()
            responses = await wait_done(asyncio.gather(*futs))
            statuses = [r.command_status for r in responses]
            # What arrived in the read that filled the window was throttled, the rest
            # waited in the socket until reading resumed.
            assert set(statuses) <= {CommandStatus.ESME_ROK, CommandStatus.ESME_RTHROTTLED}
            assert statuses.count(CommandStatus.ESME_ROK) == len(mc.message_ids) >= 3
            await conn.unbind(timeout=DEADLINE)

    run(main())


def test_loopback_peer_eof_closes_the_session(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            reader, writer = await asyncio.open_connection(mc.host, mc.port)
            try:
                writer.write(
                    wire(BindTransmitter(sequence_number=1, system_id="esme", password="secret"))
                )
                async with asyncio.timeout(DEADLINE):
                    [resp] = frames(await reader.readexactly(16 + len("minimal-mc") + 1 + 5))
                assert resp.command_status == 0
                writer.write_eof()
                async with asyncio.timeout(DEADLINE):
                    assert await reader.read() == b""  # the MC closed its side too
            finally:
                writer.close()
                await writer.wait_closed()
            await mc.wait_for(lambda: mc.closed_reasons == ["connection lost"])

    run(main())


def test_loopback_stalled_mc_times_requests_out(run: Run) -> None:
    async def main() -> None:
        async with MinimalMC() as mc:
            conn = await client(mc, response_timeout=0.2)
            await conn.bind(BindTransmitter(system_id="esme", password="secret"))
            [mc_conn] = mc.bound()
            mc_conn.stall()
            with pytest.raises(RequestTimeout) as info:
                await wait_done(conn.send_request(submit()))
            assert info.value.reason == "response"
            assert not conn.closed
            assert not mc_conn.closed
            await conn.unbind(timeout=0.2)  # unanswered: closes anyway
            assert conn.closed
            # The stalled side reads nothing, so it cannot see the close: the MC's own
            # close() at the end of the block ends it.

    run(main())


def test_loopback_responses_are_read_while_inbound_window_is_full(run: Run) -> None:
    """BUG (smppcore/aio.py, open): pausing reading for a full inbound window also stops
    the adapter from reading the peer's *responses*: a deliver_sm the ESME answered at once
    times out at the MC (and, with enquire_link on, the MC's probe goes unanswered and a
    healthy session is closed)."""

    async def main() -> None:
        # The MC's wait for the deliver_sm_resp: long enough for a loaded machine, shorter
        # than the test's DEADLINE so that the bug shows as the RequestTimeout below.
        config = quiet(inbound_window=1, response_timeout=DEADLINE / 2)
        async with MinimalMC(config=config, auto_receipt=False) as mc:
            mc.hold = True
            esme = Esme()
            conn = await client(mc, esme)
            await conn.bind(BindTransceiver(system_id="esme", password="secret"))
            pending = conn.send_request(submit())
            await mc.wait_for(lambda: len(mc.submits) == 1)  # the MC's inbound window is full
            [mc_conn] = mc.bound()
            receipt = mc.push_receipt(mc_conn, "1")
            await esme.wait_for(lambda: len(esme.delivered) == 1)  # ...and the ESME answered
            try:
                ack = await wait_done(receipt)
            except RequestTimeout as exc:
                pytest.fail(f"deliver_sm answered by the ESME timed out at the MC: {exc}")
            finally:
                mc.release()
            assert isinstance(ack, DeliverSmResp)
            assert (await wait_done(pending)).command_status == CommandStatus.ESME_ROK
            await conn.unbind(timeout=DEADLINE)

    run(main())
