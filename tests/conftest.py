"""Fixtures shared by every test module (see loops.py)."""

from loops import run, run1

__all__ = ["run", "run1"]
