"""The event loops the tests run on, and the fixtures that run a coroutine on them.

Each test is a plain function that runs its coroutine to completion in an
``asyncio.Runner`` from ``run`` (parametrized over both loops: asyncio's selector loop and
uvloop) or ``run1`` (uvloop alone, for scenarios whose loop-independence is shown
elsewhere). ``conftest.py`` makes both fixtures available to every test module.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

#: The event loops, by test id.
LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "uvloop": uvloop.new_event_loop,
}

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=list(LOOP_FACTORIES))
def run(request: pytest.FixtureRequest) -> Iterator[Run]:
    """Runs a coroutine to completion on a fresh loop of the parametrized kind."""
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[request.param]) as runner:
        yield runner.run


@pytest.fixture
def run1() -> Iterator[Run]:
    """Runs a coroutine to completion on a fresh uvloop loop."""
    with asyncio.Runner(loop_factory=LOOP_FACTORIES["uvloop"]) as runner:
        yield runner.run
