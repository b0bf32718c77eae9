"""Reading a YAML configuration file into a typed, strict config struct.

This is the edge where files become values: read the file, parse YAML (``safe_load``), and
hand the plain data to :func:`smppcore.config.load_config`. Every failure — a missing file,
a YAML syntax error, an unknown key, a wrong type, a failed cross-check — becomes one
:class:`~smppcore.config.ConfigError` whose ``str()`` is ``<file>: <key path>: <reason>``,
which the CLI prints after ``smsc: `` before exiting with status 2.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypeVar

import msgspec
import yaml

from smppcore.config import ConfigError, load_config

T = TypeVar("T")

_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `([^`]+)`$")
#: A cross-check message that starts with a relative key path: ``accounts[0].profile: ...``.
_RELATIVE = re.compile(r"^([A-Za-z_]\w*)((?:\[\d+\]|\.[A-Za-z_]\w*)*): (.+)$", re.DOTALL)


def load_yaml_config(path: str | Path, type_: type[T]) -> T:
    """Read the YAML file at ``path`` and decode it strictly into ``type_``.

    Raises ConfigError (``source`` is the path as given) for anything wrong with the file.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("$", "no such file", source=source) from None
    except IsADirectoryError:
        raise ConfigError("$", "is a directory, not a file", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError("$", f"not UTF-8 text (octet {exc.start})", source=source) from None
    except OSError as exc:
        raise ConfigError("$", exc.strerror or str(exc), source=source) from None
    data = parse_yaml(text, source=source)
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            "$", f"expected a mapping of keys, got {type(data).__name__}", source=source
        )
    try:
        return load_config(data, type_, source=source)
    except ConfigError as exc:
        raise sharpen(exc, type_) from None


def parse_yaml(text: str, *, source: str = "") -> Any:
    """``yaml.safe_load`` with errors as ConfigError naming the line and column."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        what = exc.problem or exc.context or "invalid YAML"
        raise ConfigError("$", f"YAML syntax error at {where}{what}", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError("$", f"YAML syntax error: {exc}", source=source) from None


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
