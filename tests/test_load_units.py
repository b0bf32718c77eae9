"""The load harness's pure parts: histogram, schedule, message templates, configuration,
the split of work over workers, and the report's arithmetic."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from processes import yaml_keys

from simulator.load.config import LoadConfig, decode_config
from simulator.load.engine import Schedule
from simulator.load.histogram import (
    BUCKETS,
    MAX_US,
    Histogram,
    bucket_bounds,
    bucket_of,
)
from simulator.load.messages import Counters, Snapshot
from simulator.load.report import Aggregator
from simulator.load.run import plans
from simulator.load.traffic import MessageFactory
from smppcore.codec import decode
from smppcore.config import ConfigError
from smppcore.configfile import read_yaml_mapping
from smppcore.constants import DataCoding, EsmClass
from smppcore.pdu import SubmitSm
from smppcore.segment import parse_udh
from smppcore.text import decode_text
from smppcore.tlv import Tag

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = sorted((ROOT / "conf" / "scenarios").glob("*.yaml"))


# --- histogram ------------------------------------------------------------------------------


def test_buckets_are_contiguous_monotonic_and_bounded() -> None:
    previous_high = -1
    for index in range(BUCKETS):
        low, high = bucket_bounds(index)
        if low > MAX_US:
            break
        assert low == previous_high + 1, index
        assert bucket_of(low) == index
        assert bucket_of(high) == index
        assert high - low <= max(0, low) / 64 + 1  # 1/64 of the value at most (P = 7)
        previous_high = high
    assert bucket_of(MAX_US * 10) == bucket_of(MAX_US) < BUCKETS


def exact_percentile(values: list[int], q: float) -> int:
    ordered = sorted(values)
    rank = max(1, -(-q * len(ordered) // 100))
    return ordered[int(rank) - 1]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_percentiles_are_within_the_bucket_precision(seed: int) -> None:
    rng = random.Random(seed)
    values = [int(rng.lognormvariate(8, 1.5)) for _ in range(20_000)]  # µs, 3 decades
    hist = Histogram()
    for v in values:
        hist.record(v / 1e6)
    assert hist.count == len(values)
    assert (hist.min, hist.max) == (min(values), max(values))
    for q in (1, 50, 90, 99, 99.9):
        exact = exact_percentile(values, q)
        assert hist.percentile(q) == pytest.approx(exact, rel=0.01, abs=1), q
    assert hist.percentile(100) == max(values)
    assert hist.mean() == pytest.approx(sum(values) / len(values), rel=1e-6)


def test_merging_and_the_sparse_form_change_nothing() -> None:
    rng = random.Random(7)
    a, b, whole = Histogram(), Histogram(), Histogram()
    for i in range(5000):
        seconds = rng.expovariate(100)
        (a if i % 3 else b).record(seconds)
        whole.record(seconds)
    merged = Histogram.from_sparse(a.to_sparse())
    merged.merge(Histogram.from_sparse(msgspec.msgpack.decode(
        msgspec.msgpack.encode(b.to_sparse()), type=type(b.to_sparse())
    )))  # fmt: skip
    assert merged.counts == whole.counts
    assert (merged.count, merged.total, merged.min, merged.max) == (
        whole.count,
        whole.total,
        whole.min,
        whole.max,
    )


def test_negative_and_huge_durations_are_clamped() -> None:
    hist = Histogram()
    hist.record(-1.0)
    hist.record(10**9)
    assert hist.min == 0
    assert hist.max == MAX_US


# --- schedule -------------------------------------------------------------------------------


def test_schedule_without_ramp_is_evenly_spaced() -> None:
    s = Schedule(rate=100, ramp=0)
    assert [s.time_of(i) for i in range(3)] == [0, 0.01, 0.02]
    assert s.count_by(1.0) == pytest.approx(100)


def test_schedule_ramp_climbs_linearly_then_holds() -> None:
    s = Schedule(rate=1000, ramp=10)
    assert s.count_by(10) == pytest.approx(5000)  # the area under the ramp
    assert s.count_by(5) == pytest.approx(1250)
    assert s.count_by(11) == pytest.approx(6000)
    for i in (0, 1, 100, 4999, 5000, 5001, 12345):
        assert s.count_by(s.time_of(i)) == pytest.approx(i, abs=1e-6)


# --- message templates ----------------------------------------------------------------------


def factory(**traffic: Any) -> MessageFactory:
    config = decode_config({"traffic": traffic})
    return MessageFactory(config.traffic, 1)


def submits(wires: list[bytes]) -> list[SubmitSm]:
    out = []
    for wire in wires:
        pdu = decode(wire)
        assert isinstance(pdu, SubmitSm)
        out.append(pdu)
    return out


def test_addresses_follow_the_ranges_and_sequence_numbers_are_patched() -> None:
    f = factory(
        source={"prefix": "4477", "digits": 6, "ton": 1, "npi": 1},
        destination={"prefix": "12", "digits": 3, "ton": 2, "npi": 8},
        priority=2,
        registered_delivery=True,
    )
    seen = set()
    for seq in (1, 2, 0x7FFFFFFF):
        [pdu] = submits(f.message(seq))
        assert pdu.sequence_number == seq
        assert pdu.source_addr.startswith("4477")
        assert len(pdu.source_addr) == 10
        assert pdu.source_addr.isdigit()
        assert pdu.destination_addr.startswith("12")
        assert len(pdu.destination_addr) == 5
        assert (pdu.dest_addr_ton, pdu.dest_addr_npi, pdu.priority_flag) == (2, 8, 2)
        assert pdu.registered_delivery == 1
        seen.add(pdu.source_addr)
    assert len(seen) > 1


def test_ucs2_texts_carry_emoji_and_decode() -> None:
    f = factory(mix=[{"coding": "ucs2", "length": 40}])
    [pdu] = submits(f.message(5))
    assert pdu.data_coding == DataCoding.UCS2
    text = decode_text(pdu.short_message, pdu.data_coding)
    assert any(ord(ch) > 0xFFFF for ch in text)


def test_long_messages_go_as_udh_parts_with_one_fresh_reference() -> None:
    f = factory(mix=[{"coding": "gsm7", "length": 400, "long": "udh"}])
    first = submits(f.message(10))
    second = submits(f.message(20))
    assert len(first) == 3
    assert [p.sequence_number for p in first] == [10, 11, 12]
    infos = [parse_udh(p.short_message)[0] for p in first]
    assert all(p.esm_class & EsmClass.UDHI for p in first)
    assert [i.seq for i in infos if i] == [1, 2, 3]
    assert len({i.ref for i in infos if i}) == 1
    assert parse_udh(second[0].short_message)[0].ref != infos[0].ref  # type: ignore[union-attr]
    assert len({p.source_addr for p in first}) == 1


def test_long_messages_as_message_payload() -> None:
    f = factory(mix=[{"coding": "ucs2", "length": 300, "long": "payload"}])
    [pdu] = submits(f.message(1))
    assert pdu.short_message == b""
    payload = pdu.tlv(Tag.MESSAGE_PAYLOAD)
    assert isinstance(payload, bytes)
    assert len(payload) > 140
    assert f.parts_per_message() == 1


def test_the_mix_follows_its_weights() -> None:
    f = factory(mix=[{"weight": 3, "coding": "gsm7"}, {"weight": 1, "coding": "ucs2"}])
    codings = [submits(f.message(1))[0].data_coding for _ in range(4000)]
    assert codings.count(DataCoding.UCS2) / len(codings) == pytest.approx(0.25, abs=0.03)


def test_a_text_the_coding_cannot_carry_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="data_coding"):
        factory(mix=[{"coding": "ascii", "texts": ["Καλημέρα"]}])


# --- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"binds": {"window": 0}}, "$.binds.window", ">= 1"),
        ({"binds": {"windw": 5}}, "$.binds.windw", "unknown key"),
        ({"load": {"duration": None}}, "$.load.duration", "a run must end"),
        ({"traffic": {"mix": []}}, "$.traffic.mix", "at least one"),
        ({"traffic": {"source": {"prefix": "12a"}}}, "$.traffic.source.prefix", "regex"),
        ({"target": {"password": "123456789"}}, "$.target.password", "length"),
        ({"throttling": {"backoff": 1, "backoff_max": 0.5}}, "$.throttling.backoff_max", ">="),
    ],
)
def test_config_errors_name_the_key(data: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        decode_config(data, source="x.yaml")
    assert info.value.path == path
    assert reason in info.value.reason
    assert str(info.value).startswith("x.yaml: ")


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.name for p in SCENARIOS])
def test_every_example_scenario_loads(path: Path) -> None:
    config = decode_config(read_yaml_mapping(path), source=str(path))
    for entry in config.traffic.mix:
        assert entry.weight >= 0
    MessageFactory(config.traffic, 1)  # every text encodes


def test_the_reference_scenario_shows_every_key_with_its_default() -> None:
    path = ROOT / "conf" / "scenarios" / "reference.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert decode_config(data) == LoadConfig()
    keys = yaml_keys(data)

    def fields(t: Any) -> set[str]:
        out: set[str] = set()
        info = msgspec.inspect.type_info(t)

        def go(i: Any) -> None:
            if isinstance(i, msgspec.inspect.StructType):
                for f in i.fields:
                    out.add(f.encode_name)
                    go(f.type)
            elif isinstance(i, msgspec.inspect.UnionType):
                for m in i.types:
                    go(m)
            elif isinstance(i, msgspec.inspect.VarTupleType | msgspec.inspect.ListType):
                go(i.item_type)

        go(info)
        return out

    missing = fields(LoadConfig) - keys
    assert not missing, f"reference.yaml lacks {sorted(missing)}"


def test_missing_and_malformed_scenario_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        read_yaml_mapping(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("binds: [1, 2\n")
    with pytest.raises(ConfigError, match="YAML syntax error at line"):
        read_yaml_mapping(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml_mapping(bad)


# --- splitting the work ---------------------------------------------------------------------


def test_binds_rate_and_count_are_shared_by_binds() -> None:
    config = decode_config(
        {"binds": {"count": 5}, "load": {"workers": 2, "rate": 1000, "messages": 1001}}
    )
    ps = plans(config)
    assert [p.binds for p in ps] == [3, 2]
    assert [p.rate for p in ps] == [600, 400]
    assert sum(p.messages or 0 for p in ps) == 1001
    assert [p.worker for p in ps] == [0, 1]
    assert {p.workers for p in ps} == {2}


def test_never_more_workers_than_binds() -> None:
    config = decode_config({"binds": {"count": 1}, "load": {"workers": 8}})
    assert len(plans(config)) == 1


# --- the series -----------------------------------------------------------------------------


def snap(worker: int, second: int, accepted: int) -> Snapshot:
    empty = Histogram().to_sparse()
    return Snapshot(
        worker=worker,
        second=second,
        counters=Counters(accepted=accepted, submitted=accepted, messages=accepted),
        latency=empty,
        service=empty,
        receipt_latency=empty,
        awaiting=0,
        relays_received=0,
    )


def test_series_waits_for_every_worker_and_takes_differences() -> None:
    agg = Aggregator(2)
    agg.add(snap(0, 0, 100))
    agg.add(snap(0, 1, 250))
    assert agg.points == []  # worker 1 has not reported second 0 yet
    agg.add(snap(1, 0, 10))
    assert [p.counts["accepted"] for p in agg.points] == [110]
    agg.add(snap(1, 1, 30))
    assert [p.counts["accepted"] for p in agg.points] == [110, 170]
    assert agg.totals().accepted == 280


def test_series_stays_bounded_by_halving_its_resolution() -> None:
    agg = Aggregator(1)
    for second in range(5000):
        agg.add(snap(0, second, (second + 1) * 10))
    assert len(agg.points) <= 1200
    assert sum(p.counts["accepted"] for p in agg.points) == 50_000
    assert {p.width for p in agg.points[:-1]} == {agg.points[0].width}
    assert agg.points[0].width > 1
