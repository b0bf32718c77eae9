"""Hypothesis profiles, loaded by ``conftest.py`` before any test module is imported.

- ``ci`` (the default, what ``make test`` runs): derandomized, so every run draws the same
  examples and a red run is red again when repeated; no example database (a failure a
  developer found last week must not change what CI draws); no per-example deadline and no
  "too slow" health check, since those measure this machine's load, not our code.
- ``fuzz`` (on demand): random draws, fifty times the examples, the example database on, so
  a failure found once is tried first next time::

      HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest tests/test_fuzz_live.py

Tests that set their own ``max_examples`` scale it with :func:`examples`, so the fuzz profile
reaches them too.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

CI = "ci"
FUZZ = "fuzz"
#: Examples a test runs under the ci profile when it names no number of its own.
_BASE_EXAMPLES = 100

settings.register_profile(
    CI,
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=_BASE_EXAMPLES,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    FUZZ,
    derandomize=False,
    deadline=None,
    max_examples=50 * _BASE_EXAMPLES,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)


def load() -> str:
    """Load the profile named by HYPOTHESIS_PROFILE (default ``ci``); return its name."""
    name = os.environ.get("HYPOTHESIS_PROFILE", CI)
    settings.load_profile(name)
    return name


def examples(n: int) -> int:
    """``n`` examples under the ci profile, as many times more as the loaded profile asks."""
    return max(1, n * settings.default.max_examples // _BASE_EXAMPLES)
