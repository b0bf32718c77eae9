"""SMPP time fields (§7.1.1) and the date format of delivery receipts (Appendix B).

A time field is 16 ASCII characters, or empty when the field is not set:

- absolute ``YYMMDDhhmmsstnnp``: a wall-clock time, ``t`` tenths of a second, ``nn`` the
  distance to UTC in quarter hours (00-48) and ``p`` its direction, ``+`` ahead of UTC
  or ``-`` behind it;
- relative ``YYMMDDhhmmss000R``: years, months, days, hours, minutes and seconds counted
  from the current time of the message centre. The spec says ``t`` and ``nn`` are ignored
  and should be ``0`` and ``00``; we ignore their values but still require digits.

Two-digit years are read as 2000-2099. Nothing here reads the clock: ``resolve`` takes
``now``.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone

import msgspec

from smppcore.constants import CommandStatus
from smppcore.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "RelativeTime",
    "format_absolute",
    "format_receipt_date",
    "format_relative",
    "parse_receipt_date",
    "parse_schedule_delivery_time",
    "parse_time",
    "parse_validity_period",
    "resolve",
]

#: The largest distance to UTC a time field can carry: 48 quarter hours.
MAX_QUARTER_HOURS = 48
_QUARTER_HOUR = timedelta(minutes=15)

_TIME_FIELD = re.compile(r"([0-9]{12})([0-9])([0-9]{2})([+\-R])")
_RECEIPT_DATE = re.compile(r"[0-9]{10}|[0-9]{12}|[0-9]{14}")


class RelativeTime(msgspec.Struct, frozen=True, kw_only=True):
    """A relative time field: a period counted from the current time of the MC.

    Each count is what the two digits of its position say (0-99); they are not
    normalised (``hours=36`` stays 36 hours).
    """

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0


def parse_time(value: str, *, status: int) -> datetime | RelativeTime | None:
    """Read a time field: ``None`` when empty, an aware ``datetime`` or a ``RelativeTime``.

    An absolute time keeps the offset it was written in (``timezone(+/- nn * 15 min)``)
    and its tenths of a second. Anything malformed raises ``RemoteProtocolError`` with
    ``status``: the caller knows which field it read (schedule_delivery_time answers
    ESME_RINVSCHED, validity_period ESME_RINVEXPIRY).
    """
    if value == "":
        return None
    match = _TIME_FIELD.fullmatch(value)
    if match is None:
        raise RemoteProtocolError(
            f"time field {value!r} is not 16 characters YYMMDDhhmmsstnn followed by +, - or R",
            status=status,
        )
    digits, tenths, quarters, direction = match.groups()
    yy, mo, dd, hh, mi, ss = (int(digits[i : i + 2]) for i in range(0, 12, 2))
    if direction == "R":
        return RelativeTime(years=yy, months=mo, days=dd, hours=hh, minutes=mi, seconds=ss)
    offset_quarters = int(quarters)
    if offset_quarters > MAX_QUARTER_HOURS:
        raise RemoteProtocolError(
            f"time field {value!r}: UTC offset of {offset_quarters} quarter hours is over 48",
            status=status,
        )
    sign = 1 if direction == "+" else -1
    zone = timezone(sign * offset_quarters * _QUARTER_HOUR)
    try:
        return datetime(2000 + yy, mo, dd, hh, mi, ss, int(tenths) * 100_000, tzinfo=zone)
    except ValueError as exc:
        raise RemoteProtocolError(f"time field {value!r}: {exc}", status=status) from exc


def parse_schedule_delivery_time(value: str) -> datetime | RelativeTime | None:
    """``parse_time`` for schedule_delivery_time: malformed input answers ESME_RINVSCHED."""
    return parse_time(value, status=CommandStatus.ESME_RINVSCHED)


def parse_validity_period(value: str) -> datetime | RelativeTime | None:
    """``parse_time`` for validity_period: malformed input answers ESME_RINVEXPIRY."""
    return parse_time(value, status=CommandStatus.ESME_RINVEXPIRY)


def format_absolute(dt: datetime) -> str:
    """Write an aware datetime as an absolute time field (16 characters).

    The instant is kept. Its offset is shown as the nearest quarter hour, bounded to
    +/-12 hours (the wall-clock time is moved to match), and the time is truncated to
    tenths of a second. A naive datetime, or a year outside 2000-2099 once expressed
    in that offset, raises ``LocalProtocolError``.
    """
    offset = dt.utcoffset()
    if offset is None:
        raise LocalProtocolError(f"format_absolute needs an aware datetime, got {dt!r}")
    quarters = round(offset / _QUARTER_HOUR)
    quarters = max(-MAX_QUARTER_HOURS, min(MAX_QUARTER_HOURS, quarters))
    local = dt.astimezone(timezone(quarters * _QUARTER_HOUR))
    if not 2000 <= local.year <= 2099:
        raise LocalProtocolError(f"year {local.year} does not fit a two-digit SMPP time field")
    return (
        f"{local:%y%m%d%H%M%S}{local.microsecond // 100_000}"
        f"{abs(quarters):02d}{'-' if quarters < 0 else '+'}"
    )


def format_relative(rel: RelativeTime) -> str:
    """Write a relative time field (``YYMMDDhhmmss000R``); each count must be 0-99."""
    counts = (rel.years, rel.months, rel.days, rel.hours, rel.minutes, rel.seconds)
    if not all(0 <= count <= 99 for count in counts):
        raise LocalProtocolError(f"every count of a relative time field must be 0-99: {rel!r}")
    return "".join(f"{count:02d}" for count in counts) + "000R"


def resolve(value: datetime | RelativeTime | None, now: datetime) -> datetime | None:
    """The UTC instant a parsed time field names; ``None`` stays ``None`` (not set).

    A relative time is counted from ``now`` (aware) on the UTC calendar: years and
    months first, the day of month clamped to the length of the target month
    (31 January + 1 month = 28 or 29 February), then days, hours, minutes and seconds.
    A result past the end of ``datetime`` is clamped to ``datetime.max`` in UTC.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise LocalProtocolError(f"resolve needs an aware datetime, got {value!r}")
        return value.astimezone(UTC)
    if now.utcoffset() is None:
        raise LocalProtocolError(f"resolve needs an aware 'now', got {now!r}")
    start = now.astimezone(UTC)
    month_index = start.month - 1 + value.months + 12 * value.years
    year, month = start.year + month_index // 12, month_index % 12 + 1
    period = timedelta(
        days=value.days, hours=value.hours, minutes=value.minutes, seconds=value.seconds
    )
    try:
        day = min(start.day, calendar.monthrange(year, month)[1])
        return start.replace(year=year, month=month, day=day) + period
    except (ValueError, OverflowError):
        return datetime.max.replace(tzinfo=UTC)


def format_receipt_date(dt: datetime) -> str:
    """Write a receipt date (``submit date``/``done date``) as ``YYMMDDhhmm`` in UTC.

    Appendix B leaves the zone to the MC; we always write UTC. ``dt`` must be aware.
    """
    if dt.tzinfo is UTC:
        utc = dt
    elif dt.utcoffset() is None:
        raise LocalProtocolError(f"format_receipt_date needs an aware datetime, got {dt!r}")
    else:
        utc = dt.astimezone(UTC)
    # Receipts come by the thousand within one minute: remember the last minute written.
    key = (utc.year, utc.month, utc.day, utc.hour, utc.minute)
    if key == _last_minute[0]:
        return _last_minute[1]  # type: ignore[return-value]
    if not 2000 <= utc.year <= 2099:
        raise LocalProtocolError(f"year {utc.year} does not fit a two-digit receipt date")
    text = f"{utc.year - 2000:02d}{utc.month:02d}{utc.day:02d}{utc.hour:02d}{utc.minute:02d}"
    _last_minute[:] = [key, text]
    return text


_last_minute: list[object] = [None, ""]


def parse_receipt_date(value: str) -> datetime | None:
    """Read a receipt date leniently, as UTC; ``None`` when it is not a valid date.

    Accepts ``YYMMDDhhmm`` (Appendix B), ``YYMMDDhhmmss`` (many MCs) and
    ``YYYYMMDDhhmmss`` (seen in the wild), with surrounding whitespace. Never raises.
    """
    text = value.strip()
    if _RECEIPT_DATE.fullmatch(text) is None:
        return None
    if len(text) == 14:
        year, rest = int(text[:4]), text[4:]
    else:
        year, rest = 2000 + int(text[:2]), text[2:]
    fields = [int(rest[i : i + 2]) for i in range(0, len(rest), 2)]
    month, day, hour, minute = fields[:4]
    second = fields[4] if len(fields) > 4 else 0
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
