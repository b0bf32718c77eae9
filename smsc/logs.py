"""Log handler set-up for the entry point (``smsc/cli.py``), the only place that calls it.

Two formats on one handler (stderr):

- ``json``: one JSON object per line — ``ts`` (UTC, ISO 8601, ms), ``level``, ``logger``,
  ``msg``, then every ``extra={...}`` field of the record (the per-message summary line of
  ``router.messages`` carries ``message_id``, ``account``, ``carrier``, ``state``, ...),
  and ``exc`` with the traceback when there is one;
- ``text``: ``time LEVEL logger: message key=value ...`` for a person at a terminal.

``auto`` picks text when the stream is a terminal and JSON otherwise (a service manager,
a container, a pipe). Per-component levels set the level of named loggers
(``{"router.upstream": "debug", "router.messages": "warning"}``): a component can be made
chattier than the root level, or silenced. Libraries that log message data at DEBUG
(:data:`QUIET`: aiosqlite logs every statement with its parameters) stay at WARNING
unless a component level names them.

Everything logged goes through :func:`logging.getLogger(__name__)` loggers; no module logs
a password or a message body (tests/test_logs.py checks both end to end).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, Literal, TextIO

import msgspec

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
LogFormat = Literal["auto", "json", "text"]

LEVELS: Final[dict[str, int]] = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

#: Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "taskName",
}

#: Libraries whose DEBUG records carry message data: aiosqlite logs every statement with
#: its parameters (message bodies). They stay at WARNING unless ``components`` names them.
QUIET: Final[dict[str, int]] = {"aiosqlite": logging.WARNING}

_encode = msgspec.json.Encoder(enc_hook=str).encode


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k[0] != "_"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module's docstring for the fields)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return _encode(out).decode()


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message key=value ...`` (the extras, in the order given)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = _extras(record)
        if not extras:
            return text
        head, sep, tail = text.partition("\n")  # keep a traceback below the first line
        pairs = " ".join(f"{k}={v}" for k, v in extras.items() if v is not None)
        return f"{head} {pairs}{sep}{tail}"


def wants_json(log_format: LogFormat, stream: TextIO) -> bool:
    if log_format != "auto":
        return log_format == "json"
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return True


def configure(
    level: LogLevel = "info",
    *,
    log_format: LogFormat = "auto",
    components: Mapping[str, LogLevel] | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send every log record at ``level`` or above (or at a component's own level) to
    ``stream`` (default stderr) in ``log_format``; replaces the root logger's handlers.
    Returns the handler."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if wants_json(log_format, stream) else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    for name, quiet in QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, LEVELS[level]))
    for name, component_level in (components or {}).items():
        logging.getLogger(name).setLevel(LEVELS[component_level])
    return handler
