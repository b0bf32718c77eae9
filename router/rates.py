"""Rate cards as carriers send them: prices per destination with effective dates.

A card is a CSV file with a header row naming its columns (any order, case-insensitive):

- ``prefix`` — E.164 digits the price applies to (longest matching prefix wins), or
- ``mccmnc`` — a network (5 or 6 digits), for numbers the number-to-network map puts there;
  each row fills exactly one of the two (a card may have one column or both);
- ``price`` — per message part, a decimal in the card's currency;
- ``valid_from`` (optional column) — when the price takes effect: an ISO-8601 date or date
  and time (UTC unless it says otherwise) or Unix seconds; empty: always.

For a destination and an instant the card's price is the newest price in effect (the
greatest ``valid_from`` not after the instant) of, first, the number's network (when a
network map places it and the card prices that network), else the longest prefix that has
a price in effect. A price dated in the future is in the card already: it takes effect at
its time, without a reload. Prices are converted to the routing currency once, at load.

A card is read whole or not at all: every bad row is reported with its line number
(:class:`RateCardError`, the first 20 of them) and nothing of the card is used.

The number-to-network map is a CSV of ``prefix,mccmnc`` rows (number ranges; the longest
prefix wins) with an optional ported-numbers CSV of ``number,mccmnc`` rows that beats it.

Pure apart from reading files: lookups take ``now``.
"""

from __future__ import annotations

import bisect
import csv
import io
import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from router.config import RatesConfig
from smppcore.config import ConfigError

__all__ = [
    "NetworkMap",
    "PriceBook",
    "RateCard",
    "RateCardError",
    "load_networks",
    "load_prices",
    "parse_card",
]

MAX_REPORTED = 20
_ALWAYS = -math.inf


class RateCardError(ValueError):
    """A card (or network map) that cannot be used: ``errors`` are (line, reason)."""

    def __init__(self, source: str, errors: list[tuple[int, str]], more: int = 0) -> None:
        self.source = source
        self.errors = errors
        self.more = more
        lines = [f"{source}:{line}: {reason}" for line, reason in errors]
        if more:
            lines.append(f"{source}: ... and {more} more bad rows")
        super().__init__("\n".join(lines))


class _Errors:
    __slots__ = ("found", "more", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[tuple[int, str]] = []
        self.more = 0

    def add(self, line: int, reason: str) -> None:
        if len(self.found) < MAX_REPORTED:
            self.found.append((line, reason))
        else:
            self.more += 1

    def check(self) -> None:
        if self.found:
            raise RateCardError(self.source, self.found, self.more)


def _instant(text: str, cache: dict[str, float]) -> float:
    """``valid_from`` as Unix seconds (ValueError when it is neither a date nor a number)."""
    try:
        return cache[text]
    except KeyError:
        pass
    if not text:
        value = _ALWAYS
    else:
        try:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError(f"valid_from {text!r} is not a time")
        except ValueError:
            try:
                when = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError(
                    f"valid_from {text!r} is not an ISO-8601 date/time or Unix seconds"
                ) from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            value = when.timestamp()
    cache[text] = value
    return value


class _Series:
    """One key's prices, oldest ``valid_from`` first."""

    __slots__ = ("prices", "times")

    def __init__(self) -> None:
        self.times: list[float] = []
        self.prices: list[Decimal] = []

    def at(self, now: float) -> Decimal | None:
        times = self.times
        if len(times) == 1:  # the usual case: one price, in effect or not yet
            return self.prices[0] if times[0] <= now else None
        i = bisect.bisect_right(times, now)
        return self.prices[i - 1] if i else None


class RateCard:
    """One carrier's prices (already in the routing currency)."""

    __slots__ = ("_lengths", "_networks", "_prefixes", "rows")

    def __init__(
        self,
        prefixes: dict[str, _Series],
        networks: dict[str, _Series],
        rows: int,
    ) -> None:
        self._prefixes = prefixes
        self._networks = networks
        self._lengths = tuple(sorted({len(p) for p in prefixes}, reverse=True))
        self.rows = rows

    def valid_range(self) -> tuple[float, float]:
        """The earliest and the latest ``valid_from`` of the card (-inf: always)."""
        times = [t for table in (self._prefixes, self._networks) for s in table.values()
                 for t in (s.times[0], s.times[-1])]  # fmt: skip
        return (min(times), max(times)) if times else (-math.inf, -math.inf)

    @property
    def prefixes(self) -> int:
        return len(self._prefixes)

    @property
    def priced_networks(self) -> int:
        return len(self._networks)

    def price(self, digits: str, now: float, network: str | None = None) -> Decimal | None:
        """The price in effect at ``now`` for the number ``digits`` (E.164, no ``+``) on
        ``network`` (its MCC/MNC, if known); None when the card has none."""
        if network is not None and self._networks:
            series = self._networks.get(network)
            if series is not None:
                found = series.at(now)
                if found is not None:
                    return found
        prefixes = self._prefixes
        n = len(digits)
        for length in self._lengths:
            if length > n:
                continue
            series = prefixes.get(digits[:length])
            if series is not None:
                found = series.at(now)
                if found is not None:
                    return found
        return None


def _header(row: list[str], errors: _Errors) -> dict[str, int]:
    names = [c.strip().lower() for c in row]
    where = {name: i for i, name in enumerate(names)}
    unknown = [n for n in names if n not in ("prefix", "mccmnc", "price", "valid_from")]
    if unknown:
        errors.add(1, f"unknown column {unknown[0]!r} (prefix, mccmnc, price, valid_from)")
    if "price" not in where:
        errors.add(1, "no price column")
    if "prefix" not in where and "mccmnc" not in where:
        errors.add(1, "neither a prefix nor an mccmnc column")
    return where


def parse_card(
    rows: Iterable[str], *, source: str = "rate card", factor: Decimal = Decimal(1)
) -> RateCard:
    """A card from its CSV lines (``factor``: units of the routing currency per unit of the
    card's); RateCardError naming each bad row's line when any row is bad."""
    errors = _Errors(source)
    reader = csv.reader(rows)
    try:
        head = next(reader)
    except StopIteration:
        raise RateCardError(source, [(1, "empty file: no header row")]) from None
    cols = _header(head, errors)
    errors.check()
    i_prefix = cols.get("prefix")
    i_net = cols.get("mccmnc")
    i_price = cols["price"]
    i_from = cols.get("valid_from")
    width = len(head)
    times: dict[str, float] = {}
    prefixes: dict[str, _Series] = {}
    networks: dict[str, _Series] = {}
    seen: dict[tuple[bool, str, float], int] = {}
    count = 0
    one = factor == 1
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != width:
            errors.add(line, f"{len(row)} fields, the header has {width}")
            continue
        prefix = row[i_prefix].strip() if i_prefix is not None else ""
        net = row[i_net].strip() if i_net is not None else ""
        if bool(prefix) == bool(net):
            errors.add(line, "fill exactly one of prefix and mccmnc")
            continue
        if prefix and not (len(prefix) <= 15 and prefix.isascii() and prefix.isdigit()):
            errors.add(line, f"prefix {prefix!r} is not 1-15 digits")
            continue
        if net and not (len(net) in (5, 6) and net.isascii() and net.isdigit()):
            errors.add(line, f"mccmnc {net!r} is not 5 or 6 digits")
            continue
        text = row[i_price].strip()
        try:
            price = Decimal(text)
        except InvalidOperation:
            errors.add(line, f"price {text!r} is not a decimal")
            continue
        if not price.is_finite() or price < 0:
            errors.add(line, f"price {text!r} is not a decimal of 0 or more")
            continue
        try:
            since = _instant(row[i_from].strip() if i_from is not None else "", times)
        except ValueError as exc:
            errors.add(line, str(exc))
            continue
        key = (bool(net), net or prefix, since)
        first = seen.get(key)
        if first is not None:
            errors.add(line, f"{'mccmnc' if net else 'prefix'} {key[1]} at this valid_from "
                       f"is already priced on line {first}")  # fmt: skip
            continue
        seen[key] = line
        if errors.found:
            continue  # already refused: only look for more bad rows
        series = (networks if net else prefixes).get(key[1])
        if series is None:
            series = (networks if net else prefixes)[key[1]] = _Series()
        if series.times and since < series.times[-1]:
            i = bisect.bisect_right(series.times, since)
            series.times.insert(i, since)
            series.prices.insert(i, price if one else price * factor)
        else:
            series.times.append(since)
            series.prices.append(price if one else price * factor)
        count += 1
    errors.check()
    return RateCard(prefixes, networks, count)


def read_card(path: str, *, factor: Decimal = Decimal(1)) -> RateCard:
    """:func:`parse_card` of a file (OSError when it cannot be read)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return parse_card(f, source=path, factor=factor)


class NetworkMap:
    """Which network (MCC/MNC) a number belongs to: ported numbers first, then the longest
    matching number range."""

    __slots__ = ("_lengths", "_ported", "_ranges")

    def __init__(self, ranges: Mapping[str, str], ported: Mapping[str, str] | None = None):
        self._ranges = dict(ranges)
        self._ported = dict(ported or {})
        self._lengths = tuple(sorted({len(p) for p in self._ranges}, reverse=True))

    def network(self, digits: str) -> str | None:
        found = self._ported.get(digits)
        if found is not None:
            return found
        ranges = self._ranges
        n = len(digits)
        for length in self._lengths:
            if length <= n:
                found = ranges.get(digits[:length])
                if found is not None:
                    return found
        return None


def _pairs(rows: Iterable[str], source: str, first: str) -> dict[str, str]:
    """``first,mccmnc`` rows (a header row is optional) → dict; RateCardError on bad rows."""
    errors = _Errors(source)
    out: dict[str, str] = {}
    reader = csv.reader(rows)
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        if line == 1 and [c.strip().lower() for c in row] == [first, "mccmnc"]:
            continue
        if len(row) != 2:
            errors.add(line, f"want 2 fields ({first},mccmnc), found {len(row)}")
            continue
        key, net = row[0].strip(), row[1].strip()
        if not (key.isascii() and key.isdigit() and len(key) <= 15):
            errors.add(line, f"{first} {key!r} is not 1-15 digits")
        elif not (net.isascii() and net.isdigit() and len(net) in (5, 6)):
            errors.add(line, f"mccmnc {net!r} is not 5 or 6 digits")
        elif key in out:
            errors.add(line, f"{first} {key} appears twice")
        else:
            out[key] = net
    errors.check()
    return out


def load_networks(ranges: str, ported: str | None = None) -> NetworkMap:
    """The network map from its files (RateCardError, OSError)."""
    with open(ranges, encoding="utf-8-sig", newline="") as f:
        table = _pairs(f, ranges, "prefix")
    moved: dict[str, str] = {}
    if ported is not None:
        with open(ported, encoding="utf-8-sig", newline="") as f:
            moved = _pairs(f, ported, "number")
    return NetworkMap(table, moved)


class PriceBook:
    """Every carrier's rate card and the network map: what routing asks a price of."""

    __slots__ = ("cards", "networks")

    def __init__(self, cards: Mapping[str, RateCard], networks: NetworkMap | None = None):
        self.cards = dict(cards)
        self.networks = networks

    def network(self, digits: str) -> str | None:
        return None if self.networks is None else self.networks.network(digits)

    def prices(
        self, carriers: Iterable[str], digits: str, now: float
    ) -> tuple[Decimal | None, ...]:
        """Each carrier's card price for ``digits`` at ``now`` (None: no card price)."""
        cards = self.cards
        net = self.network(digits) if self.networks is not None else None
        out: list[Decimal | None] = []
        for carrier in carriers:
            card = cards.get(carrier)
            out.append(None if card is None else card.price(digits, now, net))
        return tuple(out)


def load_prices(config: RatesConfig, *, where: str = "$.router.rates") -> PriceBook | None:
    """The price book ``config`` describes (None when it names no card and no map); a file
    that cannot be read or has bad rows is a ConfigError naming the key, the file and
    every bad row's line."""
    if not config.cards and config.networks is None:
        return None
    cards: dict[str, RateCard] = {}
    for i, ref in enumerate(config.cards):
        currency = ref.currency or config.currency
        factor = Decimal(1) if currency == config.currency else Decimal(config.conversion[currency])
        try:
            card = read_card(ref.file, factor=factor)
        except OSError as exc:
            raise ConfigError(f"{where}.cards[{i}].file", f"{ref.file}: {exc.strerror}") from None
        except RateCardError as exc:
            raise ConfigError(f"{where}.cards[{i}].file", str(exc)) from None
        if ref.carrier in cards:
            raise ConfigError(f"{where}.cards[{i}].carrier", f"{ref.carrier!r} has a card already")
        cards[ref.carrier] = card
    networks = None
    if config.networks is not None:
        try:
            networks = load_networks(config.networks, config.ported)
        except OSError as exc:
            name = exc.filename or config.networks
            raise ConfigError(f"{where}.networks", f"{name}: {exc.strerror}") from None
        except RateCardError as exc:
            raise ConfigError(f"{where}.networks", str(exc)) from None
    return PriceBook(cards, networks)


def card_text(rows: Iterable[tuple[str, str, str]]) -> str:
    """A ``prefix,price,valid_from`` card as CSV text (for tools and tests)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("prefix", "price", "valid_from"))
    w.writerows(rows)
    return buf.getvalue()
