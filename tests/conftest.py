"""Fixtures shared by every test module (see loops.py), and the Hypothesis profile
(see profiles.py) loaded before any test module is imported."""

import profiles
from loops import run, run1

profiles.load()

__all__ = ["run", "run1"]
