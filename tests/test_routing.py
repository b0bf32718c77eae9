"""Least-cost routing: longest destination-prefix match → candidate carriers with a price
(Decimal); per-account overrides; choose the cheapest healthy carrier, where health is live
(bound, recent acceptance and delivery rate, latency, circuit breaker). Explain a decision.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.config import CarrierPrice, HealthConfig, Route
from router.health import CarrierHealth, HealthView
from router.model import Address, Message, NoRoute, RouteDecision
from router.routing import (
    NO_MATCH,
    NOT_DIGITS,
    AccountPolicy,
    RouteTable,
    choose,
    explain,
    format_explanation,
    normalize_destination,
)

ANY = AccountPolicy()


def cp(carrier: str, price: str | int) -> CarrierPrice:
    return CarrierPrice(carrier=carrier, price=price)


def route(prefix: str, *carriers: CarrierPrice, accounts: tuple[str, ...] = ()) -> Route:
    return Route(prefix=prefix, carriers=carriers, accounts=accounts)


def msg(dest: str, account: str = "acme", tried: tuple[str, ...] = ()) -> Message:
    return Message(
        id="m1",
        account=account,
        source=Address(5, 0, "Shop"),
        destination=Address(1, 1, dest),
        tried=tried,
    )


def views(*names: str, **overrides: HealthView) -> dict[str, HealthView]:
    out = {n: HealthView(carrier=n) for n in names}
    out.update(overrides)
    return out


TABLE = RouteTable(
    [
        route("", cp("world", "0.0500")),
        route("44", cp("uk", "0.0300"), cp("world", "0.0400")),
        route("447", cp("ukmobile", 20_000), cp("uk", "0.0250")),
        route("4477", cp("vodaish", "0.0100")),
        route("44", cp("cheapuk", "0.0010"), accounts=("acme", "beta")),
        route("33", cp("fr", "0.0200")),
        route("336", cp("frmob", "0.0150"), accounts=("acme",)),
    ]
)


def carriers_of(destination: str, account: str = "acme") -> list[str]:
    return [c.carrier for c in TABLE.candidates(destination, account)]


# -- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("destination", "account", "expected"),
    [
        ("4915112345", "zed", ["world"]),  # only "" matches
        ("441234567", "zed", ["uk", "world"]),
        ("447123456", "zed", ["ukmobile", "uk"]),
        ("4477123456", "zed", ["vodaish"]),
        ("+4477123456", "zed", ["vodaish"]),  # a leading + is dropped
        ("44", "zed", ["uk", "world"]),  # the prefix itself matches
        ("4", "zed", ["world"]),
    ],
)
def test_longest_prefix_wins(destination: str, account: str, expected: list[str]) -> None:
    assert carriers_of(destination, account) == expected


def test_an_account_route_beats_the_global_one_at_the_same_length() -> None:
    assert carriers_of("441234567", "acme") == ["cheapuk"]
    assert carriers_of("441234567", "beta") == ["cheapuk"]
    assert carriers_of("441234567", "zed") == ["uk", "world"]


def test_a_longer_global_prefix_beats_a_shorter_account_route() -> None:
    """acme's override is for 44; 447 has a global route, which is more specific."""
    assert carriers_of("447123456", "acme") == ["ukmobile", "uk"]


def test_a_longer_account_route_beats_a_shorter_global_one() -> None:
    assert carriers_of("33612345", "acme") == ["frmob"]
    assert carriers_of("33612345", "zed") == ["fr"]


def test_lookup_reports_the_prefix_and_whose_route_it_is() -> None:
    m = TABLE.lookup("+441234", "acme")
    assert m is not None
    assert (m.prefix, m.account_route) == ("44", True)
    m = TABLE.lookup("441234", "zed")
    assert m is not None
    assert (m.prefix, m.account_route) == ("44", False)


def test_prices_are_decimals_from_strings_or_micro_units() -> None:
    prices = {c.carrier: c.amount for c in TABLE.candidates("447123", "zed")}
    assert prices == {"ukmobile": Decimal("0.02"), "uk": Decimal("0.0250")}
    assert all(isinstance(p, Decimal) for p in prices.values())


@pytest.mark.parametrize("destination", ["", "+", "abc", "44 77", "+44-77", "٤٤٧", "++44"])
def test_destinations_that_are_not_digits_match_nothing_but_the_empty_prefix(
    destination: str,
) -> None:
    digits = normalize_destination(destination)
    if digits == "":  # "" and "+" are digits, none of them: only the "" route
        assert carriers_of(destination) == ["world"]
    else:
        assert digits is None
        assert TABLE.candidates(destination, "acme") == ()
        assert choose(msg(destination), table=TABLE, policy=ANY, health={}, pinned=None, now=0) == (
            NoRoute(NOT_DIGITS)
        )


def test_no_matching_route() -> None:
    table = RouteTable([route("44", cp("uk", "0.01"))])
    assert table.candidates("33123", "acme") == ()
    decision = choose(msg("33123"), table=table, policy=ANY, health=views("uk"), pinned=None, now=0)
    assert decision == NoRoute(NO_MATCH)


def test_an_empty_table_routes_nothing() -> None:
    assert RouteTable([]).candidates("44", "acme") == ()


@pytest.mark.parametrize(
    ("routes", "error"),
    [
        (
            [route("44", cp("a", "1")), route("44", cp("b", "1"))],
            r"routes\[1\].prefix: '44' for every account is already routed by routes\[0\]",
        ),
        (
            [
                route("44", cp("a", "1"), accounts=("x", "y")),
                route("44", cp("b", "1"), accounts=("y",)),
            ],
            r"routes\[1\].prefix: '44' for account 'y' is already routed by routes\[0\]",
        ),
        (
            [route("44", cp("a", "1"), cp("a", "2"))],
            r"routes\[0\].carriers\[1\].carrier: 'a' appears twice",
        ),
    ],
)
def test_ambiguous_routes_are_refused(routes: list[Route], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        RouteTable(routes)


def test_a_global_and_an_account_route_may_share_a_prefix() -> None:
    RouteTable([route("44", cp("a", "1")), route("44", cp("b", "1"), accounts=("x",))])


# -- choosing -----------------------------------------------------------------------------------

PRICED = RouteTable(
    [
        route(
            "44",
            cp("mid", "0.0200"),
            cp("cheap", "0.0100"),
            cp("dear", "0.0300"),
            cp("twin", "0.0200"),
        )
    ]
)
ALL = ("mid", "cheap", "dear", "twin")


def pick(
    health: dict[str, HealthView],
    *,
    policy: AccountPolicy = ANY,
    tried: tuple[str, ...] = (),
    pinned: str | None = None,
) -> RouteDecision | NoRoute:
    return choose(
        msg("447700900", tried=tried),
        table=PRICED,
        policy=policy,
        health=health,
        pinned=pinned,
        now=0,
    )


def test_the_cheapest_healthy_carrier_wins_and_the_rest_are_fallbacks_by_price() -> None:
    assert pick(views(*ALL)) == RouteDecision("cheap", Decimal("0.0100"), ("mid", "twin", "dear"))


def test_unhealthy_carriers_come_after_every_healthy_one() -> None:
    sick = HealthView(carrier="cheap", healthy=False, reasons=("acceptance 0.10 < 0.50",))
    assert pick(views(*ALL, cheap=sick)) == RouteDecision(
        "mid", Decimal("0.0200"), ("twin", "dear", "cheap")
    )


def test_when_every_carrier_is_unhealthy_the_cheapest_still_goes() -> None:
    health = {n: HealthView(carrier=n, healthy=False) for n in ALL}
    decision = pick(health)
    assert isinstance(decision, RouteDecision)
    assert decision.carrier == "cheap"


def test_equal_prices_are_broken_by_health_score_then_route_order() -> None:
    better = HealthView(carrier="twin", score=0.9)
    decision = pick(views(*ALL, twin=better))
    assert isinstance(decision, RouteDecision)
    assert decision.fallbacks[:2] == ("twin", "mid")
    decision = pick(views(*ALL))
    assert isinstance(decision, RouteDecision)
    assert decision.fallbacks[:2] == ("mid", "twin")  # same score: as listed


@pytest.mark.parametrize(
    "down",
    [
        HealthView(carrier="cheap", binds=0, available=False, reasons=("no bind up",)),
        HealthView(carrier="cheap", breaker="open", available=False),
    ],
)
def test_unavailable_carriers_are_dropped(down: HealthView) -> None:
    decision = pick(views(*ALL, cheap=down))
    assert decision == RouteDecision("mid", Decimal("0.0200"), ("twin", "dear"))


def test_a_carrier_without_health_is_dropped() -> None:
    assert pick(views("dear")) == RouteDecision("dear", Decimal("0.0300"), ())


def test_carriers_already_tried_are_dropped() -> None:
    assert pick(views(*ALL), tried=("cheap", "twin")) == RouteDecision(
        "mid", Decimal("0.0200"), ("dear",)
    )


def test_account_policy_limits_carriers_and_price() -> None:
    only = AccountPolicy(allowed_carriers=frozenset({"dear", "twin"}))
    assert pick(views(*ALL), policy=only) == RouteDecision("twin", Decimal("0.0200"), ("dear",))
    capped = AccountPolicy(max_price=Decimal("0.02"))  # the ceiling itself is allowed
    assert pick(views(*ALL), policy=capped) == RouteDecision(
        "cheap", Decimal("0.0100"), ("mid", "twin")
    )
    broke = AccountPolicy(max_price=Decimal("0.001"))
    assert pick(views(*ALL), policy=broke) == NoRoute("no eligible carrier on route '44'")


def test_pinned_carrier_is_used_even_when_dearer_or_unhealthy_with_no_fallbacks() -> None:
    """Every part of a long message goes over the carrier that took the first part."""
    sick = HealthView(carrier="dear", healthy=False)
    assert pick(views(*ALL, dear=sick), pinned="dear") == RouteDecision(
        "dear", Decimal("0.0300"), ()
    )


@pytest.mark.parametrize(
    ("health", "tried", "pinned"),
    [
        (views("cheap", "mid", dear=HealthView(carrier="dear", available=False)), (), "dear"),
        (views(*ALL), ("dear",), "dear"),
        (views(*ALL), (), "elsewhere"),  # not a candidate for this destination
    ],
)
def test_pinned_carrier_unavailable_never_splits_the_message(
    health: dict[str, HealthView], tried: tuple[str, ...], pinned: str
) -> None:
    assert pick(health, tried=tried, pinned=pinned) == NoRoute(
        f"pinned carrier {pinned} unavailable"
    )


def test_live_health_moves_traffic_and_back() -> None:
    """A breaker opening on the cheap carrier sends traffic to the next; once half-open, the
    cheap one gets a trial again; poor delivery demotes it for as long as it lasts."""
    cfg = HealthConfig(breaker_failures=3, breaker_open=10.0, window_seconds=60.0)
    live = {n: CarrierHealth(n, cfg, 0.0) for n in ALL}
    for h in live.values():
        h.set_binds(1)

    def now_choice(now: float) -> str:
        d = pick({n: h.view(now) for n, h in live.items()})
        assert isinstance(d, RouteDecision)
        return d.carrier

    assert now_choice(0.0) == "cheap"
    for _ in range(3):
        live["cheap"].record_submit(1.0, 10.0, "failed")
    assert now_choice(1.0) == "mid"
    assert now_choice(11.0) == "cheap"  # half-open: the trial may go
    assert live["cheap"].try_acquire_trial(11.0)
    assert now_choice(11.5) == "mid"  # trial in flight
    live["cheap"].record_submit(12.0, 0.5, "accepted")
    assert now_choice(12.0) == "cheap"
    for _ in range(20):
        live["cheap"].record_receipt(13.0, delivered=False)
    assert now_choice(13.0) == "mid"
    for _ in range(30):
        live["cheap"].record_receipt(200.0, delivered=True)
    assert now_choice(200.0) == "cheap"


# -- the property -------------------------------------------------------------------------------

NAMES = ("a", "b", "c", "d", "e")


@st.composite
def scenarios(
    draw: st.DrawFn,
) -> tuple[RouteTable, dict[str, HealthView], AccountPolicy, tuple[str, ...]]:
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=5, unique=True))
    prices = [draw(st.integers(0, 5)) * 1000 for _ in names]
    table = RouteTable([route("4", *(cp(n, p) for n, p in zip(names, prices, strict=True)))])
    health: dict[str, HealthView] = {}
    for n in names:
        if draw(st.booleans()) or draw(st.booleans()):  # some carriers have no health at all
            health[n] = HealthView(
                carrier=n,
                available=draw(st.booleans()),
                healthy=draw(st.booleans()),
                score=draw(st.floats(0, 1)),
            )
    allowed = draw(st.none() | st.frozensets(st.sampled_from(NAMES)))
    ceiling = draw(st.none() | st.integers(0, 5).map(lambda k: Decimal(k) / 1000))
    tried = tuple(draw(st.lists(st.sampled_from(NAMES), max_size=3, unique=True)))
    return table, health, AccountPolicy(max_price=ceiling, allowed_carriers=allowed), tried


@given(scenarios())
def test_the_choice_is_always_the_cheapest_available_healthy_candidate(
    scenario: tuple[RouteTable, dict[str, HealthView], AccountPolicy, tuple[str, ...]],
) -> None:
    table, health, policy, tried = scenario
    candidates = table.candidates("4000", "acme")
    eligible = [
        c
        for c in candidates
        if c.carrier in health
        and health[c.carrier].available
        and c.carrier not in tried
        and (policy.allowed_carriers is None or c.carrier in policy.allowed_carriers)
        and (policy.max_price is None or c.amount <= policy.max_price)
    ]
    decision = choose(
        msg("4000", tried=tried), table=table, policy=policy, health=health, pinned=None, now=0
    )
    if not eligible:
        assert isinstance(decision, NoRoute)
        return
    assert isinstance(decision, RouteDecision)
    pool = [c for c in eligible if health[c.carrier].healthy] or eligible
    assert decision.price == min(c.amount for c in pool)
    assert decision.carrier in {c.carrier for c in pool}
    assert sorted((decision.carrier, *decision.fallbacks)) == sorted(c.carrier for c in eligible)
    # fallbacks keep the order: healthy before unhealthy, then by price
    keys = [
        (not health[n].healthy, next(c.amount for c in candidates if c.carrier == n))
        for n in (decision.carrier, *decision.fallbacks)
    ]
    assert keys == sorted(keys)
    # explain agrees with choose
    expl = explain("4000", "acme", table=table, policy=policy, health=health, now=0, tried=tried)
    assert (expl.choice, expl.price, expl.fallbacks) == (
        decision.carrier,
        decision.price,
        decision.fallbacks,
    )
    assert [c.carrier for c in expl.candidates if c.eligible] == [
        decision.carrier,
        *decision.fallbacks,
    ]


# -- explaining ---------------------------------------------------------------------------------


def test_explain_lists_every_candidate_with_its_reasons() -> None:
    health = views(
        "mid",
        "twin",
        cheap=HealthView(carrier="cheap", healthy=False, reasons=("delivery 0.10 < 0.30",)),
        dear=HealthView(carrier="dear", available=False, reasons=("breaker open (3.0s left)",)),
    )
    expl = explain(
        "+447700900123",
        "acme",
        table=PRICED,
        policy=AccountPolicy(allowed_carriers=frozenset({"mid", "cheap", "dear"})),
        health=health,
        now=1234.0,
        rates={"cheap": 212.5, "mid": None},
        windows={"mid": (3, 200), "cheap": (0, 100)},
    )
    assert (expl.prefix, expl.account_route, expl.at) == ("44", False, 1234.0)
    assert (expl.choice, expl.price, expl.fallbacks, expl.reason) == (
        "mid",
        Decimal("0.0200"),
        ("cheap",),
        None,
    )
    by_name = {c.carrier: c for c in expl.candidates}
    assert [c.carrier for c in expl.candidates] == ["mid", "cheap", "dear", "twin"]
    assert by_name["mid"].reasons == ()
    assert by_name["cheap"].reasons == ("unhealthy: delivery 0.10 < 0.30",)
    assert by_name["cheap"].eligible
    assert not by_name["cheap"].healthy
    assert by_name["dear"].reasons == ("unavailable: breaker open (3.0s left)",)
    assert by_name["twin"].reasons == ("not allowed for the account",)
    text = format_explanation(expl)
    lines = text.splitlines()
    assert lines[0] == "destination +447700900123 for account acme: prefix '44' (global route)"
    assert lines[1] == (
        "rank by delivered_cost; exploring 2% of messages while a fallback has under 50 receipts"
    )
    assert lines[2].split() == [
        "carrier",
        "price",
        "delivery",
        "n",
        "cost/dlvd",
        "latency",
        "rate/s",
        "window",
        "breaker",
        "why",
    ]
    assert [by_name[c].rate for c in ("cheap", "mid", "dear")] == [212.5, None, None]
    assert [by_name[c].role for c in ("mid", "cheap", "dear", "twin")] == [
        "first",
        "demoted",
        "excluded",
        "excluded",
    ]
    # no receipts yet: the prior delivery rate (0.8), so cost per delivered is price / 0.8
    assert by_name["mid"].cost_per_delivered == Decimal("0.025")
    mid, cheap, dear = (line.split() for line in lines[3:6])
    assert mid[:3] == ["->", "mid", "0.0200"]
    assert mid[5:10] == ["0.025000", "-", "-", "3/200", "closed"]  # no limit on its rate
    assert "lowest cost per delivered message" in lines[3]
    assert cheap[:2] == ["1", "cheap"]
    assert cheap[7:9] == ["212", "0/100"]  # msg/s, window use
    assert "demoted: unhealthy: delivery 0.10 < 0.30" in lines[4]
    assert dear[:2] == ["x", "dear"]
    assert "unavailable: breaker open (3.0s left)" in lines[5]
    assert lines[-1] == "choice: mid at 0.0200; then cheap"


def test_explain_without_a_route_or_a_choice() -> None:
    expl = explain("3312", "acme", table=PRICED, policy=ANY, health={}, now=0)
    assert expl.prefix is None
    assert expl.candidates == ()
    assert expl.reason == NO_MATCH
    assert format_explanation(expl).splitlines() == [
        "destination 3312 for account acme: no route",
        f"no choice: {NO_MATCH}",
    ]
    expl = explain("4477", "acme", table=PRICED, policy=ANY, health={}, now=0, tried=("mid",))
    assert expl.choice is None
    assert expl.reason == "no eligible carrier on route '44'"
    mid = next(c for c in expl.candidates if c.carrier == "mid")
    assert mid.reasons == ("already tried for this message", "unavailable: no health known")
    assert format_explanation(expl).endswith("no choice: no eligible carrier on route '44'")


def test_explain_an_account_override_and_a_pinned_group() -> None:
    expl = explain("4412", "acme", table=TABLE, policy=ANY, health=views("cheapuk"), now=0)
    assert (expl.prefix, expl.account_route, expl.choice) == ("44", True, "cheapuk")
    assert "(the account's own route)" in format_explanation(expl)
    expl = explain(
        "4412", "acme", table=TABLE, policy=ANY, health=views("cheapuk"), now=0, pinned="uk"
    )
    assert expl.reason == "pinned carrier uk unavailable"


# -- Chooser: choose() memoised for one dispatch pass -------------------------------------------


def test_chooser_decides_exactly_as_choose_for_every_input() -> None:
    """The per-pass memo (route, account, tried, pinned) never changes a decision: every
    message of a pass, asked in any order and twice, gets what choose() says, with account
    policies, tried carriers, pinned groups, an open breaker and a paused (unavailable)
    carrier in the views."""
    from router.routing import Chooser

    health = CarrierHealth("uk", HealthConfig(breaker_failures=1, breaker_open=30.0), 0.0)
    health.set_binds(1)
    health.record_submit(1.0, 0.1, "failed")  # breaker opens
    now = 2.0
    pass_views = views(
        "world",
        "ukmobile",
        "vodaish",
        "cheapuk",
        "fr",
        uk=health.view(now),
        frmob=HealthView(carrier="frmob", available=False, reasons=("paused by the operator",)),
    )
    policies = {
        "beta": AccountPolicy(allowed_carriers=frozenset({"uk", "world"})),
        "gamma": AccountPolicy(max_price=Decimal("0.0200")),
    }
    messages = [
        msg(dest, account, tried)
        for dest in ("447700900001", "447712345678", "441234567", "33612345", "3312", "+4477", "x1")
        for account in ("acme", "beta", "gamma", "zed")
        for tried in ((), ("ukmobile",), ("cheapuk", "world"))
    ]
    chooser = Chooser(TABLE, pass_views, policies)
    for m in messages + messages[::-1]:
        for pinned in (None, "uk", "world", "cheapuk"):
            expected = choose(
                m,
                table=TABLE,
                policy=policies.get(m.account, ANY),
                health=pass_views,
                pinned=pinned,
                now=now,
            )
            assert chooser.choose(m, pinned) == expected, (m.destination.addr, m.account, pinned)
