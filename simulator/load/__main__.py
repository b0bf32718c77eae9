"""``python -m simulator.load``: the ``smsc load`` command on its own."""

from __future__ import annotations

import sys

from simulator.load.cli import main

if __name__ == "__main__":
    sys.exit(main())
