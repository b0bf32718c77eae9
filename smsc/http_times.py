"""Times as the HTTP API takes them: ``validity`` in seconds or as an ISO 8601 duration
(``PT1H30M``) or instant, ``send_at`` and list filters as ISO 8601 instants with a zone.
Each parser raises ValueError with the reason (the caller names the field)."""

from __future__ import annotations

import re
from datetime import datetime

_DURATION = re.compile(
    r"^P(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


def instant(text: str) -> float:
    """Unix seconds of an ISO 8601 date and time with a zone (``Z`` or ``+01:00``)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date and time") from None
    if when.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone (add Z or an offset)")
    return when.timestamp()


def duration(text: str) -> float:
    """Seconds of an ISO 8601 duration in days, hours, minutes and seconds."""
    found = _DURATION.match(text)
    if found is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not an ISO 8601 duration (PT1H, P2D, PT90S)")
    parts = {k: float(v) for k, v in found.groupdict().items() if v is not None}
    return (
        parts.get("d", 0) * 86_400 + parts.get("h", 0) * 3600 + parts.get("m", 0) * 60
    ) + parts.get("s", 0)


def validity_end(value: float | str, now: float) -> float:
    """When a message's validity ends: ``value`` seconds from now, an ISO 8601 duration
    from now, or an ISO 8601 instant."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif value.startswith("P"):
        seconds = duration(value)
    else:
        return instant(value)
    if seconds <= 0:
        raise ValueError("must be more than 0 seconds")
    return now + seconds
