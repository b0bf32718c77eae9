"""The carrier profiles do what conf/carrier.example.yaml says, tested statistically with
fixed seeds: unit level on :class:`Behaviour` and :class:`MessageIds` (20,000 draws each),
then one end-to-end run of 2,000 messages through a live Carrier, counting receipt states.

Tolerances: a share p of n draws is accepted within 4.5 standard deviations
(sqrt(p(1-p)/n)); quantiles within ±10%. The seeds are fixed, so a run repeats exactly;
the tolerances only say how far a correct implementation may land from the weights.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import statistics
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
from carrier_fixtures import DEADLINE, bind_esme, profile, receipt_of, running_carrier

from simulator.behaviour import Behaviour, Decision, MessageIds
from simulator.config import CarrierConfig, Dist, Profile, status_value
from smppcore.config import load_config
from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import SubmitSm, SubmitSmResp
from smppcore.receipt import state_from_word
from smppcore.tlv import Tag

EXAMPLE = Path(__file__).resolve().parent.parent / "conf" / "carrier.example.yaml"
N = 20_000
SOURCE = "MyBrand"
DEST = "447700900123"  # matches none of the example's rules


@pytest.fixture(scope="module")
def example() -> CarrierConfig:
    """conf/carrier.example.yaml, decoded as `smsc carrier` decodes it."""
    return load_config(yaml.safe_load(EXAMPLE.read_text()), CarrierConfig, source=str(EXAMPLE))


def behaviour(prof: Profile, seed: int | None = None) -> Behaviour:
    return Behaviour(prof, random.Random(prof.seed if seed is None else seed))


def decisions(b: Behaviour, n: int = N, source: str = SOURCE, dest: str = DEST) -> list[Decision]:
    return [b.decide(source, dest) for _ in range(n)]


def assert_share(count: int, n: int, p: float, what: str) -> None:
    """``count`` of ``n`` is within 4.5 standard deviations of the expected share ``p``."""
    tolerance = 4.5 * math.sqrt(p * (1 - p) / n) + 1 / n
    assert abs(count / n - p) <= tolerance, (
        f"{what}: {count}/{n} = {count / n:.4f}, expected {p:.4f} ± {tolerance:.4f}"
    )


def assert_mix(states: Iterable[MessageState], weights: dict[str, float], what: str) -> None:
    counts = Counter(states)
    n = sum(counts.values())
    total = sum(weights.values())
    expected = {state_from_word(w): v / total for w, v in weights.items()}
    assert set(counts) <= set(expected), f"{what}: states outside the mix: {counts}"
    for state, p in expected.items():
        assert_share(counts[state], n, p, f"{what} {state.name}")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def within(actual: float, expected: float, rel: float) -> bool:
    return abs(actual - expected) <= rel * expected


# --- the example file -----------------------------------------------------------------


def test_example_default_profile_is_the_embedded_default(example: CarrierConfig) -> None:
    """The example says its "default" profile shows the embedded default's values, except
    rules and mo.rate (none by default)."""
    shown = example.profiles["default"]
    as_default = msgspec.structs.replace(
        shown, rules=(), mo=msgspec.structs.replace(shown.mo, rate=0.0)
    )
    assert as_default == Profile()
    assert CarrierConfig().profiles == {"default": Profile()}


# --- the final state mix ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "flaky"])
def test_final_states_follow_the_profiles_weights(example: CarrierConfig, name: str) -> None:
    """profiles.*.states: 20,000 accepted submits end in each state with its weight's
    share (normalised), and report the err: code of profiles.*.errors (DELIVRD 0)."""
    prof = example.profiles[name]
    accepted = [d for d in decisions(behaviour(prof)) if d.status == CommandStatus.ESME_ROK]
    assert len(accepted) > N * 0.9
    assert_mix((d.state for d in accepted), prof.states, name)
    errors = {state_from_word(w): code for w, code in prof.errors.items()}
    for d in accepted:
        expected = 0 if d.state == MessageState.DELIVERED else errors.get(d.state, 0)
        assert d.error == expected, d


def test_weights_need_not_add_up_to_one() -> None:
    """Weights are normalised: 3:1 is 75% / 25%."""
    prof = load_config(profile(states={"DELIVRD": 3, "UNDELIV": 1}), Profile)
    assert_mix((d.state for d in decisions(behaviour(prof))), {"DELIVRD": 3, "UNDELIV": 1}, "3:1")


def test_submit_errors_refuse_with_each_status_at_its_probability(example: CarrierConfig) -> None:
    """profiles.flaky.submit_errors: 2% ESME_RSYSERR, 1% ESME_RMSGQFUL, 1% ESME_RTHROTTLED;
    a refused submit creates no message (no state, no receipt delay)."""
    prof = example.profiles["flaky"]
    made = decisions(behaviour(prof))
    counts = Counter(d.status for d in made)
    for name, p in prof.submit_errors.items():
        assert_share(counts[status_value(name)], N, p, name)
    assert_share(counts[CommandStatus.ESME_ROK], N, 1 - sum(prof.submit_errors.values()), "ok")
    assert set(counts) == {0, *(status_value(n) for n in prof.submit_errors)}
    for d in made:
        if d.status:
            assert (d.state, d.error, d.receipt_delay) == (MessageState.DELIVERED, 0, 0.0)


# --- delays ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "median_ms", "p99_ms"),
    [("receipt_delay", 300.0, 4000.0), ("submit_latency", 1.0, 8.0)],
)
def test_lognormal_delay_has_the_configured_median_and_p99(
    example: CarrierConfig, field: str, median_ms: float, p99_ms: float
) -> None:
    """{kind: lognormal, median, p99}: half the draws under the median, 99% under p99
    (each within ±10% over 20,000 draws); never above max."""
    dist: Dist = getattr(example.profiles["default"], field)
    assert (dist.median, dist.p99) == (median_ms, p99_ms)
    b = behaviour(example.profiles["default"])
    draws = [b.draw(dist) for _ in range(N)]
    assert within(statistics.median(draws), median_ms / 1000, 0.10), statistics.median(draws)
    assert within(quantile(draws, 0.99), p99_ms / 1000, 0.10), quantile(draws, 0.99)
    assert dist.max is not None
    assert min(draws) > 0
    assert max(draws) <= dist.max / 1000


def test_uniform_delay_stays_within_its_bounds_and_fills_them(example: CarrierConfig) -> None:
    """profiles.flaky.enroute_delay {uniform, 10..100 ms}: every draw in [10, 100] ms, the
    mean in the middle, both ends reached (within 1%)."""
    dist = example.profiles["flaky"].enroute_delay
    assert (dist.kind, dist.low, dist.high) == ("uniform", 10.0, 100.0)
    b = behaviour(example.profiles["flaky"])
    draws = [b.draw(dist) for _ in range(N)]
    assert 0.010 <= min(draws) < 0.011
    assert 0.099 < max(draws) <= 0.100
    assert within(statistics.fmean(draws), 0.055, 0.02)


def test_normal_and_exponential_delays_have_their_mean(example: CarrierConfig) -> None:
    """profiles.flaky: submit_latency {normal, mean 40, stddev 15} and receipt_delay
    {exponential, mean 2000}: sample mean (±5%) and stddev (±10%); never negative."""
    flaky = example.profiles["flaky"]
    b = behaviour(flaky)
    normal = [b.draw(flaky.submit_latency) for _ in range(N)]
    assert within(statistics.fmean(normal), 0.040, 0.05)
    assert within(statistics.stdev(normal), 0.015, 0.10)
    assert min(normal) >= 0
    expo = [b.draw(flaky.receipt_delay) for _ in range(N)]
    assert within(statistics.fmean(expo), 2.0, 0.05)
    assert within(statistics.stdev(expo), 2.0, 0.10)


def test_max_clamps_every_draw() -> None:
    """Dist.max: draws above it are clamped to it (the tail piles up at max)."""
    b = Behaviour(Profile(), random.Random(3))
    dist = Dist("lognormal", median=100.0, p99=5000.0, max=200.0)
    draws = [b.draw(dist) for _ in range(N)]
    assert max(draws) == 0.2
    sigma = math.log(5000.0 / 100.0) / statistics.NormalDist().inv_cdf(0.99)
    above = 1 - statistics.NormalDist(math.log(100.0), sigma).cdf(math.log(200.0))
    assert_share(sum(d == 0.2 for d in draws), N, above, "clamped share")


# --- rules -------------------------------------------------------------------------------


def test_rule_by_destination_prefix_overrides_the_mix(example: CarrierConfig) -> None:
    """Example rule: destination 999… → UNDELIV, err 1, for every message (the mix says 92%
    DELIVRD); other destinations still follow the mix."""
    b = behaviour(example.profiles["default"])
    forced = decisions(b, 2000, dest="999123456")
    assert {(d.status, d.state, d.error) for d in forced} == {(0, MessageState.UNDELIVERABLE, 1)}
    free = decisions(b, 2000, dest="998123456")
    assert Counter(d.state for d in free)[MessageState.DELIVERED] > 1700


def test_rule_by_text_refuses_the_submit_case_insensitively(example: CarrierConfig) -> None:
    """Example rule: text contains REJECTME → ESME_RINVDSTADR, in any case, and it wins
    over the later destination 999 rule (the first matching rule wins)."""
    b = behaviour(example.profiles["default"])
    assert b.needs_text
    for text, dest in (("please REJECTME", DEST), ("rejectme!", DEST), ("ReJeCtMe", "999")):
        statuses = {b.decide(SOURCE, dest, text).status for _ in range(200)}
        assert statuses == {CommandStatus.ESME_RINVDSTADR}, text
    assert b.decide(SOURCE, DEST, "reject me").status == CommandStatus.ESME_ROK


def test_rule_by_source_needs_every_condition_and_sets_state_and_delay(
    example: CarrierConfig,
) -> None:
    """Example rule: source SLOWBANK (and prefix SLOW) → DELIVRD with receipt_delay uniform
    5-10 s; SLOWCO matches the prefix only, so it follows the profile."""
    b = behaviour(example.profiles["default"])
    slow = decisions(b, 2000, source="SLOWBANK")
    assert {d.state for d in slow} == {MessageState.DELIVERED}
    assert all(5.0 <= d.receipt_delay <= 10.0 for d in slow)
    assert within(statistics.fmean(d.receipt_delay for d in slow), 7.5, 0.03)
    other = decisions(b, 2000, source="SLOWCO")
    assert len({d.state for d in other}) > 1
    assert within(statistics.median(d.receipt_delay for d in other), 0.3, 0.15)


def test_rule_with_only_a_delay_keeps_the_drawn_state(example: CarrierConfig) -> None:
    """Example rule: destination 4479… → state and error from the mix (null), receipt_delay
    exponential mean 200 ms."""
    prof = example.profiles["default"]
    made = decisions(behaviour(prof), N, dest="447912345678")
    assert_mix((d.state for d in made), prof.states, "4479")
    assert within(statistics.fmean(d.receipt_delay for d in made), 0.200, 0.05)


# --- repeatability and ids ------------------------------------------------------------


def test_same_seed_same_decisions_other_seed_other_decisions(example: CarrierConfig) -> None:
    """Profiles are seeded: the same seed replays the same decisions and delays."""
    flaky = example.profiles["flaky"]
    first = decisions(behaviour(flaky), 2000)
    again = decisions(behaviour(flaky), 2000)
    assert first == again
    assert decisions(Behaviour(flaky), 2000) == first  # no rng: Random(profile.seed)
    assert decisions(behaviour(flaky, seed=43), 2000) != first


ID_FORMATS = {
    "decimal": re.compile(r"[1-9][0-9]*"),
    "hex": re.compile(r"[1-9A-F][0-9A-F]*"),
    "uuid": re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"),
}


@pytest.mark.parametrize("style", list(ID_FORMATS))
def test_message_ids_are_unique_and_well_formed(style: str) -> None:
    """message_id: decimal, hex (upper case) or uuid (version 4): 20,000 ids, all distinct,
    all in their format and short enough for a message_id field (at most 64 octets)."""
    ids = MessageIds(style, random.Random(1))
    made = [ids.next() for _ in range(N)]
    assert len(set(made)) == N
    bad = [i for i in made if not ID_FORMATS[style].fullmatch(i)]
    assert not bad, bad[:5]
    assert max(len(i) for i in made) <= 64


def test_two_carrier_runs_do_not_reuse_message_ids() -> None:
    """MessageIds starts "somewhere random so two simulator runs do not reuse ids": two
    runs of the same configuration must not hand out the same first id (a router that
    outlives a simulator restart would match new receipts to old messages)."""

    async def first_id() -> str:
        async with running_carrier() as carrier:
            esme = await bind_esme(carrier)
            return await esme.submit_ok()

    assert asyncio.run(first_id()) != asyncio.run(first_id())


# --- end to end -------------------------------------------------------------------------


def test_2000_messages_through_a_live_carrier_follow_the_flaky_profile(
    example: CarrierConfig,
) -> None:
    """The example's flaky profile (delays set to 0 ms, faults off) on a live carrier:
    2,000 submits with registered_delivery 1. Refusals follow submit_errors; every accepted
    message gets exactly one receipt naming its id; receipt states follow the weights; err
    and network_error_code follow profiles.flaky.errors."""
    flaky = example.profiles["flaky"]
    zero = Dist("fixed", ms=0.0)
    fast = msgspec.structs.replace(
        flaky,
        submit_latency=zero,
        receipt_delay=zero,
        enroute_delay=zero,
        misbehave=msgspec.structs.replace(flaky.misbehave, drop_after_pdus=None),
    )
    n = 2000

    async def main() -> tuple[list[SubmitSmResp], list[Any]]:
        config = msgspec.structs.replace(
            example,
            port=0,
            admin_port=None,
            outbind=(),
            accounts=tuple(
                msgspec.structs.replace(a, throughput=None, burst=None) for a in example.accounts
            ),
            profiles={**example.profiles, "flaky": fast},
        )
        async with running_carrier(config) as carrier:
            esme = await bind_esme(carrier, "trx", "flaky", "flaky123")
            futs = [
                esme.c.send_request(
                    SubmitSm(
                        source_addr=SOURCE,
                        destination_addr=f"3069{i:08d}",
                        registered_delivery=1,
                        short_message=b"e2e %d" % i,
                    )
                )
                for i in range(n)
            ]
            async with asyncio.timeout(DEADLINE * 2):
                resps = await asyncio.gather(*futs)
            accepted = sum(1 for r in resps if r.command_status == 0)
            await esme.receipts(accepted, timeout=DEADLINE * 2)
            return resps, list(esme.delivered)  # type: ignore[return-value]

    resps, receipts = asyncio.run(main())
    counts = Counter(r.command_status for r in resps)
    for name, p in flaky.submit_errors.items():
        assert_share(counts[status_value(name)], n, p, name)
    ids = [r.message_id for r in resps if r.command_status == 0]
    assert all(r.message_id == "" for r in resps if r.command_status)
    assert len(set(ids)) == len(ids)
    assert sorted(str(p.tlv(Tag.RECEIPTED_MESSAGE_ID)) for p in receipts) == sorted(ids)
    states = [MessageState(p.tlv(Tag.MESSAGE_STATE)) for p in receipts]
    assert_mix(states, flaky.states, "receipts")
    errors = {state_from_word(w): code for w, code in flaky.errors.items()}
    for pdu, state in zip(receipts, states, strict=True):
        r = receipt_of(pdu)
        assert r.state == state
        err = 0 if state == MessageState.DELIVERED else errors.get(state, 0)
        assert r.error == err
        nec = pdu.tlv(Tag.NETWORK_ERROR_CODE)
        assert nec == (bytes((3,)) + err.to_bytes(2, "big") if err else None)
