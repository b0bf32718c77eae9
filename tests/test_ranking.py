"""Choosing by cost per delivered message (issue 15): candidates ranked by price per part ÷
estimated delivery rate (decayed receipts pulled toward a prior), ``rank: price`` globally or
per route, service levels that exclude a carrier, and exploration. Pure: time is a parameter
(the carriers' health is driven by hand)."""

from __future__ import annotations

import random
from decimal import Decimal

from router.config import CarrierPrice, HealthConfig, Route, RoutingConfig
from router.health import CarrierHealth, HealthView, rejected_kind
from router.metrics import no_route_reason
from router.model import Address, Message, NoRoute, RouteDecision
from router.routing import (
    NO_SERVICE,
    AccountPolicy,
    Chooser,
    RouteTable,
    choose,
    delivery_estimate,
    explain,
    format_explanation,
)
from smppcore.constants import CommandStatus

ANY = AccountPolicy()
HEALTH = HealthConfig(window_seconds=60.0, min_delivery=0.3)


def msg(dest: str = "447700900001", tried: tuple[str, ...] = ()) -> Message:
    return Message(
        id="m1",
        account="acme",
        source=Address(5, 0, "Shop"),
        destination=Address(1, 1, dest),
        tried=tried,
    )


def table(**route: object) -> RouteTable:
    carriers = (
        CarrierPrice(carrier="cheap", price="0.0100"),
        CarrierPrice(carrier="mid", price="0.0120"),
        CarrierPrice(carrier="dear", price="0.0200"),
    )
    return RouteTable([Route(prefix="44", carriers=carriers, **route)])  # type: ignore[arg-type]


class Fleet:
    """Three carriers' live health, fed receipts and submit outcomes at given times."""

    def __init__(self) -> None:
        self.health = {n: CarrierHealth(n, HEALTH, 0.0) for n in ("cheap", "mid", "dear")}
        for h in self.health.values():
            h.set_binds(1)

    def receipts(self, carrier: str, now: float, delivered: int, failed: int) -> None:
        h = self.health[carrier]
        for _ in range(delivered):
            h.record_receipt(now, True)
        for _ in range(failed):
            h.record_receipt(now, False)

    def views(self, now: float) -> dict[str, HealthView]:
        return {n: h.view(now) for n, h in self.health.items()}


def first(t: RouteTable, views: dict[str, HealthView], **kw: object) -> str:
    decision = choose(msg(), table=t, policy=ANY, health=views, pinned=None, now=0, **kw)  # type: ignore[arg-type]
    assert isinstance(decision, RouteDecision), decision
    return decision.carrier


# -- cost per delivered message ------------------------------------------------------------------


def test_a_carrier_with_no_receipts_is_estimated_at_the_prior_not_perfect() -> None:
    settings = RoutingConfig(prior_delivery=0.8, prior_weight=10)
    assert delivery_estimate(HealthView(carrier="x"), settings) == 0.8
    # ten receipts all delivered weigh as much as the prior: halfway between
    proven = HealthView(carrier="x", delivery=1.0, receipts=10.0)
    assert abs(delivery_estimate(proven, settings) - 0.9) < 1e-9


def test_the_cheapest_loses_to_the_next_by_cost_per_delivered_and_wins_back() -> None:
    """cheap (0.0100) delivering 50 % costs 0.0200 per delivered message: mid (0.0120)
    delivering 95 % costs 0.0126, and takes the traffic; when cheap delivers again its
    newer receipts outweigh the old ones (half-life 60 s) and it is first again."""
    t, fleet = table(), Fleet()
    fleet.receipts("cheap", 10.0, 95, 5)
    fleet.receipts("mid", 10.0, 95, 5)
    assert first(t, fleet.views(10.0)) == "cheap"

    fleet.receipts("cheap", 100.0, 150, 150)  # delivery falls to about a half
    fleet.receipts("mid", 100.0, 95, 5)
    views = fleet.views(100.0)
    assert 0.45 < views["cheap"].delivery < 0.6  # type: ignore[operator]
    assert first(t, views) == "mid"
    expl = explain("447700900001", "acme", table=t, policy=ANY, health=views, now=100.0)
    cheap = next(c for c in expl.candidates if c.carrier == "cheap")
    assert cheap.role == "fallback"
    assert cheap.cost_per_delivered is not None
    assert cheap.cost_per_delivered > Decimal("0.0126")

    # recovered: four minutes of good receipts, the bad ones aged 16-fold
    for minute in range(1, 5):
        fleet.receipts("cheap", 100.0 + 60 * minute, 60, 1)
        fleet.receipts("mid", 100.0 + 60 * minute, 60, 3)
    assert first(t, fleet.views(340.0)) == "cheap"


def test_rank_price_keeps_the_cheapest_whatever_it_delivers() -> None:
    fleet = Fleet()
    fleet.receipts("cheap", 10.0, 40, 60)  # 40 %: healthy (min_delivery 0.3), poor
    fleet.receipts("mid", 10.0, 99, 1)
    views = fleet.views(10.0)
    assert first(table(), views) == "mid"  # delivered_cost, the default
    assert first(table(), views, settings=RoutingConfig(rank="price")) == "cheap"
    assert first(table(rank="price"), views) == "cheap"  # the route's own rank wins
    assert first(table(rank="delivered_cost"), views, settings=RoutingConfig(rank="price")) == (
        "mid"
    )


def test_an_unhealthy_carrier_stays_behind_however_cheap() -> None:
    fleet = Fleet()
    fleet.receipts("cheap", 10.0, 20, 80)  # 20 % < min_delivery 0.3: unhealthy
    decision = choose(
        msg(), table=table(), policy=ANY, health=fleet.views(10.0), pinned=None, now=10.0
    )
    assert decision == RouteDecision("mid", Decimal("0.0120"), ("dear", "cheap"))


# -- service levels ------------------------------------------------------------------------------


def test_min_delivery_excludes_a_carrier_rather_than_ranking_it_lower() -> None:
    fleet = Fleet()
    fleet.receipts("cheap", 10.0, 70, 30)
    fleet.receipts("mid", 10.0, 90, 10)
    t = table(min_delivery=0.8)
    views = fleet.views(10.0)
    decision = choose(msg(), table=t, policy=ANY, health=views, pinned=None, now=10.0)
    assert decision == RouteDecision("mid", Decimal("0.0120"), ("dear",))  # cheap: not even last
    expl = explain("447700900001", "acme", table=t, policy=ANY, health=views, now=10.0)
    cheap = next(c for c in expl.candidates if c.carrier == "cheap")
    assert (cheap.role, cheap.eligible) == ("excluded", False)
    assert (
        cheap.why
        == "service level: delivery 0.70 under the route's min_delivery 0.8 (100 receipts)"
    )
    assert "min_delivery 0.8" in format_explanation(expl).splitlines()[1]


def test_max_latency_excludes_once_enough_submits_say_so() -> None:
    fleet = Fleet()
    slow = fleet.health["cheap"]
    for k in range(5):
        slow.record_submit(1.0 + k, 3.0, "accepted")
    t = table(max_latency=1.0)
    assert first(t, fleet.views(6.0)) == "cheap"  # five samples: not judged yet
    for k in range(10):
        slow.record_submit(6.0 + k, 3.0, "accepted")
    assert first(t, fleet.views(16.0)) == "mid"


def test_when_no_carrier_meets_the_service_levels_there_is_no_route() -> None:
    """... and the message will not wait for one that is merely down: a dispatcher parks
    only what some carrier, once up, could take (Chooser.waits_for)."""
    fleet = Fleet()
    for name in ("cheap", "mid", "dear"):
        fleet.receipts(name, 10.0, 50, 50)
    t = table(min_delivery=0.9)
    views = fleet.views(10.0)
    decision = choose(msg(), table=t, policy=ANY, health=views, pinned=None, now=10.0)
    assert decision == NoRoute(f"{NO_SERVICE} on route '44'")
    assert Chooser(t, views, {}).waits_for(msg(), None) is None
    why = Chooser(t, views, {}).never_reason(msg(), None)
    assert why == f"{NO_SERVICE} on route '44'"
    assert no_route_reason(why) == "service_levels"  # smsc_route_no_route_total's label
    # one of them down but meeting the levels: the message waits for it
    fleet.receipts("dear", 10.0, 900, 0)
    fleet.health["dear"].set_binds(0)
    views = fleet.views(10.0)
    assert isinstance(
        choose(msg(), table=t, policy=ANY, health=views, pinned=None, now=10.0), NoRoute
    )
    assert Chooser(t, views, {}).waits_for(msg(), None) == frozenset({"dear"})


def test_an_excluded_carrier_comes_back_once_its_measures_age() -> None:
    """Its old receipts decay below the samples needed to judge it: not assumed bad forever
    either; it is measured again."""
    fleet = Fleet()
    fleet.receipts("cheap", 0.0, 5, 15)
    t = table(min_delivery=0.8)
    assert first(t, fleet.views(1.0)) == "mid"
    assert first(t, fleet.views(200.0)) == "cheap"  # 20 receipts, 3 half-lives: 2.5 left


# -- exploration ---------------------------------------------------------------------------------


def test_a_share_of_messages_explores_the_least_measured_fallback() -> None:
    fleet = Fleet()
    fleet.receipts("cheap", 10.0, 100, 0)
    fleet.receipts("mid", 10.0, 50, 0)  # dear has no receipts at all: explored
    views = fleet.views(10.0)
    seen: list[str] = []
    chooser = Chooser(
        table(),
        views,
        {},
        settings=RoutingConfig(explore=0.05),
        rng=random.Random(7),
        on_explore=seen.append,
    )
    firsts = [chooser.choose(msg(), None) for _ in range(20_000)]
    explored = [d for d in firsts if isinstance(d, RouteDecision) and d.carrier != "cheap"]
    assert 0.04 < len(explored) / len(firsts) < 0.06
    assert {d.carrier for d in explored} == {"dear"}  # type: ignore[union-attr]
    assert explored[0] == RouteDecision("dear", Decimal("0.0200"), ("cheap", "mid"))
    assert seen == ["dear"] * len(explored)


def test_exploration_stops_while_every_fallback_is_measured_enough_and_resumes_as_it_ages() -> None:
    fleet = Fleet()
    for name in ("cheap", "mid", "dear"):
        fleet.receipts(name, 0.0, 60, 0)
    settings = RoutingConfig(explore=0.5, explore_until=50.0)

    def explored(now: float) -> int:
        chooser = Chooser(table(), fleet.views(now), {}, settings=settings, rng=random.Random(3))
        return sum(chooser.choose(msg(), None).carrier != "cheap" for _ in range(1000))  # type: ignore[union-attr]

    assert explored(1.0) == 0  # 60 receipts each: measured enough
    assert 400 < explored(60.0) < 600  # one half-life later: 30 each, explored again


def test_pinned_parts_retries_and_a_zero_share_are_never_explored() -> None:
    views = Fleet().views(0.0)
    rng = random.Random(1)
    always = Chooser(table(), views, {}, settings=RoutingConfig(explore=0.5), rng=rng)
    never = Chooser(table(), views, {}, settings=RoutingConfig(explore=0.0), rng=rng)
    for _ in range(200):
        assert always.choose(msg(), "cheap") == RouteDecision("cheap", Decimal("0.0100"), ())
        assert always.choose(msg(tried=("mid",)), None) == RouteDecision(
            "cheap", Decimal("0.0100"), ("dear",)
        )
        assert never.choose(msg(), None) == RouteDecision(
            "cheap", Decimal("0.0100"), ("mid", "dear")
        )
    # and without an rng (choose(), explain()) nothing is random
    assert Chooser(table(), views, {}).choose(msg(), None) == choose(
        msg(), table=table(), policy=ANY, health=views, pinned=None, now=0
    )


# -- throttles ------------------------------------------------------------------------------------


def test_throttles_neither_open_the_breaker_nor_lower_the_acceptance() -> None:
    h = CarrierHealth("cheap", HealthConfig(breaker_failures=3), 0.0)
    h.set_binds(1)
    for k in range(100):
        h.record_submit(k * 0.01, 0.01, "throttled")
    h.record_submit(1.0, 0.01, "accepted")
    view = h.view(1.0)
    assert (view.breaker, view.available, view.acceptance) == ("closed", True, 1.0)
    for k in range(3):
        h.record_submit(2.0 + k, 0.01, "temporary")
    assert h.view(5.0).breaker == "open"


def test_esme_rthrottled_and_rmsgqful_are_throttles_other_temporary_errors_are_not() -> None:
    assert rejected_kind(CommandStatus.ESME_RTHROTTLED) == "throttled"
    assert rejected_kind(CommandStatus.ESME_RMSGQFUL) == "throttled"
    assert rejected_kind(CommandStatus.ESME_RSYSERR) == "temporary"
