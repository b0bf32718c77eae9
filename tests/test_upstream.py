"""router.upstream.CarrierPool against the real carrier simulator (layer 3: loopback port 0,
on asyncio and uvloop), plus the pure pieces (submit_sm building, backoff).

Nothing sleeps: waits are on the pool's callbacks (``on_state``, ``on_deliver``) or on the
futures it returns, each under ``asyncio.timeout``. Timeouts that must fire (black hole)
are configured small (0.3 s) and awaited through the futures they resolve.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from carrier_fixtures import (
    DEADLINE,
    PASSWORD,
    SYSTEM_ID,
    carrier_config,
    profile,
    running_carrier,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from profiles import examples

from router.config import CarrierConfig, Reconnect
from router.model import Accepted, Address, Failed, Message, Rejected, SubmitOutcome
from router.upstream import (
    Answer,
    CarrierPool,
    backoff_delay,
    relative_validity,
    submit_body,
    submit_pdu,
)
from simulator.carrier import Carrier
from smppcore.aio import BindError, Connection, connect
from smppcore.codec import encode
from smppcore.config import load_config
from smppcore.constants import CommandStatus, EsmClass
from smppcore.errors import LocalProtocolError
from smppcore.pdu import BindTransceiver, DeliverSm
from smppcore.smpptime import parse_validity_period
from smppcore.tlv import Tag, Tlv, tlv

Run = Callable[[Coroutine[Any, Any, Any]], Any]
S = CommandStatus
DEST = "447700900001"
BAD_DEST = "999000111"


# --- helpers ----------------------------------------------------------------------------


def pool_config(port: int, **overrides: Any) -> CarrierConfig:
    data: dict[str, Any] = {
        "name": "sim",
        "host": "127.0.0.1",
        "port": port,
        "system_id": SYSTEM_ID,
        "password": PASSWORD,
        "binds": 1,
        "window": 4,
        "response_timeout": 2.0,
        "enquire_link_interval": 60.0,
        "throttle_pause": 1.0,
        "reconnect": {"min": 0.01, "max": 0.05, "jitter": 0.5},
    }
    data.update(overrides)
    return load_config(data, CarrierConfig)


def message(n: int = 0, destination: str = DEST, **fields: Any) -> Message:
    values: dict[str, Any] = {"short_message": b"hello", "registered_delivery": 1, **fields}
    return Message(
        id=f"m{n}",
        account="acct",
        source=Address(5, 0, "MyBrand"),
        destination=Address(1, 1, destination),
        **values,
    )


class Watch:
    """The pool's callbacks, recorded; ``until`` waits on them."""

    def __init__(self, deliver_status: int = 0) -> None:
        self.delivered: list[tuple[str, DeliverSm]] = []
        self.states: list[int] = []
        self.deliver_status = deliver_status
        self._changed = asyncio.Event()

    def on_deliver(self, name: str, pdu: DeliverSm, conn: Connection, answer: Answer) -> int:
        self.delivered.append((name, pdu))
        self._changed.set()
        return self.deliver_status

    def on_state(self, name: str, bound: int) -> None:
        assert name == "sim"
        self.states.append(bound)
        self._changed.set()

    @property
    def bound(self) -> int:
        return self.states[-1] if self.states else 0

    async def until(self, predicate: Callable[[], bool], timeout: float = DEADLINE) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def receipt_for(self, carrier_id: str) -> DeliverSm | None:
        for _, pdu in self.delivered:
            if pdu.tlv(Tag.RECEIPTED_MESSAGE_ID) == carrier_id:
                return pdu
        return None


def make_pool(config: CarrierConfig, watch: Watch) -> CarrierPool:
    return CarrierPool(
        config,
        on_deliver=watch.on_deliver,
        on_state=watch.on_state,
        rng=random.Random(7),
        wall_clock=lambda: 1_000_000.0,
    )


def now() -> float:
    return asyncio.get_running_loop().time()


def send(pool: CarrierPool, msg: Message, t: float) -> asyncio.Future[SubmitOutcome]:
    """``pool.send`` with its outcome in a future, to await in a test."""
    fut: asyncio.Future[SubmitOutcome] = asyncio.get_running_loop().create_future()
    pool.send(msg, t, fut.set_result)
    return fut


async def outcome(fut: asyncio.Future[SubmitOutcome]) -> SubmitOutcome:
    async with asyncio.timeout(DEADLINE):
        return await fut


async def bound_pool(
    carrier: Carrier, watch: Watch, binds: int = 1, **overrides: Any
) -> CarrierPool:
    pool = make_pool(pool_config(carrier.port, binds=binds, **overrides), watch)
    await pool.start()
    await watch.until(lambda: watch.bound == binds)
    return pool


# --- pure: the submit_sm we build ---------------------------------------------------------


def test_submit_pdu_copies_the_message() -> None:
    sar = tlv(Tag.SAR_MSG_REF_NUM, 7)
    msg = message(
        esm_class=EsmClass.UDHI | EsmClass.STORE_AND_FORWARD,
        data_coding=8,
        protocol_id=1,
        priority=2,
        service_type="CMT",
        registered_delivery=0x12,  # failure only + intermediate
        tlvs=(sar,),
        expires_at=1_000_000.0 + 3661.2,
    )
    pdu = submit_pdu(msg, wall_now=1_000_000.0)
    assert (pdu.source_addr_ton, pdu.source_addr_npi, pdu.source_addr) == (5, 0, "MyBrand")
    assert (pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.destination_addr) == (1, 1, DEST)
    assert pdu.esm_class == EsmClass.UDHI  # messaging mode cleared, UDHI kept
    assert (pdu.data_coding, pdu.protocol_id, pdu.priority_flag) == (8, 1, 2)
    assert pdu.service_type == "CMT"
    # Final receipts always asked for; the intermediate bit kept.
    assert pdu.registered_delivery == 0x11
    assert pdu.schedule_delivery_time == ""
    assert pdu.validity_period == "000000010102000R"  # 1 h 1 min 2 s (rounded up)
    assert pdu.tlvs == (sar,)
    assert pdu.short_message == b"hello"
    assert submit_pdu(message()).validity_period == ""


def test_submit_pdu_uses_message_payload_when_long_or_asked() -> None:
    long = message(short_message=b"x" * 255)
    pdu = submit_pdu(long)
    assert pdu.short_message == b""
    assert pdu.tlvs == (Tlv(Tag.MESSAGE_PAYLOAD, b"x" * 255),)
    assert submit_pdu(message(short_message=b"x" * 254)).short_message == b"x" * 254
    asked = submit_pdu(message(payload_tlv=True))
    assert asked.short_message == b""
    assert asked.tlvs == (Tlv(Tag.MESSAGE_PAYLOAD, b"hello"),)


_TEXT = st.text(st.characters(min_codepoint=0, max_codepoint=0x17F), max_size=23)
_OCTET = st.integers(-1, 256)


@settings(max_examples=examples(300))
@given(
    source=st.builds(Address, _OCTET, _OCTET, _TEXT),
    destination=st.builds(Address, _OCTET, _OCTET, _TEXT),
    service_type=st.text(st.characters(min_codepoint=0, max_codepoint=0x7F), max_size=7),
    short_message=st.binary(max_size=300),
    payload_tlv=st.booleans(),
    esm_class=st.integers(0, 255),
    protocol_id=_OCTET,
    priority=st.integers(0, 3),
    registered_delivery=st.integers(0, 255),
    data_coding=_OCTET,
    tlvs=st.lists(
        st.sampled_from(
            [
                tlv(Tag.SAR_MSG_REF_NUM, 7),
                tlv(Tag.USER_MESSAGE_REFERENCE, 300),
                Tlv(Tag.MESSAGE_PAYLOAD, b"stale"),
                Tlv(0x1400, b"vendor"),
                Tlv(Tag.SAR_TOTAL_SEGMENTS, b"\x01\x02"),  # a bad length: refused
            ]
        ),
        max_size=3,
    ),
    expires_in=st.none() | st.floats(-10, 10**9),
)
def test_submit_body_is_the_codecs_submit_sm(
    source: Address,
    destination: Address,
    service_type: str,
    short_message: bytes,
    payload_tlv: bool,
    esm_class: int,
    protocol_id: int,
    priority: int,
    registered_delivery: int,
    data_coding: int,
    tlvs: list[Tlv],
    expires_in: float | None,
) -> None:
    """The hot path writes the submit_sm body itself: the same octets as encoding
    submit_pdu's struct, and a refusal wherever the codec refuses."""
    now = 1_000_000.0
    msg = Message(
        id="m1",
        account="acct",
        source=source,
        destination=destination,
        service_type=service_type,
        short_message=short_message,
        payload_tlv=payload_tlv,
        esm_class=esm_class,
        protocol_id=protocol_id,
        priority=priority,
        registered_delivery=registered_delivery,
        data_coding=data_coding,
        tlvs=tuple(tlvs),
        expires_at=None if expires_in is None else now + expires_in,
    )
    try:
        expected: bytes | int = encode(submit_pdu(msg, wall_now=now))[16:]
    except LocalProtocolError as err:
        expected = err.status
    try:
        got: bytes | int = submit_body(msg, wall_now=now)
    except LocalProtocolError as err:
        got = err.status
    assert got == expected


def test_relative_validity() -> None:
    assert relative_validity(0.2) == "000000000001000R"  # at least a second
    assert relative_validity(172_800) == "000002000000000R"
    assert relative_validity(10**9) == "000099235959000R"  # capped at ~99 days
    assert parse_validity_period(relative_validity(90061)) is not None


def test_backoff_doubles_to_max_with_jitter() -> None:
    r = Reconnect(min=0.5, max=4.0, jitter=0.3)
    rng = random.Random(1)
    for failures, base in [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (4, 4.0), (9, 4.0), (999, 4.0)]:
        for _ in range(50):
            delay = backoff_delay(r, failures, rng)
            assert base <= delay <= base * 1.3


# --- live: against the simulator ---------------------------------------------------------


def test_pipelines_a_window_per_bind(run: Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, binds=2)
            assert pool.bound == 2
            assert pool.free_slots == 8
            t = now()
            futures = [send(pool, message(i), t) for i in range(8)]
            # Both binds carry a full window before any answer has been read.
            assert pool.in_flight == 8
            assert pool.free_slots == 0
            assert not pool.ready(t)
            assert pool.ready_at(t) is None  # waits for a slot, not for time
            extra = send(pool, message(9), t)
            assert extra.done()
            assert extra.result() == Failed("sim", "not ready")
            assert not any(f.done() for f in futures)
            results = [await outcome(f) for f in futures]
            assert all(isinstance(r, Accepted) for r in results), results
            ids = {r.carrier_message_id for r in results if isinstance(r, Accepted)}
            assert len(ids) == 8
            assert pool.in_flight == 0
            assert pool.free_slots == 8
            assert pool.ready(now())
            await pool.stop(timeout=DEADLINE)

    run(main())


def test_outcomes_and_receipts(run: Run) -> None:
    rules = [{"match": {"destination_prefix": "999"}, "submit_status": "ESME_RINVDSTADR"}]
    prof = profile(rules=rules)

    async def main() -> None:
        async with running_carrier(profiles={"default": prof}) as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch)
            ok = await outcome(send(pool, message(1), now()))
            assert isinstance(ok, Accepted)
            assert ok.carrier == "sim"
            assert ok.carrier_message_id
            bad = await outcome(send(pool, message(2, BAD_DEST), now()))
            assert bad == Rejected("sim", S.ESME_RINVDSTADR, retryable=False)
            assert pool.ready(now())  # a permanent reject does not pause the carrier
            await watch.until(lambda: watch.receipt_for(ok.carrier_message_id) is not None)
            receipt = watch.receipt_for(ok.carrier_message_id)
            assert receipt is not None
            assert receipt.esm_class & EsmClass.DELIVERY_RECEIPT
            assert b"stat:DELIVRD" in receipt.short_message
            assert all(name == "sim" for name, _ in watch.delivered)
            await pool.stop(timeout=DEADLINE)

    run(main())


@pytest.mark.parametrize("status", ["ESME_RTHROTTLED", "ESME_RMSGQFUL"])
def test_a_throttle_cuts_the_binds_rate_and_at_the_floor_holds_it_back(
    run: Run, status: str
) -> None:
    """A carrier refusing everything with a throttle: each answer to a submit sent after
    the last cut cuts the bind's rate (100 → 70 msg/s, then 49, which is the floor of 50
    here); at the floor the bind is held back ``throttle_pause``."""
    prof = profile(submit_errors={status: 1.0})

    async def main() -> None:
        async with running_carrier(profiles={"default": prof}) as carrier:
            watch = Watch()
            pool = await bound_pool(
                carrier,
                watch,
                rate=100.0,
                burst=1,
                throttle_pause=30.0,
                adaptive={"min_rate": 50.0},
            )
            assert pool.rate_limit == 100.0
            assert pool.ready(now())
            result = await outcome(send(pool, message(1), now()))
            assert result == Rejected("sim", S[status], retryable=True)
            assert pool.rate_limit == pytest.approx(70.0)
            assert not pool.paused(now())
            at = pool.ready_at(now())
            assert at is not None
            assert at <= now() + 1 / 70 + 0.001  # the next token at 70/s, no pause
            # The time the pool names (a clock deadline, not a state to wait for).
            await asyncio.sleep(max(at - now(), 0.0) + 0.002)
            assert pool.ready(now())
            result = await outcome(send(pool, message(2), now()))
            assert result == Rejected("sim", S[status], retryable=True)
            assert pool.rate_limit == 50.0
            assert pool.rate_cuts == 2
            t = now()
            assert pool.paused(t)
            assert not pool.ready(t)
            at = pool.ready_at(t)
            assert at is not None
            assert t + 29.0 < at <= t + 30.0
            assert pool.ready(at)  # the pause is over then (the window is free)
            refused = send(pool, message(3), t)
            assert refused.result() == Failed("sim", "not ready")
            await pool.stop(timeout=DEADLINE)

    run(main())


def test_only_throttles_of_submits_sent_after_the_cut_cut_again(run: Run) -> None:
    """A window of submits throttled together is one cut, not one each; with no ``rate``
    the bind had no limit, and the cut starts from the rate it was sending at."""
    prof = profile(submit_errors={"ESME_RTHROTTLED": 1.0})

    async def main() -> None:
        async with running_carrier(profiles={"default": prof}) as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, window=10)
            assert pool.rate_limit is None
            t = now()
            futures = [send(pool, message(i), t) for i in range(10)]
            results = [await outcome(f) for f in futures]
            assert results == [Rejected("sim", S.ESME_RTHROTTLED, retryable=True)] * 10
            assert pool.rate_cuts == 1
            assert pool.rate_limit is not None
            await pool.stop(timeout=DEADLINE)

    run(main())


def test_a_throttle_cuts_the_bind_it_came_on(run: Run) -> None:
    """Each bind has its own rate (carriers often throttle per bind): a throttle on one
    bind cuts that bind's rate; the other keeps its own (here: still no limit, so the
    carrier as a whole has none either)."""
    prof = profile(throttle={"rate": 1.0, "burst": 1, "per": "bind"})

    async def main() -> None:
        async with running_carrier(profiles={"default": prof}) as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, binds=2)
            first, second = pool._links
            second.suspect = True  # both submits go over the first bind
            t = now()
            futures = [send(pool, message(i), t) for i in range(2)]
            results = [await outcome(f) for f in futures]
            assert isinstance(results[0], Accepted)
            assert results[1] == Rejected("sim", S.ESME_RTHROTTLED, retryable=True)
            assert first.rate.cuts == 1
            assert first.rate.limit is not None
            assert (second.rate.cuts, second.rate.limit) == (0, None)
            assert pool.rate_limit is None
            assert pool.rate_cuts == 1
            second.suspect = False
            await pool.stop(timeout=DEADLINE)

    run(main())


def test_rate_limit_allows_a_burst_then_waits(run: Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, rate=2.0, burst=3, window=10)
            t = now()
            futures = [send(pool, message(i), t) for i in range(3)]
            assert pool.free_slots == 7  # slots are free, tokens are not
            assert not pool.ready(t)
            at = pool.ready_at(t)
            assert at is not None
            assert at == pytest.approx(t + 0.5)  # one token at 2/s
            assert send(pool, message(4), t).result() == Failed("sim", "not ready")
            assert pool.ready(t + 0.5)
            results = [await outcome(f) for f in futures]
            assert all(isinstance(r, Accepted) for r in results), results
            await pool.stop(timeout=DEADLINE)

    run(main())


def test_dropped_bind_fails_in_flight_and_reconnects(run: Run) -> None:
    prof = profile(misbehave={"drop_after_pdus": 1})  # the bind, then nothing

    async def main() -> None:
        async with running_carrier(profiles={"default": prof}) as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch)
            t = now()
            futures = [send(pool, message(i), t) for i in range(3)]
            results = [await outcome(f) for f in futures]
            assert results == [Failed("sim", "connection lost")] * 3
            await watch.until(lambda: pool.binds_made >= 2 and watch.bound == 1)
            assert 0 in watch.states  # it went down, and came back
            await pool.stop(timeout=DEADLINE)

    run(main())


def test_carrier_restart_fails_in_flight_and_rebinds(run: Run) -> None:
    slow = profile(submit_latency={"kind": "fixed", "ms": 60_000})

    async def main() -> None:
        first = Carrier(carrier_config(profiles={"default": slow}))
        await first.start()
        port = first.port
        watch = Watch()
        pool = await bound_pool(first, watch)
        futures = [send(pool, message(i), now()) for i in range(2)]
        async with asyncio.timeout(DEADLINE):
            await first.stop(timeout=1.0)  # unbinds us with both submits unanswered
        results = [await outcome(f) for f in futures]
        assert results == [Failed("sim", "connection lost")] * 2
        await watch.until(lambda: watch.bound == 0)
        assert not pool.ready(now())
        failures = pool.connect_failures
        # Back on the same port: the pool, retrying all along, binds again.
        async with running_carrier(port=port) as second:
            assert second.port == port
            await watch.until(lambda: watch.bound == 1)
            assert pool.connect_failures >= failures
            result = await outcome(send(pool, message(5), now()))
            assert isinstance(result, Accepted)
            await pool.stop(timeout=DEADLINE)

    run(main())


def test_down_or_refusing_carrier_does_not_block_start(run: Run) -> None:
    refuse = profile(misbehave={"refuse_binds": "ESME_RBINDFAIL"})

    async def main() -> None:
        async with running_carrier(profiles={"default": refuse}) as carrier:
            port = carrier.port
            watch = Watch()
            pool = make_pool(pool_config(port), watch)
            async with asyncio.timeout(DEADLINE):
                await pool.start()  # returns at once
            assert pool.bound == 0
            assert not pool.ready(now())
            assert send(pool, message(), now()).result() == Failed("sim", "not ready")
            # Refusals are failures: the pool retries with backoff until ...
            await carrier_metric_binds(carrier, at_least=2)
        assert pool.bound == 0
        async with running_carrier(port=port) as carrier:  # ... the carrier accepts
            await watch.until(lambda: watch.bound == 1)
            assert pool.connect_failures >= 2
            await pool.stop(timeout=DEADLINE)
            assert not carrier.account(SYSTEM_ID).sessions  # type: ignore[union-attr]

    run(main())


async def carrier_metric_binds(carrier: Carrier, at_least: int) -> None:
    """Wait until the carrier refused ``at_least`` of our binds. Each look is one round trip
    (a bind of an unknown system_id, refused and counted apart), not a nap."""
    async with asyncio.timeout(DEADLINE):
        while (
            sum(n for (acct, _, status), n in carrier.metrics.binds.items() if acct == SYSTEM_ID)
            < at_least
        ):
            conn = await connect("127.0.0.1", carrier.port, timeout=DEADLINE)
            try:
                await conn.bind(BindTransceiver(system_id="nobody", password="x"))
            except BindError:
                pass
            finally:
                conn.close()
                await conn.wait_closed(DEADLINE)


def test_black_hole_times_out_and_reconnects(run: Run) -> None:
    prof = profile(misbehave={"black_hole_after_pdus": 1})  # answers the bind only

    async def main() -> None:
        async with running_carrier(profiles={"default": prof}, stop_timeout=0.2) as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, response_timeout=0.3)
            t = now()
            futures = [send(pool, message(i), t) for i in range(2)]
            results = [await outcome(f) for f in futures]
            assert results == [Failed("sim", "timeout")] * 2
            assert now() - t >= 0.29  # uvloop timers round to the millisecond
            # Suspect: no more submits there while an enquire_link probes it ...
            assert pool.bound == 0
            assert not pool.ready(now())
            # ... unanswered, so the bind is dropped and made again.
            await watch.until(lambda: pool.binds_made >= 2 and watch.bound == 1)
            assert watch.states[:3] == [1, 0, 1]
            await pool.stop(timeout=0.2)

    run(main())


def test_tx_rx_mode_gets_receipts_on_the_receiver(run: Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, bind_mode="tx+rx")
            state = carrier.account(SYSTEM_ID)
            assert state is not None
            # A transmitter (counted as bound) and a receiver (not: it cannot submit).
            await watch.until(lambda: pool.receivers == 1)
            assert pool.bound == 1
            assert len(state.sessions) == 2
            assert state.outbox.receivers == 1
            ok = await outcome(send(pool, message(1), now()))
            assert isinstance(ok, Accepted)
            await watch.until(lambda: watch.receipt_for(ok.carrier_message_id) is not None)
            await pool.stop(timeout=DEADLINE)
            assert not state.sessions

    run(main())


def test_stop_waits_for_in_flight_then_unbinds(run: Run) -> None:
    slowish = profile(submit_latency={"kind": "fixed", "ms": 100})

    async def main() -> None:
        async with running_carrier(profiles={"default": slowish}) as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, binds=2)
            futures = [send(pool, message(i), now()) for i in range(5)]
            async with asyncio.timeout(DEADLINE):
                await pool.stop(timeout=DEADLINE)
            assert all(f.done() for f in futures)
            assert all(isinstance(f.result(), Accepted) for f in futures)
            state = carrier.account(SYSTEM_ID)
            assert state is not None
            assert not state.sessions  # unbound
            assert watch.bound == 0
            assert pool.binds_made == 2  # and no reconnect after stop
            assert not pool.ready(now())
            assert send(pool, message(9), now()).result() == Failed("sim", "not ready")

    run(main())


def test_stop_is_bounded_when_answers_never_come(run: Run) -> None:
    prof = profile(misbehave={"black_hole_after_pdus": 1})

    async def main() -> None:
        async with running_carrier(profiles={"default": prof}, stop_timeout=0.2) as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, response_timeout=30.0)
            futures = [send(pool, message(i), now()) for i in range(2)]
            t = now()
            async with asyncio.timeout(DEADLINE):
                await pool.stop(timeout=0.3)
            assert now() - t < 2.0
            results = [await outcome(f) for f in futures]
            assert results == [Failed("sim", "connection lost")] * 2

    run(main())


def test_deliver_status_comes_from_on_deliver(run: Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            watch = Watch(deliver_status=S.ESME_RX_T_APPN)
            pool = await bound_pool(carrier, watch)
            ok = await outcome(send(pool, message(1), now()))
            assert isinstance(ok, Accepted)
            await watch.until(lambda: watch.receipt_for(ok.carrier_message_id) is not None)
            # Marker: a later round trip on the same connection, so the simulator has read
            # our deliver_sm_resp by the time it answers. A temporary status: it holds the
            # receipt to deliver it again.
            assert isinstance(await outcome(send(pool, message(2), now())), Accepted)
            state = carrier.account(SYSTEM_ID)
            assert state is not None
            assert state.outbox.held >= 1
            await pool.stop(timeout=DEADLINE)

    run(main())


def test_send_after_ready_goes_where_a_fresh_pick_would(run: Run) -> None:
    """ready(t) remembers the bind it found so send(t) need not pick again: the submit
    still lands on the least-loaded submit-capable bind, and a bind that stopped being
    usable in between (suspect) is not used."""

    async def main() -> None:
        async with running_carrier() as carrier:
            watch = Watch()
            pool = await bound_pool(carrier, watch, binds=3)
            links = pool._links
            t = now()
            futures = []

            def loads() -> list[int]:
                return [lk.conn.session.in_flight if lk.conn else -1 for lk in links]

            for i in range(7):
                expected = pool._pick(t)
                assert expected is not None
                assert pool.ready(t)
                before = loads()
                futures.append(send(pool, message(i), t))
                after = loads()
                assert [b - a for a, b in zip(before, after, strict=True)] == [
                    1 if lk is expected else 0 for lk in links
                ]
            readied = pool._pick(t)
            assert readied is not None
            assert pool.ready(t)
            readied.suspect = True  # no longer submit-capable: send must look again
            other = pool._pick(t)
            assert other is not None
            assert other is not readied
            before = loads()
            futures.append(send(pool, message(99), t))
            after = loads()
            assert [b - a for a, b in zip(before, after, strict=True)] == [
                1 if lk is other else 0 for lk in links
            ]
            readied.suspect = False
            results = [await outcome(f) for f in futures]
            assert all(isinstance(r, Accepted) for r in results), results
            await pool.stop(timeout=DEADLINE)

    run(main())


# --- bind slots (a carrier's binds counted for the whole cluster) ------------------------


def test_a_pool_opens_only_the_binds_its_slots_allow(run: Run) -> None:
    async def main() -> None:
        async with running_carrier() as carrier:
            watch = Watch()
            config = pool_config(carrier.port, binds=3)
            pool = CarrierPool(
                config,
                on_deliver=watch.on_deliver,
                on_state=watch.on_state,
                rng=random.Random(7),
                bind_slots=1,
            )
            await pool.start()
            await watch.until(lambda: watch.bound == 1)
            assert pool.allowed == 1
            pool.allow(3)  # slots taken over from a node that died
            await watch.until(lambda: watch.bound == 3)
            pool.allow(1)  # a node joined: two slots given back
            await watch.until(lambda: watch.bound == 1)
            assert pool.binds_made == 3  # never more binds than slots held
            pool.allow(0)
            await watch.until(lambda: watch.bound == 0)
            await pool.stop(timeout=DEADLINE)
            assert pool.binds_made == 3

    run(main())


def test_a_pool_sends_at_its_slots_share_of_the_carriers_rate() -> None:
    watch = Watch()
    config = pool_config(1, binds=4, rate=100.0)
    alone = make_pool(config, watch)
    assert alone.rate_share == 100.0
    pool = CarrierPool(
        config,
        on_deliver=watch.on_deliver,
        on_state=watch.on_state,
        rng=random.Random(7),
        bind_slots=1,
    )
    assert pool.rate_share == 25.0  # one bind of four: a quarter of the carrier's rate
    pool.allow(3)
    assert pool.rate_share == 75.0
    assert make_pool(pool_config(1, binds=4), watch).rate_share is None
