"""The direction of imports (ARCHITECTURE.md), checked with ``ast`` over every package module.

Every ``import`` and ``from ... import`` counts, wherever it stands: at module level, inside a
function, under ``if TYPE_CHECKING:``. Relative imports are resolved to absolute names.
``importlib.import_module("x")`` and ``__import__("x")`` with a literal name count too.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("smppcore", "smsc", "router", "simulator", "consolestyle")

# Standard-library modules a pure smppcore module must not touch: I/O, clocks, randomness,
# threads, logging setup. Third-party ones are listed for a clearer message; the
# stdlib-only rule would catch them anyway.
PURE_FORBIDDEN = (
    "asyncio",
    "time",
    "random",
    "secrets",
    "logging.config",
    "socket",
    "ssl",
    "selectors",
    "threading",
    "prometheus_client",
    "uvloop",
    "aiosqlite",
    "yaml",
)
PURE_ALLOWED_TOP = frozenset(sys.stdlib_module_names) | {"msgspec", "smppcore"}
# aio.py is the asyncio edge; tls.py reads certificate files and builds SSLContexts, kept in
# smppcore because smsc (the TLS listener), router (TLS to carriers) and simulator (a TLS
# carrier) all need it and smppcore is their only common dependency.
# configfile.py reads YAML config files: the one reader serve, carrier and
# `python -m simulator.load` share, for the same reason.
IMPURE_SMPPCORE = frozenset({"smppcore/aio.py", "smppcore/tls.py", "smppcore/configfile.py"})
SIMULATOR_IMPORTERS = frozenset({"smsc/app.py", "smsc/cli.py", "smsc/__main__.py"})


@dataclass(frozen=True)
class Imported:
    module: str
    lineno: int


@dataclass(frozen=True)
class Violation:
    path: str
    lineno: int
    module: str
    rule: str

    def __str__(self) -> str:
        return f"{self.path}:{self.lineno}: imports {self.module!r}: {self.rule}"


@dataclass(frozen=True)
class Rule:
    id: str
    text: str
    applies: Callable[[str], bool]
    forbids: Callable[[str], bool]


def _under(module: str, *names: str) -> bool:
    return any(module == name or module.startswith(name + ".") for name in names)


def _top(module: str) -> str:
    return module.partition(".")[0]


def _is_pure_smppcore(path: str) -> bool:
    return path.startswith("smppcore/") and path not in IMPURE_SMPPCORE


RULES = (
    Rule(
        "pure-no-io",
        "a pure smppcore module does no I/O and reads no clock, randomness or logging setup "
        "(only smppcore/aio.py may)",
        _is_pure_smppcore,
        lambda m: _under(m, *PURE_FORBIDDEN),
    ),
    Rule(
        "pure-stdlib-msgspec",
        "a pure smppcore module imports only the standard library, msgspec and smppcore",
        _is_pure_smppcore,
        lambda m: _top(m) not in PURE_ALLOWED_TOP,
    ),
    Rule(
        "smppcore-bottom",
        "smppcore is the bottom layer: it never imports router, smsc or simulator",
        lambda p: p.startswith("smppcore/"),
        lambda m: _under(m, "router", "smsc", "simulator"),
    ),
    Rule(
        "no-smsc-below",
        "router and simulator never import smsc (smsc implements router.ports)",
        lambda p: p.startswith(("router/", "simulator/")),
        lambda m: _under(m, "smsc"),
    ),
    Rule(
        "router-not-simulator",
        "router does not import simulator: carriers are reached over SMPP",
        lambda p: p.startswith("router/"),
        lambda m: _under(m, "simulator"),
    ),
    Rule(
        "simulator-not-router",
        "simulator does not import router: it is a carrier, not a client of the router",
        lambda p: p.startswith("simulator/"),
        lambda m: _under(m, "router"),
    ),
    Rule(
        "consolestyle-data-only",
        "consolestyle holds the consoles' shared stylesheet and imports none of the packages",
        lambda p: p.startswith("consolestyle/"),
        lambda m: _under(m, "smppcore", "router", "smsc", "simulator"),
    ),
    Rule(
        "simulator-only-from-root",
        "only smsc/app.py, smsc/cli.py and smsc/__main__.py may import simulator",
        lambda p: p.startswith("smsc/") and p not in SIMULATOR_IMPORTERS,
        lambda m: _under(m, "simulator"),
    ),
)


def module_name(path: str) -> str:
    """``smppcore/codec.py`` -> ``smppcore.codec``; ``router/__init__.py`` -> ``router``."""
    parts = path.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(path: str, level: int, module: str | None) -> str:
    package = module_name(path).split(".")
    if not path.endswith("__init__.py"):
        package.pop()
    if level > 1:
        package = package[: len(package) - (level - 1)]
    return ".".join([*package, *([module] if module else [])])


def imports_of(path: str, source: str) -> Iterator[Imported]:
    """Every module that ``source`` (the file at repo-relative ``path``) imports."""
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Imported(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = _resolve(path, node.level, node.module)
            if node.module is None:  # from . import a, b: each name may be a module
                for alias in node.names:
                    yield Imported(f"{base}.{alias.name}" if base else alias.name, node.lineno)
            else:
                yield Imported(base, node.lineno)
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            yield Imported(node.args[0].value, node.lineno)


def check(path: str, source: str, rules: tuple[Rule, ...] = RULES) -> list[Violation]:
    """All violations of ``rules`` in ``source``, the file at repo-relative ``path``."""
    applicable = [rule for rule in rules if rule.applies(path)]
    return sorted(
        (
            Violation(path, imp.lineno, imp.module, f"[{rule.id}] {rule.text}")
            for imp in imports_of(path, source)
            for rule in applicable
            if rule.forbids(imp.module)
        ),
        key=lambda v: (v.lineno, v.rule),
    )


def package_files(root: Path = ROOT) -> list[str]:
    """Repo-relative paths of every .py file in the four packages."""
    return sorted(
        p.relative_to(root).as_posix()
        for package in PACKAGES
        for p in (root / package).rglob("*.py")
        if "__pycache__" not in p.parts
    )


FILES = package_files()
CASES = [(rule, path) for rule in RULES for path in FILES if rule.applies(path)]


@pytest.mark.parametrize(("rule", "path"), CASES, ids=[f"{rule.id}:{path}" for rule, path in CASES])
def test_imports_follow_the_arrows(rule: Rule, path: str) -> None:
    source = (ROOT / path).read_text(encoding="utf-8")
    violations = check(path, source, (rule,))
    assert not violations, "\n".join(map(str, violations))


def test_walker_finds_the_packages() -> None:
    for package in PACKAGES:
        assert f"{package}/__init__.py" in FILES, f"{package}/__init__.py not found under {ROOT}"
    assert "smsc/cli.py" in FILES
    assert any(_is_pure_smppcore(p) for p in FILES if not p.endswith("__init__.py"))
    cli = (ROOT / "smsc/cli.py").read_text(encoding="utf-8")
    assert {i.module for i in imports_of("smsc/cli.py", cli)} >= {"argparse", "smsc"}
    assert all(any(rule.applies(p) for p in FILES) for rule in RULES)


BAD = [
    ("smppcore/codec.py", "def f():\n    import asyncio\n", 2, "asyncio", "pure-no-io"),
    (
        "smppcore/session.py",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from time import monotonic\n",
        3,
        "time",
        "pure-no-io",
    ),
    ("smppcore/x.py", "import logging.config\n", 1, "logging.config", "pure-no-io"),
    ("smppcore/x.py", "import attrs\n", 1, "attrs", "pure-stdlib-msgspec"),
    (
        "smppcore/x.py",
        "import importlib\nimportlib.import_module('random')\n",
        2,
        "random",
        "pure-no-io",
    ),
    ("smppcore/aio.py", "from router.ports import Intake\n", 1, "router.ports", "smppcore-bottom"),
    ("smppcore/pdu/x.py", "from ...smsc import app\n", 1, "smsc", "smppcore-bottom"),
    ("router/queue.py", "from smsc.server import Server\n", 1, "smsc.server", "no-smsc-below"),
    ("simulator/load/run.py", "from ... import smsc\n", 1, "smsc", "no-smsc-below"),
    (
        "router/carriers.py",
        "import simulator.carrier\n",
        1,
        "simulator.carrier",
        "router-not-simulator",
    ),
    ("simulator/carrier.py", "from router import ports\n", 1, "router", "simulator-not-router"),
    ("smsc/server.py", "\n\nimport simulator\n", 3, "simulator", "simulator-only-from-root"),
]


@pytest.mark.parametrize(
    ("path", "source", "lineno", "module", "rule_id"),
    BAD,
    ids=[f"{b[4]}:{b[0]}:{b[3]}" for b in BAD],
)
def test_checker_catches(path: str, source: str, lineno: int, module: str, rule_id: str) -> None:
    violations = check(path, source)
    assert violations, f"no violation found in {path}"
    found = [(v.lineno, v.module) for v in violations if v.rule.startswith(f"[{rule_id}]")]
    assert found == [(lineno, module)], "\n".join(map(str, violations))
    assert str(violations[0]).startswith(f"{path}:{lineno}: imports {module!r}: [")


GOOD = [
    (
        "smppcore/codec.py",
        "from __future__ import annotations\nimport struct\nimport msgspec\n"
        "from smppcore.constants import CommandId\nfrom .errors import RemoteProtocolError\n"
        "import logging\n",
    ),
    ("smppcore/aio.py", "import asyncio\nimport time\nfrom smppcore.session import Session\n"),
    ("router/dispatch.py", "import asyncio\nimport aiosqlite\nfrom smppcore import pdus\n"),
    ("simulator/carrier.py", "import random\nfrom smppcore.aio import SmppProtocol\n"),
    ("smsc/app.py", "from router.ports import Intake\nfrom simulator.carrier import Carrier\n"),
    ("smsc/cli.py", "def serve():\n    from simulator import carrier\n"),
    ("smsc/server.py", "from router.ports import Intake\nfrom smppcore.aio import Protocol\n"),
]


@pytest.mark.parametrize(("path", "source"), GOOD, ids=[g[0] for g in GOOD])
def test_checker_allows(path: str, source: str) -> None:
    assert check(path, source) == []


def test_relative_imports_resolve() -> None:
    src = "from . import codec\nfrom .errors import E\nfrom .. import router\n"
    assert [i.module for i in imports_of("smppcore/pdu/__init__.py", src)] == [
        "smppcore.pdu.codec",
        "smppcore.pdu.errors",
        "smppcore.router",
    ]
    assert [i.module for i in imports_of("smppcore/codec.py", "from .errors import E\n")] == [
        "smppcore.errors"
    ]
