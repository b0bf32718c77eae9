"""Least-cost routing, pure: which carrier a message goes to, and why.

Rules
-----

**Prefix match.** A destination is matched on its digits (one leading ``+`` is dropped; a
destination with any other non-digit matches no route). The longest matching prefix wins;
the prefix ``""`` matches every destination.

**Account overrides.** A route that lists ``accounts`` applies to those accounts only. At the
same prefix length an account's own route beats the global one; a LONGER global prefix beats
a SHORTER account route. So an override for ``44`` does not capture ``447`` traffic when a
global ``447`` route exists; to override it, list the account on a ``447`` route too. (The
most specific destination wins first, then the most specific account.) An override replaces
the global carrier list at its prefix; it does not merge with it.

**Choice** (:func:`choose`). From the matched carriers drop those that the account may not
use (``AccountPolicy.allowed_carriers``), that cost more than ``AccountPolicy.max_price``,
that are in ``message.tried``, that are not ``available`` (no bind up, breaker open, or no
health known), and those that break the route's service levels (``max_latency``: measured
submit_sm_resp latency above it; ``min_delivery``: measured DELIVRD share below it; judged
only on ``MIN_SAMPLES`` decayed samples or more). Service levels EXCLUDE: a carrier
breaking them is not a fallback; when none meets them there is no route (NO_SERVICE).
Rank the rest: healthy before unhealthy; then by the route's ``rank`` (else
``routing.rank``): ``delivered_cost`` — the price per part ÷ the estimated delivery rate
(:func:`delivery_estimate`: the decayed receipts' DELIVRD share pulled toward
``prior_delivery`` as if ``prior_weight`` receipts had it, so an unmeasured carrier, or one
whose receipts have aged away, is assumed middling, never perfect) — or ``price`` alone;
then the best health score; then the order listed in the route. The first is the choice,
the others are the fallbacks in that order. Unhealthy carriers are used only when no
healthy one is left: better a poor route than none.

**Prices.** A carrier's price is its rate card's price in effect at ``now`` for the
destination (router/rates.py) when it has one, else the route's.

**Exploration** (:class:`Chooser` with an rng). A share ``routing.explore`` of the messages
(neither pinned parts nor retries) go first to the eligible fallback with the fewest recent
receipts, the choice then being their first fallback, while that fallback has fewer than
``routing.explore_until`` recent receipts: every carrier keeps being measured, and once
they all are, exploration costs nothing more.

**Pinned** (concatenated messages). Once a part of a long message went over a carrier, every
other part must go the same way, or the handset may never reassemble it. With ``pinned`` set,
the choice is that carrier if it is still eligible by the rules above (healthy or not) and
there are no fallbacks; otherwise NoRoute("pinned carrier X unavailable"): routing never
splits a message. How long a part waits for its carrier, and what becomes of a message
whose carrier fails it, is the dispatcher's (router/pins.py).

**Spill-over** (``routing.spill``) is the dispatcher's too: when the choice has no capacity
for a message (windows full, rate used up), whether it goes to the first fallback that has
(``now``), after ``spill_wait`` (``wait``), or never (router/dispatch.py).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from decimal import Decimal
from typing import Literal, Protocol

import msgspec

from router.config import CarrierPrice, Rank, Route, RoutingConfig
from router.health import MIN_SAMPLES, BreakerState, HealthView
from router.model import Message, NoRoute, RouteDecision

__all__ = [
    "AccountPolicy",
    "CandidateView",
    "Chooser",
    "Explanation",
    "RouteMatch",
    "RouteTable",
    "choose",
    "explain",
    "format_explanation",
    "normalize_destination",
]


NO_MATCH = "no route matches the destination"
NOT_DIGITS = "destination is not digits (an optional leading + then 0-9)"


class AccountPolicy(msgspec.Struct, frozen=True, gc=False):
    """What one account may be routed over."""

    max_price: Decimal | None = None
    """Carriers priced above this (per part) are never used for the account; None: no cap."""
    allowed_carriers: frozenset[str] | None = None
    """Only these carriers; None: any."""


class RouteMatch(msgspec.Struct, frozen=True, gc=False):
    """The route a destination matched: its prefix, whether it is the account's own override,
    its carriers with prices, its ranking (None: the global one) and service levels."""

    prefix: str
    account_route: bool
    carriers: tuple[CarrierPrice, ...]
    rank: Rank | None = None
    max_latency: float | None = None
    min_delivery: float | None = None


def normalize_destination(destination: str) -> str | None:
    """The digits routing matches on: one leading ``+`` dropped; None if anything else is not
    an ASCII digit (alphanumeric or malformed addresses match no route)."""
    digits = destination[1:] if destination.startswith("+") else destination
    if digits and not (digits.isascii() and digits.isdigit()):
        return None
    return digits


def _no_match(destination: str) -> str:
    return NOT_DIGITS if normalize_destination(destination) is None else NO_MATCH


class _Entry:
    __slots__ = ("accounts", "everyone")

    def __init__(self) -> None:
        self.everyone: RouteMatch | None = None
        self.accounts: dict[str, RouteMatch] = {}


class RouteTable:
    """Routes compiled once into a dict per prefix; a lookup probes at most one entry per
    distinct prefix length (≤ 16), longest first."""

    __slots__ = ("_entries", "_lengths", "routes")

    def __init__(self, routes: Iterable[Route]) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)
        entries: dict[str, _Entry] = {}
        where: dict[tuple[str, str | None], int] = {}
        for i, route in enumerate(self.routes):
            if normalize_destination(route.prefix) != route.prefix:
                raise ValueError(f"routes[{i}].prefix: {route.prefix!r} is not digits")
            seen: set[str] = set()
            for j, cp in enumerate(route.carriers):
                if cp.carrier in seen:
                    raise ValueError(
                        f"routes[{i}].carriers[{j}].carrier: {cp.carrier!r} appears twice"
                    )
                seen.add(cp.carrier)
            entry = entries.setdefault(route.prefix, _Entry())
            owners: tuple[str | None, ...] = route.accounts or (None,)
            for owner in owners:
                key = (route.prefix, owner)
                if key in where:
                    whose = "every account" if owner is None else f"account {owner!r}"
                    raise ValueError(
                        f"routes[{i}].prefix: {route.prefix!r} for {whose} "
                        f"is already routed by routes[{where[key]}]"
                    )
                where[key] = i
                match = RouteMatch(
                    route.prefix,
                    owner is not None,
                    route.carriers,
                    route.rank,
                    route.max_latency,
                    route.min_delivery,
                )
                if owner is None:
                    entry.everyone = match
                else:
                    entry.accounts[owner] = match
        self._entries = entries
        self._lengths = tuple(sorted({len(p) for p in entries}, reverse=True))

    def lookup(self, destination: str, account: str) -> RouteMatch | None:
        """The route for ``destination`` as ``account`` sees it, or None."""
        digits = normalize_destination(destination)
        if digits is None:
            return None
        entries = self._entries
        n = len(digits)
        for length in self._lengths:
            if length > n:
                continue
            entry = entries.get(digits[:length])
            if entry is None:
                continue
            own = entry.accounts.get(account)
            if own is not None:
                return own
            if entry.everyone is not None:
                return entry.everyone
        return None

    def candidates(self, destination: str, account: str) -> tuple[CarrierPrice, ...]:
        """The carriers (with prices) that may take ``destination`` for ``account``."""
        match = self.lookup(destination, account)
        return () if match is None else match.carriers


# -- choosing ----------------------------------------------------------------------------------

DEFAULT_ROUTING = RoutingConfig()
NO_SERVICE = "no carrier meets the route's service levels"


class Prices(Protocol):
    """Where prices other than the routes' come from (router/rates.py's PriceBook)."""

    def prices(
        self, carriers: Iterable[str], digits: str, now: float
    ) -> tuple[Decimal | None, ...]: ...


def card_prices(
    prices: Prices | None, match: RouteMatch, destination: str, now: float
) -> tuple[Decimal | None, ...]:
    """The rate cards' price of each carrier of ``match`` for ``destination`` at ``now``
    (None: the route's price applies); () without rate cards."""
    if prices is None:
        return ()
    digits = normalize_destination(destination) or ""
    return prices.prices((cp.carrier for cp in match.carriers), digits, now)


def delivery_estimate(view: HealthView, settings: RoutingConfig = DEFAULT_ROUTING) -> float:
    """The share of messages the carrier is expected to deliver: its decayed receipts'
    DELIVRD share, pulled toward ``prior_delivery`` as if ``prior_weight`` receipts had
    it. No receipts: the prior; old receipts decay, so the prior comes back."""
    n = view.receipts
    delivered = (view.delivery or 0.0) * n
    w = settings.prior_weight
    return (delivered + settings.prior_delivery * w) / (n + w)


def _cost(price: Decimal, estimate: float) -> float:
    return float(price) / estimate if estimate > 0 else math.inf


def _service_levels(match: RouteMatch, view: HealthView) -> list[str]:
    """Why ``view`` breaks the route's service levels ([] if it does not, or too few
    samples say so)."""
    out: list[str] = []
    limit = match.max_latency
    latency = view.latency
    measured = latency is not None and view.submits >= MIN_SAMPLES
    if limit is not None and latency is not None and measured and latency > limit:
        out.append(
            f"latency {latency:.2f}s over the route's max_latency {limit:g}s "
            f"({view.submits:.0f} samples)"
        )
    floor = match.min_delivery
    delivery = view.delivery
    measured = delivery is not None and view.receipts >= MIN_SAMPLES
    if floor is not None and delivery is not None and measured and delivery < floor:
        out.append(
            f"delivery {delivery:.2f} under the route's min_delivery {floor:g} "
            f"({view.receipts:.0f} receipts)"
        )
    return out


def _exclusions(
    cp: CarrierPrice,
    price: Decimal,
    policy: AccountPolicy,
    view: HealthView | None,
    tried: tuple[str, ...],
) -> list[str]:
    """Why ``cp`` may not take the message ([] if it may), service levels aside."""
    reasons: list[str] = []
    if policy.allowed_carriers is not None and cp.carrier not in policy.allowed_carriers:
        reasons.append("not allowed for the account")
    if policy.max_price is not None and price > policy.max_price:
        reasons.append(f"price {price} over the account's ceiling {policy.max_price}")
    if cp.carrier in tried:
        reasons.append("already tried for this message")
    if view is None:
        reasons.append("unavailable: no health known")
    elif not view.available:
        reasons.append("unavailable: " + (", ".join(view.reasons) or "no bind up"))
    return reasons


_Key = tuple[bool, float, float, int]


def _rank_key(
    rank: Rank, index: int, price: Decimal, view: HealthView, settings: RoutingConfig
) -> _Key:
    """Healthy first; then the lowest price, or cost per delivered message; then the best
    health score; then the route's order."""
    primary = float(price) if rank == "price" else _cost(price, delivery_estimate(view, settings))
    return (not view.healthy, primary, -view.score, index)


def _price(match: RouteMatch, i: int, cards: tuple[Decimal | None, ...]) -> Decimal:
    if cards:
        card = cards[i]
        if card is not None:
            return card
    return match.carriers[i].amount


def _decide(
    match: RouteMatch,
    policy: AccountPolicy,
    health: Mapping[str, HealthView],
    tried: tuple[str, ...],
    pinned: str | None,
    settings: RoutingConfig = DEFAULT_ROUTING,
    cards: tuple[Decimal | None, ...] = (),
) -> RouteDecision | NoRoute:
    rank = match.rank or settings.rank
    ranked: list[tuple[_Key, str, Decimal]] = []
    below_service = False
    for i, cp in enumerate(match.carriers):
        price = _price(match, i, cards)
        view = health.get(cp.carrier)
        if view is None or _exclusions(cp, price, policy, view, tried):
            continue
        if _service_levels(match, view):
            below_service = True
            continue
        ranked.append((_rank_key(rank, i, price, view, settings), cp.carrier, price))
    if pinned is not None:
        for _, carrier, price in ranked:
            if carrier == pinned:
                return RouteDecision(carrier, price, ())
        return NoRoute(f"pinned carrier {pinned} unavailable")
    if not ranked:
        if below_service:
            return NoRoute(f"{NO_SERVICE} on route {match.prefix!r}")
        return NoRoute(f"no eligible carrier on route {match.prefix!r}")
    ranked.sort()
    _, carrier, price = ranked[0]
    return RouteDecision(carrier, price, tuple(c for _, c, _ in ranked[1:]))


def choose(
    message: Message,
    *,
    table: RouteTable,
    policy: AccountPolicy,
    health: Mapping[str, HealthView],
    pinned: str | None,
    now: float,
    settings: RoutingConfig = DEFAULT_ROUTING,
    prices: Prices | None = None,
) -> RouteDecision | NoRoute:
    """The carrier for ``message`` and its fallbacks (module docstring: Choice, Pinned).

    ``health`` holds each carrier's view already taken at ``now``; a carrier missing from it
    is unavailable. ``now`` also picks the rate cards' prices in effect (``prices``).
    Deterministic: exploration is the :class:`Chooser`'s.
    """
    match = table.lookup(message.destination.addr, message.account)
    if match is None:
        return NoRoute(_no_match(message.destination.addr))
    cards = card_prices(prices, match, message.destination.addr, now)
    return _decide(match, policy, health, message.tried, pinned, settings, cards)


def explore(
    decision: RouteDecision,
    match: RouteMatch,
    health: Mapping[str, HealthView],
    cards: tuple[Decimal | None, ...] = (),
    until: float | None = None,
) -> RouteDecision | None:
    """``decision`` with its least-measured fallback (fewest recent receipts; the first in
    rank order among equals) put first and the rest after it in order; None when that one
    has ``until`` receipts or more (every fallback is measured enough)."""
    fallbacks = decision.fallbacks

    def receipts(k: int) -> float:
        view = health.get(fallbacks[k])
        return 0.0 if view is None else view.receipts

    pick = min(range(len(fallbacks)), key=lambda k: (receipts(k), k))
    if until is not None and receipts(pick) >= until:
        return None
    carrier = fallbacks[pick]
    i = next(i for i, cp in enumerate(match.carriers) if cp.carrier == carrier)
    rest = (decision.carrier, *fallbacks[:pick], *fallbacks[pick + 1 :])
    return RouteDecision(carrier, _price(match, i, cards), rest)


_MemoKey = tuple[int, str, tuple[str, ...], str | None, tuple[Decimal | None, ...]]
_WaitKey = tuple[int, str, str | None, tuple[Decimal | None, ...]]


class Chooser:
    """:func:`choose` for many messages against one fixed route table, one fixed set of
    health views and fixed account policies (one dispatch pass): the decision for a route,
    an account, the carriers tried, the pinned carrier and the rate cards' prices is taken
    once and reused — it depends on nothing else. Bounded by the messages of the pass (make
    a new one per pass).

    With ``rng``, a share ``settings.explore`` of the messages that are neither pinned nor
    retried go first to the least-measured eligible carrier other than the choice
    (:func:`explore`), the choice then being its first fallback; ``on_explore`` is told
    each explored carrier.
    """

    __slots__ = (
        "_explore",
        "_health",
        "_memo",
        "_now",
        "_on_explore",
        "_policies",
        "_prices",
        "_rng",
        "_settings",
        "_table",
        "_up",
        "_waits",
    )

    def __init__(
        self,
        table: RouteTable,
        health: Mapping[str, HealthView],
        policies: Mapping[str, AccountPolicy],
        *,
        settings: RoutingConfig = DEFAULT_ROUTING,
        prices: Prices | None = None,
        now: float = 0.0,
        rng: random.Random | None = None,
        on_explore: Callable[[str], None] | None = None,
    ) -> None:
        self._table = table
        self._health = health
        self._policies = policies
        self._settings = settings
        self._prices = prices
        self._now = now
        self._rng = rng
        self._explore = settings.explore if rng is not None else 0.0
        self._on_explore = on_explore
        # keyed by id(match): the table (and so every match) outlives this object
        self._memo: dict[_MemoKey, RouteDecision | NoRoute] = {}
        self._waits: dict[_WaitKey, frozenset[str] | None] = {}
        self._up: dict[str, HealthView] | None = None

    def choose(
        self, message: Message, pinned: str | None, tried: tuple[str, ...] | None = None
    ) -> RouteDecision | NoRoute:
        """What ``choose(message, table=, policy=policies.get(account, AccountPolicy()),
        health=, pinned=, now=, settings=, prices=)`` returns; with ``tried``, as if the
        message had tried those (and, with an rng, sometimes explored)."""
        account = message.account
        match = self._table.lookup(message.destination.addr, account)
        if match is None:
            return NoRoute(_no_match(message.destination.addr))
        if tried is None:
            tried = message.tried
        cards = card_prices(self._prices, match, message.destination.addr, self._now)
        key = (id(match), account, tried, pinned, cards)
        decision = self._memo.get(key)
        if decision is None:
            policy = self._policies.get(account, _NO_POLICY)
            decision = self._memo[key] = _decide(
                match, policy, self._health, tried, pinned, self._settings, cards
            )
        if (
            self._explore
            and type(decision) is RouteDecision
            and decision.fallbacks
            and pinned is None
            and not tried
            and self._rng is not None
            and self._rng.random() < self._explore
        ):
            explored = explore(decision, match, self._health, cards, self._settings.explore_until)
            if explored is not None:
                if self._on_explore is not None:
                    self._on_explore(explored.carrier)
                return explored
        return decision

    def waits_for(self, message: Message, pinned: str | None) -> frozenset[str] | None:
        """The carriers that could take ``message`` if they were up (bound, breaker closed,
        not paused), whatever it tried: what it waits for when none of them can take it
        now. None when none ever could (no route, the account's limits exclude every
        carrier of its route or its pinned carrier, or none meets the route's service
        levels as measured now): it will never go."""
        account = message.account
        match = self._table.lookup(message.destination.addr, account)
        if match is None:
            return None
        cards = card_prices(self._prices, match, message.destination.addr, self._now)
        key = (id(match), account, pinned, cards)
        try:
            return self._waits[key]
        except KeyError:
            pass
        decision = self._as_if_up(message, match, pinned, cards)
        carriers = (
            frozenset((decision.carrier, *decision.fallbacks))
            if isinstance(decision, RouteDecision)
            else None
        )
        self._waits[key] = carriers
        return carriers

    def _as_if_up(
        self,
        message: Message,
        match: RouteMatch,
        pinned: str | None,
        cards: tuple[Decimal | None, ...],
    ) -> RouteDecision | NoRoute:
        """The decision for ``message`` with nothing tried and every carrier up (bound,
        breaker closed, not paused), its measures as they are."""
        up = self._up
        if up is None:
            up = self._up = {
                name: msgspec.structs.replace(
                    view, binds=max(1, view.binds), breaker="closed", available=True, reasons=()
                )
                for name, view in self._health.items()
            }
        policy = self._policies.get(message.account, _NO_POLICY)
        return _decide(match, policy, up, (), pinned, self._settings, cards)

    def never_reason(self, message: Message, pinned: str | None) -> str:
        """Why ``message`` will never go (when :meth:`waits_for` says None): the NoRoute
        reason of its route with every carrier up."""
        match = self._table.lookup(message.destination.addr, message.account)
        if match is None:
            return _no_match(message.destination.addr)
        cards = card_prices(self._prices, match, message.destination.addr, self._now)
        decision = self._as_if_up(message, match, pinned, cards)
        return decision.reason if isinstance(decision, NoRoute) else "no route"


_NO_POLICY = AccountPolicy()


# -- explaining --------------------------------------------------------------------------------

Role = Literal["first", "fallback", "demoted", "excluded"]


class CandidateView(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """One carrier of the matched route, as routing judged it."""

    carrier: str
    price: Decimal
    """Per part, in the routing currency: the rate card's price in effect, else the route's."""
    price_source: Literal["route", "card"] = "route"
    available: bool
    healthy: bool
    eligible: bool
    """May take the message (no exclusion reason)."""
    role: Role = "excluded"
    """``first`` (the choice), ``fallback`` (eligible, healthy, later in order), ``demoted``
    (eligible but unhealthy: used only when no healthy one is left), ``excluded``."""
    why: str = ""
    """Why it has its role, in a sentence."""
    reasons: tuple[str, ...]
    """Why it is excluded; for an eligible but unhealthy carrier, why it is demoted."""
    score: float
    delivery: float | None = None
    """Measured share of receipts DELIVRD (decayed); None before any."""
    receipts: float = 0.0
    """The decayed receipt count behind ``delivery``."""
    delivery_estimate: float = 0.0
    """The delivery rate ranking uses: ``delivery`` pulled toward the prior."""
    cost_per_delivered: Decimal | None = None
    """``price`` ÷ ``delivery_estimate``; None when nothing is expected to be delivered."""
    latency: float | None = None
    """Average submit_sm_resp latency in seconds (decayed); None before any."""
    breaker: BreakerState = "closed"
    rate: float | None = None
    """Submits per second the router may send it now (its adaptive rate, router/aimd.py);
    None: no limit (none configured, no throttle met)."""
    in_flight: int | None = None
    """Submits awaiting an answer; None: unknown."""
    window: int | None = None
    """Submits its bound binds may have in flight together; None: unknown."""


class Explanation(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Why a destination routes the way it does for an account, at ``at``."""

    destination: str
    account: str
    at: float
    prefix: str | None
    """The matched route's prefix; None when no route matches."""
    account_route: bool = False
    rank: Rank = "delivered_cost"
    """How the matched route orders its carriers."""
    max_latency: float | None = None
    min_delivery: float | None = None
    explore: float = 0.0
    """Share of messages sent first to the least-measured fallback instead of the choice ..."""
    explore_until: float | None = None
    """... while that fallback has fewer recent receipts than this (None: always)."""
    spill: Literal["now", "wait", "never"] = "now"
    """When the choice has no capacity (windows full, rate used up): ``now``, the next
    carrier takes the message at once; ``wait``, after it waited ``spill_wait`` seconds;
    ``never``, it waits for the choice."""
    spill_wait: float = 0.0
    long_message_failure: Literal["fail_all", "resend_all"] = "fail_all"
    """What becomes of a long message whose pinned carrier fails a part for good."""
    candidates: tuple[CandidateView, ...] = ()
    """Eligible carriers first in the order they would be used, then the excluded ones."""
    choice: str | None = None
    price: Decimal | None = None
    fallbacks: tuple[str, ...] = ()
    reason: str | None = None
    """Why there is no choice (the NoRoute reason)."""


def spill_text(expl: Explanation) -> str:
    """How the choice's lack of capacity is met, in a sentence."""
    first = expl.choice or "the first choice"
    if expl.spill == "now":
        return f"when {first} has no capacity (windows full, rate used up): the next at once"
    if expl.spill == "wait":
        return (
            f"when {first} has no capacity: wait up to {expl.spill_wait * 1000:g} ms "
            "for it, then the next"
        )
    return f"when {first} has no capacity: wait for it (never spill)"


def _money(value: Decimal | float) -> Decimal:
    return Decimal(value).quantize(Decimal("0.000001")) if math.isfinite(value) else Decimal(0)


def explain(
    destination: str,
    account: str,
    *,
    table: RouteTable,
    policy: AccountPolicy,
    health: Mapping[str, HealthView],
    now: float,
    tried: tuple[str, ...] = (),
    pinned: str | None = None,
    rates: Mapping[str, float | None] | None = None,
    windows: Mapping[str, tuple[int, int]] | None = None,
    settings: RoutingConfig = DEFAULT_ROUTING,
    prices: Prices | None = None,
) -> Explanation:
    """What :func:`choose` decides for ``destination`` and ``account``, with every candidate
    and why it was taken, demoted or excluded, its measures, its send rate (``rates``) and
    its window use (``windows``: carrier → in flight, window)."""
    match = table.lookup(destination, account)
    if match is None:
        return Explanation(
            destination=destination,
            account=account,
            at=now,
            prefix=None,
            rank=settings.rank,
            reason=_no_match(destination),
            spill=settings.spill,
            spill_wait=settings.spill_wait,
            long_message_failure=settings.long_message_failure,
        )
    rank = match.rank or settings.rank
    cards = card_prices(prices, match, destination, now)
    decision = _decide(match, policy, health, tried, pinned, settings, cards)
    chosen = decision if isinstance(decision, RouteDecision) else None
    order = () if chosen is None else (chosen.carrier, *chosen.fallbacks)
    views: dict[str, CandidateView] = {}
    for i, cp in enumerate(match.carriers):
        price = _price(match, i, cards)
        view = health.get(cp.carrier)
        reasons = _exclusions(cp, price, policy, view, tried)
        if view is not None:
            reasons += ["service level: " + r for r in _service_levels(match, view)]
        view = view or HealthView(carrier=cp.carrier, available=False, healthy=False, score=0.0)
        estimate = delivery_estimate(view, settings)
        cost = _cost(price, estimate)
        in_flight, window = (windows or {}).get(cp.carrier, (None, None))
        eligible = not reasons and cp.carrier in order
        if not eligible and not reasons and pinned is not None:
            reasons = [f"the message's parts are pinned to {pinned}"]
        if eligible and not view.healthy:
            reasons = ["unhealthy: " + r for r in view.reasons]
        views[cp.carrier] = CandidateView(
            carrier=cp.carrier,
            price=price,
            price_source="card" if cards and cards[i] is not None else "route",
            available=view.available,
            healthy=view.healthy,
            eligible=eligible,
            reasons=tuple(reasons),
            score=view.score,
            delivery=view.delivery,
            receipts=view.receipts,
            delivery_estimate=estimate,
            cost_per_delivered=None if math.isinf(cost) else _money(cost),
            latency=view.latency,
            breaker=view.breaker,
            rate=(rates or {}).get(cp.carrier),
            in_flight=in_flight,
            window=window,
        )
    out: list[CandidateView] = []
    for k, name in enumerate(order):
        cv = views.pop(name)
        out.append(msgspec.structs.replace(cv, **_role(cv, k, rank, order)))
    for cv in views.values():
        why = "; ".join(cv.reasons) or "not eligible"
        out.append(msgspec.structs.replace(cv, eligible=False, role="excluded", why=why))
    return Explanation(
        destination=destination,
        account=account,
        at=now,
        prefix=match.prefix,
        account_route=match.account_route,
        rank=rank,
        max_latency=match.max_latency,
        min_delivery=match.min_delivery,
        explore=settings.explore if chosen is not None and chosen.fallbacks else 0.0,
        explore_until=settings.explore_until,
        spill=settings.spill,
        spill_wait=settings.spill_wait,
        long_message_failure=settings.long_message_failure,
        candidates=tuple(out),
        choice=None if chosen is None else chosen.carrier,
        price=None if chosen is None else chosen.price,
        fallbacks=() if chosen is None else chosen.fallbacks,
        reason=decision.reason if isinstance(decision, NoRoute) else None,
    )


def _measure(cv: CandidateView, rank: Rank) -> str:
    if rank == "price":
        return f"price {cv.price}"
    basis = f"{cv.receipts:.0f} receipts" if cv.receipts >= 0.5 else "no receipts: the prior"
    return (
        f"{cv.cost_per_delivered} = price {cv.price} / delivery "
        f"{cv.delivery_estimate:.2f} ({basis})"
    )


def _role(cv: CandidateView, k: int, rank: Rank, order: tuple[str, ...]) -> dict[str, object]:
    what = "price" if rank == "price" else "cost per delivered message"
    if k == 0:
        if not cv.healthy:
            why = "unhealthy, but no healthy carrier is eligible; " + _measure(cv, rank)
        elif len(order) == 1:
            why = "the only eligible carrier; " + _measure(cv, rank)
        else:
            why = f"lowest {what}: " + _measure(cv, rank)
        return {"role": "first", "why": why}
    if not cv.healthy:
        return {"role": "demoted", "why": "demoted: " + "; ".join(cv.reasons)}
    return {"role": "fallback", "why": f"next by {what}: {_measure(cv, rank)}"}


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _window(cv: CandidateView) -> str:
    if cv.in_flight is None or cv.window is None:
        return "-"
    return f"{cv.in_flight}/{cv.window}"


def format_explanation(expl: Explanation) -> str:
    """A readable table of ``expl`` for the CLI and the admin HTTP endpoint."""
    lines: list[str] = []
    head = f"destination {expl.destination} for account {expl.account}: "
    if expl.prefix is None:
        lines.append(head + "no route")
    else:
        kind = "the account's own route" if expl.account_route else "global route"
        lines.append(head + f"prefix {expl.prefix!r} ({kind})")
        levels = [f"rank by {expl.rank}"]
        if expl.max_latency is not None:
            levels.append(f"max_latency {expl.max_latency:g}s")
        if expl.min_delivery is not None:
            levels.append(f"min_delivery {expl.min_delivery:g}")
        if expl.explore:
            until = expl.explore_until
            levels.append(
                f"exploring {expl.explore:.0%} of messages"
                + ("" if until is None else f" while a fallback has under {until:g} receipts")
            )
        lines.append("; ".join(levels))
    if expl.candidates:
        header = (
            "", "carrier", "price", "delivery", "n", "cost/dlvd", "latency", "rate/s",
            "window", "breaker", "why",
        )  # fmt: skip
        rows = [header]
        for cv in expl.candidates:
            if cv.carrier == expl.choice:
                mark = "->"
            elif cv.carrier in expl.fallbacks:
                mark = str(expl.fallbacks.index(cv.carrier) + 1)
            else:
                mark = "x"
            rows.append(
                (
                    mark,
                    cv.carrier,
                    str(cv.price) + ("*" if cv.price_source == "card" else ""),
                    "-" if cv.delivery is None else f"{cv.delivery:.2f}",
                    f"{cv.receipts:.0f}",
                    "-" if cv.cost_per_delivered is None else str(cv.cost_per_delivered),
                    "-" if cv.latency is None else f"{cv.latency * 1000:.0f}ms",
                    "-" if cv.rate is None else f"{cv.rate:.0f}",
                    _window(cv),
                    cv.breaker,
                    cv.why,
                )
            )
        width = len(header) - 1
        widths = [max(len(row[k]) for row in rows) for k in range(width)]
        for row in rows:
            cells = [row[k].ljust(widths[k]) for k in range(width)]
            lines.append(("  ".join(cells) + "  " + row[width]).rstrip())
        if any(cv.price_source == "card" for cv in expl.candidates):
            lines.append("* price from the carrier's rate card")
    if expl.choice is not None:
        if expl.fallbacks:
            lines.append(spill_text(expl))
        lines.append(f"a long message its carrier fails: {expl.long_message_failure}")
        tail = f"choice: {expl.choice} at {expl.price}"
        if expl.fallbacks:
            tail += "; then " + ", ".join(expl.fallbacks)
        lines.append(tail)
    else:
        lines.append(f"no choice: {expl.reason}")
    return "\n".join(lines)
