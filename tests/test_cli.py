"""The command-line entry, run as a user would: ``python -m smsc``."""

from __future__ import annotations

from processes import smsc_run

from smsc import __version__


def test_version() -> None:
    result = smsc_run("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"smsc {__version__}"


def test_help_lists_subcommands() -> None:
    result = smsc_run("--help")
    assert result.returncode == 0, result.stderr
    for command in ("serve", "carrier", "load"):
        assert command in result.stdout


def test_no_command_prints_usage_and_exits_2() -> None:
    result = smsc_run()
    assert result.returncode == 2
    assert "usage: smsc" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = smsc_run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
