"""SMPP time fields (§7.1.1) and receipt dates (Appendix B)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smppcore.constants import CommandStatus
from smppcore.errors import LocalProtocolError, RemoteProtocolError
from smppcore.smpptime import (
    RelativeTime,
    format_absolute,
    format_receipt_date,
    format_relative,
    parse_receipt_date,
    parse_schedule_delivery_time,
    parse_time,
    parse_validity_period,
    resolve,
)

SCHED = CommandStatus.ESME_RINVSCHED


def tz(quarters: int) -> timezone:
    return timezone(timedelta(minutes=15 * quarters))


# -- parsing -----------------------------------------------------------------------------


def test_an_empty_time_field_is_not_set() -> None:
    assert parse_time("", status=SCHED) is None


def test_relative_time_counts_years_months_days_hours_minutes_seconds() -> None:
    # §7.1.1.2: 2 years, 6 months, 10 days, 23 hours, 34 minutes and 29 seconds from now.
    assert parse_time("020610233429000R", status=SCHED) == RelativeTime(
        years=2, months=6, days=10, hours=23, minutes=34, seconds=29
    )


def test_relative_time_ignores_the_values_of_tenths_and_offset() -> None:
    assert parse_time("000001000000123R", status=SCHED) == RelativeTime(days=1)


def test_relative_counts_are_not_normalised() -> None:
    assert parse_time("000000480000000R", status=SCHED) == RelativeTime(hours=48)


def test_absolute_time_ahead_of_utc_in_quarter_hours() -> None:
    # 1 December 2005, 14:00:00.0 local time, 8 quarter hours (2 hours) ahead of UTC.
    value = parse_time("051201140000008+", status=SCHED)
    assert value == datetime(2005, 12, 1, 14, 0, 0, tzinfo=tz(8))
    assert isinstance(value, datetime)
    assert value.utcoffset() == timedelta(hours=2)
    assert value.astimezone(UTC) == datetime(2005, 12, 1, 12, 0, tzinfo=UTC)


def test_absolute_time_behind_utc_keeps_tenths_of_a_second() -> None:
    value = parse_time("120410101112320-", status=SCHED)
    assert value == datetime(2012, 4, 10, 10, 11, 12, 300_000, tzinfo=tz(-20))
    assert isinstance(value, datetime)
    assert value.utcoffset() == timedelta(hours=-5)


def test_a_minus_zero_offset_is_utc() -> None:
    assert parse_time("991231235959900-", status=SCHED) == datetime(
        2099, 12, 31, 23, 59, 59, 900_000, tzinfo=UTC
    )


def test_offsets_up_to_48_quarter_hours_are_allowed() -> None:
    value = parse_time("240101000000048+", status=SCHED)
    assert isinstance(value, datetime)
    assert value.utcoffset() == timedelta(hours=12)


@pytest.mark.parametrize(
    "value",
    [
        "05120114000000+",  # too short
        "0512011400000008+",  # too long
        "051201140000008",  # no direction
        "051201140000008Z",  # unknown direction
        "051201140000008r",  # relative must be upper-case R
        "0512011400000A8+",  # letter in the offset
        "05120114000000 R",  # blank for a digit
        "05120114000000٠+",  # Arabic-Indic digit is not an ASCII digit
        "051301140000008+",  # month 13
        "050230140000008+",  # 30 February
        "051201240000008+",  # hour 24
        "051201146000008+",  # minute 60
        "051201140060008+",  # second 60
        "051201140000049+",  # offset over 48 quarter hours
        " 051201140000008+",
    ],
)
def test_malformed_time_fields_are_refused_with_the_callers_status(value: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_time(value, status=CommandStatus.ESME_RINVEXPIRY)
    assert info.value.status == CommandStatus.ESME_RINVEXPIRY


def test_schedule_delivery_time_is_refused_with_esme_rinvsched() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_schedule_delivery_time("garbage")
    assert info.value.status == CommandStatus.ESME_RINVSCHED


def test_validity_period_is_refused_with_esme_rinvexpiry() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_validity_period("garbage")
    assert info.value.status == CommandStatus.ESME_RINVEXPIRY


def test_field_specific_parsers_read_valid_fields() -> None:
    assert parse_schedule_delivery_time("") is None
    assert parse_validity_period("000001000000000R") == RelativeTime(days=1)


@given(st.text(max_size=20) | st.text(alphabet="0123456789+-R", min_size=16, max_size=16))
def test_parsing_any_text_returns_a_value_or_refuses_with_the_status(value: str) -> None:
    answered = CommandStatus.ESME_ROK
    try:
        parse_time(value, status=CommandStatus.ESME_RINVEXPIRY)
    except RemoteProtocolError as exc:
        answered = CommandStatus(exc.status)
    assert answered in {CommandStatus.ESME_ROK, CommandStatus.ESME_RINVEXPIRY}


# -- formatting --------------------------------------------------------------------------


def test_format_absolute_writes_utc_with_a_plus_zero_offset() -> None:
    assert format_absolute(datetime(2024, 3, 15, 12, 30, 45, 678_000, tzinfo=UTC)) == (
        "240315123045600+"
    )


def test_format_absolute_writes_the_offset_in_quarter_hours() -> None:
    assert format_absolute(datetime(2005, 12, 1, 14, 0, tzinfo=tz(8))) == "051201140000008+"
    assert format_absolute(datetime(2012, 4, 10, 10, 11, 12, tzinfo=tz(-20))) == (
        "120410101112020-"
    )
    nepal = timezone(timedelta(hours=5, minutes=45))
    assert format_absolute(datetime(2024, 1, 1, 9, 0, tzinfo=nepal)) == "240101090000023+"


def test_format_absolute_rounds_an_odd_offset_and_keeps_the_instant() -> None:
    odd = timezone(timedelta(hours=5, minutes=50))
    dt = datetime(2024, 1, 1, 12, 0, tzinfo=odd)
    text = format_absolute(dt)
    assert text == "240101115500023+"
    assert parse_time(text, status=SCHED) == dt


def test_format_absolute_bounds_offsets_beyond_twelve_hours_and_keeps_the_instant() -> None:
    kiribati = timezone(timedelta(hours=14))
    dt = datetime(2024, 1, 1, 14, 0, tzinfo=kiribati)
    text = format_absolute(dt)
    assert text == "240101120000048+"
    assert parse_time(text, status=SCHED) == dt


def test_format_absolute_refuses_naive_datetimes_and_years_outside_the_century() -> None:
    with pytest.raises(LocalProtocolError):
        format_absolute(datetime(2024, 1, 1))
    with pytest.raises(LocalProtocolError):
        format_absolute(datetime(2100, 1, 1, tzinfo=UTC))
    with pytest.raises(LocalProtocolError):
        format_absolute(datetime(1999, 12, 31, 23, 59, tzinfo=UTC))


def test_format_relative() -> None:
    rel = RelativeTime(years=2, months=6, days=10, hours=23, minutes=34, seconds=29)
    assert format_relative(rel) == "020610233429000R"
    assert format_relative(RelativeTime()) == "000000000000000R"


@pytest.mark.parametrize("rel", [RelativeTime(days=100), RelativeTime(seconds=-1)])
def test_format_relative_refuses_counts_outside_two_digits(rel: RelativeTime) -> None:
    with pytest.raises(LocalProtocolError):
        format_relative(rel)


quarter_hour_zones = st.integers(-48, 48).map(tz)


@given(
    st.datetimes(
        min_value=datetime(2000, 1, 1),
        max_value=datetime(2099, 12, 31, 23, 59, 59, 999_999),
        timezones=quarter_hour_zones,
    )
)
def test_absolute_round_trip_keeps_wall_time_offset_and_tenths(dt: datetime) -> None:
    parsed = parse_time(format_absolute(dt), status=SCHED)
    tenths = dt.replace(microsecond=dt.microsecond // 100_000 * 100_000)
    assert isinstance(parsed, datetime)
    assert parsed == tenths
    assert parsed.utcoffset() == dt.utcoffset()
    assert parsed.replace(tzinfo=None) == tenths.replace(tzinfo=None)


@given(
    st.datetimes(
        min_value=datetime(2001, 1, 1),
        max_value=datetime(2098, 12, 31),
        timezones=st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m))),
    )
)
def test_any_offset_round_trips_to_the_same_instant_within_a_tenth(dt: datetime) -> None:
    parsed = parse_time(format_absolute(dt), status=SCHED)
    assert isinstance(parsed, datetime)
    assert timedelta(0) <= dt - parsed < timedelta(milliseconds=100)


two_digits = st.integers(0, 99)


@given(
    st.builds(
        RelativeTime,
        years=two_digits,
        months=two_digits,
        days=two_digits,
        hours=two_digits,
        minutes=two_digits,
        seconds=two_digits,
    )
)
def test_relative_round_trip(rel: RelativeTime) -> None:
    assert parse_time(format_relative(rel), status=SCHED) == rel


# -- resolving to an instant ---------------------------------------------------------------

NOW = datetime(2020, 1, 1, tzinfo=UTC)


def test_resolving_an_unset_field_gives_none() -> None:
    assert resolve(None, NOW) is None


def test_an_absolute_time_resolves_to_its_utc_instant() -> None:
    value = parse_time("051201140000008+", status=SCHED)
    resolved = resolve(value, NOW)
    assert resolved == datetime(2005, 12, 1, 12, 0, tzinfo=UTC)
    assert resolved is not None
    assert resolved.tzinfo is UTC


def test_a_relative_time_is_added_to_now() -> None:
    value = parse_time("020610233429000R", status=SCHED)
    assert resolve(value, NOW) == datetime(2022, 7, 11, 23, 34, 29, tzinfo=UTC)


def test_relative_months_clamp_the_day_to_the_end_of_the_month() -> None:
    end_of_january = datetime(2024, 1, 31, 10, 0, tzinfo=UTC)
    assert resolve(RelativeTime(months=1), end_of_january) == datetime(
        2024, 2, 29, 10, 0, tzinfo=UTC
    )
    assert resolve(RelativeTime(months=13), end_of_january) == datetime(
        2025, 2, 28, 10, 0, tzinfo=UTC
    )
    leap_day = datetime(2024, 2, 29, tzinfo=UTC)
    assert resolve(RelativeTime(years=1), leap_day) == datetime(2025, 2, 28, tzinfo=UTC)


def test_relative_days_and_hours_carry_over_after_the_months() -> None:
    now = datetime(2024, 1, 31, 23, 0, tzinfo=UTC)
    assert resolve(RelativeTime(months=1, days=1, hours=2), now) == datetime(
        2024, 3, 2, 1, 0, tzinfo=UTC
    )


def test_relative_time_is_counted_on_the_utc_calendar_of_now() -> None:
    now = datetime(2024, 2, 1, 1, 0, tzinfo=tz(8))  # 31 January 23:00 UTC
    assert resolve(RelativeTime(months=1), now) == datetime(2024, 2, 29, 23, 0, tzinfo=UTC)


def test_a_relative_time_past_the_calendar_is_clamped() -> None:
    now = datetime(9950, 1, 1, tzinfo=UTC)
    assert resolve(RelativeTime(years=99), now) == datetime.max.replace(tzinfo=UTC)


def test_resolve_needs_aware_datetimes() -> None:
    with pytest.raises(LocalProtocolError):
        resolve(RelativeTime(days=1), datetime(2024, 1, 1))
    with pytest.raises(LocalProtocolError):
        resolve(datetime(2024, 1, 1), NOW)


# -- receipt dates -------------------------------------------------------------------------


def test_receipt_dates_are_written_to_the_minute_in_utc() -> None:
    assert format_receipt_date(datetime(2006, 10, 19, 10, 18, 59, tzinfo=UTC)) == "0610191018"
    assert format_receipt_date(datetime(2006, 10, 19, 12, 18, tzinfo=tz(8))) == "0610191018"


def test_receipt_dates_need_an_aware_datetime_in_the_century() -> None:
    with pytest.raises(LocalProtocolError):
        format_receipt_date(datetime(2006, 10, 19))
    with pytest.raises(LocalProtocolError):
        format_receipt_date(datetime(2100, 1, 1, tzinfo=UTC))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0610191018", datetime(2006, 10, 19, 10, 18, tzinfo=UTC)),
        ("061019101842", datetime(2006, 10, 19, 10, 18, 42, tzinfo=UTC)),
        ("20061019101842", datetime(2006, 10, 19, 10, 18, 42, tzinfo=UTC)),
        (" 0610191018\r\n", datetime(2006, 10, 19, 10, 18, tzinfo=UTC)),
    ],
)
def test_receipt_dates_are_read_from_10_12_or_14_digits_as_utc(
    text: str, expected: datetime
) -> None:
    assert parse_receipt_date(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "061019101",
        "06101910184",
        "0613191018",
        "0602301018",
        "0610192418",
        "06-10-19 10:18",
        "٠٦١٠١٩١٠١٨",
    ],
)
def test_unreadable_receipt_dates_read_as_none(text: str) -> None:
    assert parse_receipt_date(text) is None


@given(st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59)))
def test_receipt_date_round_trip_to_the_minute(naive: datetime) -> None:
    dt = naive.replace(tzinfo=UTC)
    assert parse_receipt_date(format_receipt_date(dt)) == dt.replace(second=0, microsecond=0)


@given(st.text(max_size=16))
def test_parse_receipt_date_never_raises(text: str) -> None:
    parse_receipt_date(text)
