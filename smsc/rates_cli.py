"""``smsc rates import --carrier NAME FILE.csv``: check a carrier's rate card and install it.

The card is read whole (router/rates.py): a bad row is reported with its line number and
nothing is imported (exit 2). Without ``--config`` the card is only checked. With it, the
configuration must name a card for the carrier (``router.rates.cards[]: {carrier, file}``):
the checked card replaces that file atomically, and a reload of the running server (SIGHUP,
or POST /api/v1/reload) applies it; until then the server keeps the card it loaded.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

DESCRIPTION = "check a carrier's rate card (CSV) and install it where the config names it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="rates_command", metavar="ACTION", required=True)
    imp = actions.add_parser("import", help=DESCRIPTION, description=__doc__)
    imp.add_argument("--carrier", required=True, help="the carrier whose card this is")
    imp.add_argument("--config", metavar="FILE", help="smsc YAML config naming the card's path")
    imp.add_argument("file", metavar="FILE.csv", help="columns prefix|mccmnc, price, valid_from")


def _when(t: float) -> str:
    if t == -math.inf:
        return "always"
    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def run(args: argparse.Namespace) -> int:
    from router.rates import RateCardError, read_card

    name = "smsc rates import"
    target: Path | None = None
    if args.config is not None:
        from smppcore.config import ConfigError
        from smppcore.configfile import load_yaml_config
        from smsc.config import SmscConfig

        try:
            config = load_yaml_config(args.config, SmscConfig)
        except (ConfigError, OSError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 2
        cards = [c for c in config.router.rates.cards if c.carrier == args.carrier]
        if not cards:
            print(
                f"{name}: {args.config} names no rate card for carrier {args.carrier!r} "
                f"(router.rates.cards: [{{carrier: {args.carrier}, file: PATH}}])",
                file=sys.stderr,
            )
            return 2
        target = Path(cards[0].file)
    try:
        card = read_card(args.file)
    except OSError as exc:
        print(f"{name}: {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    except RateCardError as exc:
        print(str(exc), file=sys.stderr)
        print(f"{name}: {args.file} refused, nothing imported", file=sys.stderr)
        return 2
    first, last = card.valid_range()
    print(
        f"{args.file}: {card.rows} prices for carrier {args.carrier} "
        f"({card.prefixes} prefixes, {card.priced_networks} networks), "
        f"valid from {_when(first)} to {_when(last)}"
    )
    if target is None:
        print("checked only (give --config to install it)")
        return 0
    if target.resolve() != Path(args.file).resolve():
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        try:
            with os.fdopen(fd, "wb") as out, open(args.file, "rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            print(f"{name}: {target}: {exc.strerror}", file=sys.stderr)
            return 1
    print(f"installed as {target}; reload the server (SIGHUP or POST /api/v1/reload) to apply")
    return 0
