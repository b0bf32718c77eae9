"""router.correlation: id styles per carrier, early receipts, TTL and bounds, and the store
fallback (eviction, restart) with a real SqliteStore."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from router.config import StoreConfig
from router.correlation import Correlator, Early, correlation_key
from router.model import Address, Message
from router.stores.sqlite import SqliteStore
from smppcore.receipt import IdStyle

DEADLINE = 10.0


class FakeIndex:
    """The store's correlation index, in memory; counts lookups."""

    def __init__(self) -> None:
        self.sent: dict[tuple[str, str], str] = {}
        self.rows: list[tuple[str, str, str, str | None]] = []
        self.lookups = 0
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    def set_sent(
        self, message_id: str, carrier: str, carrier_message_id: str, *, key: str | None = None
    ) -> None:
        self.rows.append((message_id, carrier, carrier_message_id, key))
        self.sent[(carrier, carrier_message_id if key is None else key)] = message_id

    async def find_sent(self, carrier: str, key: str) -> str | None:
        self.lookups += 1
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        return self.sent.get((carrier, key))


def correlator(
    index: FakeIndex | SqliteStore | None = None,
    *,
    max_cache: int = 100,
    early_ttl: float = 30.0,
    max_early: int = 100,
) -> Correlator[str]:
    return Correlator(
        index if index is not None else FakeIndex(),
        max_cache=max_cache,
        early_ttl=early_ttl,
        max_early=max_early,
    )


# -- id styles ---------------------------------------------------------------------------------

STYLE_CASES: list[tuple[IdStyle, str, IdStyle, str]] = [
    ("hex", "1A2B", "decimal", "6699"),  # hex in submit_sm_resp, decimal in the receipt
    ("hex", "0x00001a2b", "decimal", "0006699"),
    ("decimal", "6699", "hex", "1a2b"),  # and the other way round
    ("upper", "abc-123", "upper", "ABC-123"),  # case
    ("lower", "ABC-123", "lower", "abc-123"),
    ("strip_zeros", "000123", "strip_zeros", "123"),  # leading zeros
    ("strip_zeros", "0000ab", "strip_zeros", "00ab"),
    ("decimal", "000123", "strip_zeros", "123"),
    ("as_is", "Xy7", "as_is", "Xy7"),
]


@pytest.mark.parametrize(("submit_style", "resp_id", "receipt_style", "receipt_id"), STYLE_CASES)
@pytest.mark.asyncio
async def test_ids_written_differently_correlate(
    submit_style: IdStyle, resp_id: str, receipt_style: IdStyle, receipt_id: str
) -> None:
    index = FakeIndex()
    c = correlator(index)
    assert c.expect("c1", resp_id, "ours", submit_style) == []
    assert c.lookup("c1", receipt_id, receipt_style) == "ours"
    assert await c.resolve("c1", receipt_id, receipt_style) == "ours"
    assert index.lookups == 0  # answered from memory
    # the store got the raw id and the key
    assert index.rows == [("ours", "c1", resp_id, correlation_key(resp_id, submit_style))]


@pytest.mark.asyncio
async def test_different_ids_and_other_carriers_do_not_match() -> None:
    c = correlator()
    c.expect("c1", "1A2B", "ours", "hex")
    c.expect("c2", "555", "theirs", "decimal")
    assert await c.resolve("c1", "6698", "decimal") is None
    assert await c.resolve("c2", "6699", "decimal") is None  # same id, other carrier
    assert await c.resolve("c1", "1a2b", "as_is") is None  # styles that disagree
    assert await c.resolve("c2", "0555", "strip_zeros") == "theirs"


@pytest.mark.asyncio
async def test_empty_ids_never_match() -> None:
    index = FakeIndex()
    c = correlator(index)
    assert c.expect("c1", "", "ours", "as_is") == []
    assert await c.resolve("c1", "", "as_is") is None
    assert await c.resolve("c1", "  ", "upper") is None
    assert index.lookups == 0
    assert c.park("c1", "", "receipt", 0.0) is None
    assert c.parked == 0
    assert [e.payload for e in c.expire(0.0)] == ["receipt"]  # reported as unmatched


# -- memory bound and store fallback -----------------------------------------------------------


@pytest.mark.asyncio
async def test_cache_is_bounded_and_falls_back_to_the_store() -> None:
    index = FakeIndex()
    c = correlator(index, max_cache=2)
    for i in range(3):
        c.expect("c1", f"{i}", f"ours{i}", "as_is")
    assert c.cached == 2
    assert c.lookup("c1", "0", "as_is") is None  # the oldest left memory...
    assert await c.resolve("c1", "0", "as_is") == "ours0"  # ...but not the store
    assert index.lookups == 1
    assert await c.resolve("c1", "2", "as_is") == "ours2"
    assert index.lookups == 1


@pytest.mark.asyncio
async def test_forget_drops_the_memory_mapping_only() -> None:
    index = FakeIndex()
    c = correlator(index)
    c.expect("c1", "AB", "ours", "upper")
    c.forget("c1", "ab", "upper")
    assert c.cached == 0
    assert await c.resolve("c1", "ab", "upper") == "ours"
    assert index.lookups == 1


@pytest.mark.asyncio
async def test_with_a_real_store_before_commit_and_after_restart(tmp_path: Path) -> None:
    config = StoreConfig(path=str(tmp_path / "smsc.db"))
    store = SqliteStore(config)
    await store.open()
    try:
        async with asyncio.timeout(DEADLINE):
            src, dst = Address(5, 0, "ACME"), Address(1, 1, "447700900123")
            store.add(Message(id="ours", account="acme", source=src, destination=dst))
            c = correlator(store, max_cache=1)
            c.expect("c1", "00FF", "ours", "hex")
            c.expect("c1", "1", "other", "hex")  # evicts "ours" from memory
            assert await c.resolve("c1", "255", "decimal") == "ours"  # from the write queue
            await store.close()

            store = SqliteStore(config)
            await store.open()
            fresh = correlator(store)  # a restart: nothing in memory
            assert await fresh.resolve("c1", "0255", "decimal") == "ours"  # from the index
            got = await store.get("ours")
            assert got is not None
            assert (got.carrier, got.carrier_message_id) == ("c1", "00FF")
    finally:
        await store.close()


# -- early receipts --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_receipt_before_its_submit_response_is_parked_then_matched() -> None:
    c = correlator()
    assert await c.resolve("c1", "6699", "decimal") is None
    key = correlation_key("6699", "decimal")
    assert c.park("c1", key, "ENROUTE receipt", 1.0) is None
    assert c.park("c1", key, "DELIVRD receipt", 2.0) is None
    assert c.park("c2", key, "other carrier", 2.0) is None
    assert c.parked == 3
    assert c.expect("c1", "1A2B", "ours", "hex") == ["ENROUTE receipt", "DELIVRD receipt"]
    assert c.parked == 1
    assert c.matched_early == 2
    assert c.expect("c1", "1A2B", "ours", "hex") == []  # handed back once
    assert [e.payload for e in c.expire(100.0)] == ["other carrier"]


@pytest.mark.asyncio
async def test_park_returns_the_mapping_that_appeared_while_resolving() -> None:
    """expect() runs while resolve() awaits the store: park must not strand the receipt."""
    index = FakeIndex()
    index.gate = asyncio.Event()
    c = correlator(index)
    async with asyncio.timeout(DEADLINE):
        lookup = asyncio.create_task(c.resolve("c1", "42", "as_is"))
        await index.entered.wait()  # the lookup reached the store
        assert c.expect("c1", "42", "ours", "as_is") == []
        index.sent.clear()  # the store read had started before the mapping existed
        index.gate.set()
        assert await lookup is None
    assert c.park("c1", correlation_key("42", "as_is"), "receipt", 0.0) == "ours"
    assert c.parked == 0


def test_parked_receipts_expire_after_ttl() -> None:
    c = correlator(early_ttl=30.0)
    c.park("c1", "1", "first", 10.0)
    c.park("c1", "2", "second", 20.0)
    assert c.expire(39.9) == []
    assert c.expire(40.0) == [Early("c1", "1", "first", 10.0)]
    assert c.parked == 1
    assert c.expect("c1", "1", "ours", "as_is") == []  # too late: already given up
    assert [e.payload for e in c.expire(50.0)] == ["second"]
    assert c.parked == 0


def test_parked_receipts_are_bounded_oldest_dropped() -> None:
    c = correlator(max_early=2)
    for i in range(3):
        assert c.park("c1", str(i), f"r{i}", float(i)) is None
    assert c.parked == 2
    assert c.expect("c1", "0", "ours0", "as_is") == []  # dropped by the bound
    assert c.expect("c1", "2", "ours2", "as_is") == ["r2"]
    # the dropped one is reported by the next expire, before its TTL
    assert [e.payload for e in c.expire(3.0)] == ["r0"]
    assert c.parked == 1


def test_unreported_drops_are_bounded_and_counted() -> None:
    c = correlator(max_early=1)
    for i in range(4):
        c.park("c1", str(i), f"r{i}", float(i))
    # r0, r1, r2 were dropped by the bound; the outbox holds max_early of them
    assert c.lost == 2
    assert [e.payload for e in c.expire(4.0)] == ["r0"]
    assert c.parked == 1


def test_no_parking_at_all() -> None:
    c = correlator(max_early=0)
    assert c.park("c1", "1", "r", 0.0) is None
    assert c.parked == 0
    assert [e.payload for e in c.expire(0.0)] == ["r"]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_cache"):
        correlator(max_cache=0)
    with pytest.raises(ValueError, match="max_early"):
        correlator(max_early=-1)
    with pytest.raises(ValueError, match="early_ttl"):
        correlator(early_ttl=0)
