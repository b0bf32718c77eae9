"""Rate cards at scale: load time of a 100,000-prefix card and price lookup time.

Run from the repository root:  .venv/bin/python bench/rates.py [--rows 100000]

A card of ``--rows`` E.164 prefixes (7 to 10 digits, every tenth one with a second,
future-dated price) is written to a temporary file, then:

- load: ``router.rates.read_card`` (parse, check every row, build the tables) against the
  floor of reading the same file with ``csv.reader`` into a plain dict of prefix → Decimal
  (no checks, no dates): ``load_ratio`` = card / floor;
- lookup: ``RateCard.price(number, now)`` for numbers under random prefixes of the card
  (a longest-prefix match over the card's prefix lengths, with effective dates) against
  the ceiling of one ``dict.get`` of a known-length prefix: ``lookup_ratio`` = card / dict.

Best of ``--repeat`` runs each. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.rates import read_card  # noqa: E402


def write_card(path: Path, rows: int, rng: random.Random) -> list[str]:
    prefixes: set[str] = set()
    while len(prefixes) < rows:
        length = rng.randint(7, 10)
        prefixes.add(str(rng.randint(10 ** (length - 1), 10**length - 1)))
    ordered = sorted(prefixes)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(("prefix", "price", "valid_from"))
        for k, p in enumerate(ordered):
            w.writerow((p, f"0.{rng.randint(1000, 99999):05d}", "2026-01-01"))
            if k % 10 == 0:
                w.writerow((p, f"0.{rng.randint(1000, 99999):05d}", "2030-01-01T00:00:00Z"))
    return ordered


def floor_load(path: Path) -> dict[str, Decimal]:
    with path.open(newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return {row[0]: Decimal(row[1]) for row in reader}


def best(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(15)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "card.csv"
        prefixes = write_card(path, args.rows, rng)
        card_s = best(lambda: read_card(str(path)), args.repeat)
        floor_s = best(lambda: floor_load(path), args.repeat)
        card = read_card(str(path))
        plain = floor_load(path)
    chosen = rng.choices(prefixes, k=args.lookups)
    numbers = [p + str(rng.randint(0, 10**5)).zfill(12 - len(p))[: 12 - len(p)] for p in chosen]
    keyed = [(n, len(p)) for n, p in zip(numbers, chosen, strict=True)]
    now = time.time()
    price = card.price
    get = plain.get

    def card_lookups() -> None:
        for n in numbers:
            price(n, now)

    def dict_lookups() -> None:
        for n, k in keyed:
            get(n[:k])

    assert all(price(n, now) is not None for n in numbers[:1000])
    card_l = best(card_lookups, args.repeat) / len(numbers)
    dict_l = best(dict_lookups, args.repeat) / len(numbers)
    result = {
        "rows": card.rows,
        "prefixes": card.prefixes,
        "load_s": round(card_s, 3),
        "floor_load_s": round(floor_s, 3),
        "load_ratio": round(card_s / floor_s, 2),
        "lookup_us": round(card_l * 1e6, 3),
        "dict_lookup_us": round(dict_l * 1e6, 3),
        "lookup_ratio": round(card_l / dict_l, 2),
    }
    print(
        f"{card.rows} rows ({card.prefixes} prefixes): load {card_s:.3f} s "
        f"(csv+dict floor {floor_s:.3f} s, x{card_s / floor_s:.2f}); "
        f"lookup {card_l * 1e6:.2f} us (one dict.get {dict_l * 1e6:.2f} us, "
        f"x{card_l / dict_l:.1f})"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
