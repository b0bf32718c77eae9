"""The stylesheet both browser consoles serve as ``/console/static/style.css``: the smsc
console (smsc/console/web.py) and the simulator's page (simulator/console/).

A package of its own, holding data only, because the two consoles sit in layers that may
not import each other's modules (smsc's console is not a composition root, and the
simulator never imports smsc); each imports this path instead of keeping a copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

STYLESHEET: Final = Path(__file__).resolve().parent / "style.css"
