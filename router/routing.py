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
that are in ``message.tried``, or that are not ``available`` (no bind up, breaker open, or no
health known). Rank the rest: healthy before unhealthy, then the lowest price, then the best
health score, then the order listed in the route. The first is the choice, the others are the
fallbacks in that order. Unhealthy carriers are used only when no healthy one is left:
better a poor route than none.

**Pinned** (concatenated messages). Once a part of a long message went over a carrier, every
other part must go the same way, or the handset may never reassemble it. With ``pinned`` set,
the choice is that carrier if it is still eligible by the rules above (healthy or not) and
there are no fallbacks; otherwise NoRoute("pinned carrier X unavailable"), and the part
fails rather than split the message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal

import msgspec

from router.config import CarrierPrice, Route
from router.health import HealthView
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
    and its carriers with prices."""

    prefix: str
    account_route: bool
    carriers: tuple[CarrierPrice, ...]


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
                if owner is None:
                    entry.everyone = RouteMatch(route.prefix, False, route.carriers)
                else:
                    entry.accounts[owner] = RouteMatch(route.prefix, True, route.carriers)
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


def _exclusions(
    cp: CarrierPrice,
    price: Decimal,
    policy: AccountPolicy,
    view: HealthView | None,
    tried: tuple[str, ...],
) -> list[str]:
    """Why ``cp`` may not take the message ([] if it may)."""
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


def _rank_key(index: int, price: Decimal, view: HealthView) -> tuple[bool, Decimal, float, int]:
    return (not view.healthy, price, -view.score, index)


def _decide(
    match: RouteMatch,
    policy: AccountPolicy,
    health: Mapping[str, HealthView],
    tried: tuple[str, ...],
    pinned: str | None,
) -> RouteDecision | NoRoute:
    ranked: list[tuple[tuple[bool, Decimal, float, int], str, Decimal]] = []
    for i, cp in enumerate(match.carriers):
        price = cp.amount
        view = health.get(cp.carrier)
        if view is None or _exclusions(cp, price, policy, view, tried):
            continue
        ranked.append((_rank_key(i, price, view), cp.carrier, price))
    if pinned is not None:
        for _, carrier, price in ranked:
            if carrier == pinned:
                return RouteDecision(carrier, price, ())
        return NoRoute(f"pinned carrier {pinned} unavailable")
    if not ranked:
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
) -> RouteDecision | NoRoute:
    """The carrier for ``message`` and its fallbacks (module docstring: Choice, Pinned).

    ``health`` holds each carrier's view already taken at ``now``; a carrier missing from it
    is unavailable. ``now`` is accepted for time-dependent policy and is not otherwise read.
    """
    del now
    match = table.lookup(message.destination.addr, message.account)
    if match is None:
        return NoRoute(_no_match(message.destination.addr))
    return _decide(match, policy, health, message.tried, pinned)


_MemoKey = tuple[int, str, tuple[str, ...], str | None]
_WaitKey = tuple[int, str, str | None]


class Chooser:
    """:func:`choose` for many messages against one fixed route table, one fixed set of
    health views and fixed account policies (one dispatch pass): the decision for a route,
    an account, the carriers tried and the pinned carrier is taken once and reused — it
    depends on nothing else. Bounded by the messages of the pass (make a new one per pass).
    """

    __slots__ = ("_health", "_memo", "_policies", "_table", "_up", "_waits")

    def __init__(
        self,
        table: RouteTable,
        health: Mapping[str, HealthView],
        policies: Mapping[str, AccountPolicy],
    ) -> None:
        self._table = table
        self._health = health
        self._policies = policies
        # keyed by id(match): the table (and so every match) outlives this object
        self._memo: dict[_MemoKey, RouteDecision | NoRoute] = {}
        self._waits: dict[_WaitKey, frozenset[str] | None] = {}
        self._up: dict[str, HealthView] | None = None

    def choose(
        self, message: Message, pinned: str | None, tried: tuple[str, ...] | None = None
    ) -> RouteDecision | NoRoute:
        """What ``choose(message, table=, policy=policies.get(account, AccountPolicy()),
        health=, pinned=)`` returns; with ``tried``, as if the message had tried those."""
        account = message.account
        match = self._table.lookup(message.destination.addr, account)
        if match is None:
            return NoRoute(_no_match(message.destination.addr))
        if tried is None:
            tried = message.tried
        key = (id(match), account, tried, pinned)
        decision = self._memo.get(key)
        if decision is None:
            policy = self._policies.get(account, _NO_POLICY)
            decision = self._memo[key] = _decide(match, policy, self._health, tried, pinned)
        return decision

    def waits_for(self, message: Message, pinned: str | None) -> frozenset[str] | None:
        """The carriers that could take ``message`` if they were up (bound, breaker closed,
        not paused), whatever it tried: what it waits for when none of them can take it
        now. None when none ever could (no route, or the account's limits exclude every
        carrier of its route, or its pinned carrier): it will never go."""
        account = message.account
        match = self._table.lookup(message.destination.addr, account)
        if match is None:
            return None
        key = (id(match), account, pinned)
        try:
            return self._waits[key]
        except KeyError:
            pass
        up = self._up
        if up is None:
            up = self._up = {name: HealthView(carrier=name) for name in self._health}
        policy = self._policies.get(account, _NO_POLICY)
        decision = _decide(match, policy, up, (), pinned)
        carriers = (
            frozenset((decision.carrier, *decision.fallbacks))
            if isinstance(decision, RouteDecision)
            else None
        )
        self._waits[key] = carriers
        return carriers


_NO_POLICY = AccountPolicy()


# -- explaining --------------------------------------------------------------------------------


class CandidateView(msgspec.Struct, frozen=True, gc=False):
    """One carrier of the matched route, as routing judged it."""

    carrier: str
    price: Decimal
    available: bool
    healthy: bool
    eligible: bool
    """May take the message (no exclusion reason)."""
    reasons: tuple[str, ...]
    """Why it is excluded; for an eligible but unhealthy carrier, why it is demoted."""
    score: float
    rate: float | None = None
    """Submits per second the router may send it now (its adaptive rate, router/aimd.py);
    None: no limit (none configured, no throttle met)."""


class Explanation(msgspec.Struct, frozen=True, gc=False, kw_only=True):
    """Why a destination routes the way it does for an account, at ``at``."""

    destination: str
    account: str
    at: float
    prefix: str | None
    """The matched route's prefix; None when no route matches."""
    account_route: bool = False
    candidates: tuple[CandidateView, ...] = ()
    """Eligible carriers first in the order they would be used, then the excluded ones."""
    choice: str | None = None
    price: Decimal | None = None
    fallbacks: tuple[str, ...] = ()
    reason: str | None = None
    """Why there is no choice (the NoRoute reason)."""


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
) -> Explanation:
    """What :func:`choose` decides for ``destination`` and ``account``, with every candidate
    and the reasons it was taken, demoted or excluded (and its send rate, from ``rates``)."""
    match = table.lookup(destination, account)
    if match is None:
        return Explanation(
            destination=destination,
            account=account,
            at=now,
            prefix=None,
            reason=_no_match(destination),
        )
    eligible: list[tuple[tuple[bool, Decimal, float, int], CandidateView]] = []
    excluded: list[CandidateView] = []
    for i, cp in enumerate(match.carriers):
        price = cp.amount
        view = health.get(cp.carrier)
        out = _exclusions(cp, price, policy, view, tried)
        rate = rates.get(cp.carrier) if rates else None
        if view is None:
            excluded.append(
                CandidateView(cp.carrier, price, False, False, False, tuple(out), 0.0, rate)
            )
            continue
        if out:
            cv = CandidateView(
                cp.carrier, price, view.available, view.healthy, False, tuple(out), view.score, rate
            )
            excluded.append(cv)
            continue
        demoted = () if view.healthy else tuple("unhealthy: " + r for r in view.reasons)
        cv = CandidateView(cp.carrier, price, True, view.healthy, True, demoted, view.score, rate)
        eligible.append((_rank_key(i, price, view), cv))
    eligible.sort(key=lambda kv: kv[0])
    decision = _decide(match, policy, health, tried, pinned)
    chosen = decision if isinstance(decision, RouteDecision) else None
    return Explanation(
        destination=destination,
        account=account,
        at=now,
        prefix=match.prefix,
        account_route=match.account_route,
        candidates=tuple(cv for _, cv in eligible) + tuple(excluded),
        choice=None if chosen is None else chosen.carrier,
        price=None if chosen is None else chosen.price,
        fallbacks=() if chosen is None else chosen.fallbacks,
        reason=decision.reason if isinstance(decision, NoRoute) else None,
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_explanation(expl: Explanation) -> str:
    """A readable table of ``expl`` for the CLI and the admin HTTP endpoint."""
    lines: list[str] = []
    head = f"destination {expl.destination} for account {expl.account}: "
    if expl.prefix is None:
        lines.append(head + "no route")
    else:
        kind = "the account's own route" if expl.account_route else "global route"
        lines.append(head + f"prefix {expl.prefix!r} ({kind})")
    if expl.candidates:
        rows = [("", "carrier", "price", "available", "healthy", "score", "rate/s", "notes")]
        for cv in expl.candidates:
            if cv.carrier == expl.choice:
                mark = "->"
            elif cv.carrier in expl.fallbacks:
                mark = str(expl.fallbacks.index(cv.carrier) + 1)
            else:
                mark = "x" if not cv.eligible else ""
            rows.append(
                (
                    mark,
                    cv.carrier,
                    str(cv.price),
                    _yes(cv.available),
                    _yes(cv.healthy),
                    f"{cv.score:.3f}",
                    "-" if cv.rate is None else f"{cv.rate:.0f}",
                    "; ".join(cv.reasons),
                )
            )
        widths = [max(len(row[k]) for row in rows) for k in range(7)]
        for row in rows:
            cells = [row[k].ljust(widths[k]) for k in range(7)]
            lines.append(("  ".join(cells) + "  " + row[7]).rstrip())
    if expl.choice is not None:
        tail = f"choice: {expl.choice} at {expl.price}"
        if expl.fallbacks:
            tail += "; then " + ", ".join(expl.fallbacks)
        lines.append(tail)
    else:
        lines.append(f"no choice: {expl.reason}")
    return "\n".join(lines)
