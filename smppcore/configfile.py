"""Reading a YAML configuration file: the edge where files become config values.

Read the file, parse YAML (``safe_load``), check it is a mapping, and hand the plain data
to :func:`smppcore.config.load_config`. Every failure — a missing file, a YAML syntax error,
an unknown key, a wrong type, a failed cross-check — becomes one
:class:`~smppcore.config.ConfigError` whose ``str()`` is ``<file>: <key path>: <reason>``,
which the CLIs print before exiting with status 2.

Like aio.py and tls.py this module does I/O (and imports yaml): it is the one reader that
``smsc serve``, ``smsc carrier`` and ``smsc load`` (also run alone as
``python -m simulator.load``) share, and smppcore is the only package below all three.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml

from smppcore.config import ConfigError, load_config

T = TypeVar("T")


def load_yaml_config(path: str | Path, type_: type[T]) -> T:
    """Read the YAML file at ``path`` and decode it strictly into ``type_``.

    Raises ConfigError (``source`` is the path as given) for anything wrong with the file.
    """
    return load_config(read_yaml_mapping(path), type_, source=str(path))


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The plain data of a YAML file holding a mapping (an empty file: ``{}``)."""
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
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            "$", f"expected a mapping of keys, got {type(data).__name__}", source=source
        )
    return data


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
