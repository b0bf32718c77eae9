"""Entry point for ``python -m smsc``."""

from smsc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
