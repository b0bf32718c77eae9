"""Strict decoding of configuration data into typed structs, with errors that name the path.

The entry point reads YAML (or anything) into plain data; :func:`load_config` turns it
into a frozen struct or raises :class:`ConfigError` saying where (``$.accounts[0].port``)
and why. Pure: no file or environment access here.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_PATH = re.compile(r" - at `(\$[^`]*)`$")


class ConfigError(Exception):
    """Invalid configuration: ``path`` is where (``$.a.b[0]``), ``reason`` is why."""

    def __init__(self, path: str, reason: str, *, source: str = "") -> None:
        super().__init__(f"{source + ': ' if source else ''}{path}: {reason}")
        self.path = path
        self.reason = reason
        self.source = source


def load_config(data: Any, type_: type[T], *, source: str = "") -> T:
    """Convert plain data (dicts, lists, scalars) into ``type_`` strictly.

    Unknown keys, wrong types, values outside their limits and failed cross-checks
    (``__post_init__``) all become a ConfigError naming the key's path.
    """
    if data is None:
        data = {}
    try:
        return msgspec.convert(data, type_, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        if match:
            raise ConfigError(match.group(1), message[: match.start()], source=source) from None
        raise ConfigError("$", message, source=source) from None
