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
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]+)`$")
#: A cross-check message that starts with a relative key path: ``accounts[0].profile: ...``.
_RELATIVE = re.compile(r"^([A-Za-z_]\w*)((?:\[\d+\]|\.[A-Za-z_]\w*)*): (.+)$", re.DOTALL)


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
    (``__post_init__``) all become a ConfigError naming the key's path (see :func:`sharpen`).
    """
    if data is None:
        data = {}
    try:
        return msgspec.convert(data, type_, strict=True)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH.search(message)
        if match:
            err = ConfigError(match.group(1), message[: match.start()], source=source)
        else:
            err = ConfigError("$", message, source=source)
        raise sharpen(err, type_) from None


def sharpen(exc: ConfigError, type_: type[Any]) -> ConfigError:
    """Move key names that msgspec leaves in the reason into the path.

    ``$`` + "Object contains unknown field `foo`" becomes ``$.foo`` + "unknown key", and a
    cross-check such as ``$`` + "accounts[0].profile: no profile named 'x'" becomes
    ``$.accounts[0].profile`` + "no profile named 'x'" (only when the leading name is a
    key of some struct in ``type_``, so "uniform: high must be >= low" stays as it is).
    """
    unknown = _UNKNOWN_FIELD.match(exc.reason)
    if unknown:
        return ConfigError(f"{exc.path}.{unknown.group(1)}", "unknown key", source=exc.source)
    relative = _RELATIVE.match(exc.reason)
    if relative and relative.group(1) in field_names(type_):
        path = f"{exc.path}.{relative.group(1)}{relative.group(2)}"
        return ConfigError(path, relative.group(3), source=exc.source)
    return exc


def field_names(type_: type[Any]) -> set[str]:
    """Names of the fields of every struct reachable from ``type_``."""
    names: set[str] = set()
    seen: set[int] = set()

    def walk(info: msgspec.inspect.Type) -> None:
        if id(info) in seen:
            return
        seen.add(id(info))
        if isinstance(info, msgspec.inspect.StructType):
            for field in info.fields:
                names.add(field.encode_name)
                walk(field.type)
        elif isinstance(info, msgspec.inspect.DictType):
            walk(info.value_type)
        elif isinstance(info, msgspec.inspect.UnionType):
            for member in info.types:
                walk(member)
        elif isinstance(info, msgspec.inspect.CollectionType):
            walk(info.item_type)
        elif isinstance(info, msgspec.inspect.TupleType):
            for item in info.item_types:
                walk(item)
        elif isinstance(info, msgspec.inspect.Metadata):
            walk(info.type)

    walk(msgspec.inspect.type_info(type_))
    return names

