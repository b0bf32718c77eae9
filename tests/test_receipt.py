"""Delivery receipt text (SMPP 3.4 Appendix B): strict out, lenient in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smppcore.constants import MessageState
from smppcore.receipt import (
    IdStyle,
    Receipt,
    decimal_to_hex,
    format_receipt,
    hex_to_decimal,
    is_final,
    normalize_id,
    parse_receipt,
    stat_word,
    state_from_word,
)

SUBMITTED = datetime(2006, 10, 19, 10, 18, tzinfo=UTC)
DONE = datetime(2006, 10, 19, 10, 19, tzinfo=UTC)

# -- stat words ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "word"),
    [
        (MessageState.ENROUTE, "ENROUTE"),
        (MessageState.DELIVERED, "DELIVRD"),
        (MessageState.EXPIRED, "EXPIRED"),
        (MessageState.DELETED, "DELETED"),
        (MessageState.UNDELIVERABLE, "UNDELIV"),
        (MessageState.ACCEPTED, "ACCEPTD"),
        (MessageState.UNKNOWN, "UNKNOWN"),
        (MessageState.REJECTED, "REJECTD"),
    ],
)
def test_each_spec_state_has_its_stat_word_and_back(state: MessageState, word: str) -> None:
    assert stat_word(state) == word
    assert state_from_word(word) == state


def test_v5_states_are_written_with_the_nearest_3_4_word() -> None:
    assert stat_word(MessageState.SCHEDULED) == "ENROUTE"
    assert stat_word(MessageState.SKIPPED) == "UNDELIV"


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("delivrd", MessageState.DELIVERED),
        ("DELIVERED", MessageState.DELIVERED),
        ("Undeliverable", MessageState.UNDELIVERABLE),
        ("UNDELIVERED", MessageState.UNDELIVERABLE),
        ("accepted", MessageState.ACCEPTED),
        ("REJECTED", MessageState.REJECTED),
        (" DELIVRD ", MessageState.DELIVERED),
        ("FAILED", MessageState.UNKNOWN),
        ("", MessageState.UNKNOWN),
    ],
)
def test_stat_words_are_read_in_any_case_and_long_form(word: str, state: MessageState) -> None:
    assert state_from_word(word) == state


def test_only_scheduled_and_enroute_are_not_final() -> None:
    not_final = {s for s in MessageState if not is_final(s)}
    assert not_final == {MessageState.SCHEDULED, MessageState.ENROUTE}


# -- formatting ----------------------------------------------------------------------------


def test_format_receipt_in_the_appendix_b_form() -> None:
    receipt = Receipt(
        message_id="0123456789",
        state=MessageState.DELIVERED,
        sub=1,
        dlvrd=1,
        submit_date=SUBMITTED,
        done_date=DONE,
        error=0,
        text="Hello from the other side",
    )
    assert format_receipt(receipt) == (
        "id:0123456789 sub:001 dlvrd:001 submit date:0610191018 done date:0610191019"
        " stat:DELIVRD err:000 text:Hello from the other"
    )


def test_format_receipt_clamps_counts_and_error_to_three_digits() -> None:
    receipt = Receipt(
        message_id="x", state=MessageState.UNDELIVERABLE, sub=1000, dlvrd=-1, error=1234
    )
    assert " sub:999 dlvrd:000 " in format_receipt(receipt)
    assert " err:999 " in format_receipt(receipt)


def test_format_receipt_writes_dates_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    receipt = Receipt(
        message_id="1",
        state=MessageState.EXPIRED,
        submit_date=datetime(2006, 10, 19, 12, 18, tzinfo=plus_two),
        done_date=datetime(2006, 10, 19, 12, 19, tzinfo=plus_two),
    )
    assert "submit date:0610191018 done date:0610191019 stat:EXPIRED" in format_receipt(receipt)


def test_a_receipt_without_dates_leaves_the_values_empty() -> None:
    receipt = Receipt(message_id="1", state=MessageState.ENROUTE)
    assert format_receipt(receipt) == (
        "id:1 sub:001 dlvrd:000 submit date: done date: stat:ENROUTE err:000 text:"
    )


# -- parsing what vendors send -------------------------------------------------------------


def test_parse_the_smppsim_receipt() -> None:
    text = (
        "id:0123456789 sub:001 dlvrd:001 submit date:0610191018 done date:0610191018"
        " stat:DELIVRD err:000 Text:Hello"
    )
    assert parse_receipt(text) == Receipt(
        message_id="0123456789",
        state=MessageState.DELIVERED,
        sub=1,
        dlvrd=1,
        submit_date=SUBMITTED,
        done_date=SUBMITTED,
        error=0,
        text="Hello",
    )


def test_parse_a_kannel_style_receipt_with_a_hex_id_and_empty_text() -> None:
    text = (
        "id:7A3E21BC sub:001 dlvrd:001 submit date:2403151230 done date:2403151231"
        " stat:DELIVRD err:000 text:"
    )
    receipt = parse_receipt(text)
    assert receipt is not None
    assert receipt.message_id == "7A3E21BC"
    assert receipt.done_date == datetime(2024, 3, 15, 12, 31, tzinfo=UTC)
    assert receipt.text == ""


def test_parse_twelve_digit_dates_and_a_failure() -> None:
    text = (
        "id:000042 sub:001 dlvrd:000 submit date:240315123045 done date:240315123112"
        " stat:UNDELIV err:034 text:Hi"
    )
    assert parse_receipt(text) == Receipt(
        message_id="000042",
        state=MessageState.UNDELIVERABLE,
        sub=1,
        dlvrd=0,
        submit_date=datetime(2024, 3, 15, 12, 30, 45, tzinfo=UTC),
        done_date=datetime(2024, 3, 15, 12, 31, 12, tzinfo=UTC),
        error=34,
        text="Hi",
    )


def test_parse_upper_case_keys() -> None:
    text = (
        "ID:ABC SUB:001 DLVRD:001 SUBMIT DATE:0610191018 DONE DATE:0610191019"
        " STAT:DELIVRD ERR:000 TEXT:x"
    )
    assert parse_receipt(text) == Receipt(
        message_id="ABC",
        state=MessageState.DELIVERED,
        sub=1,
        dlvrd=1,
        submit_date=SUBMITTED,
        done_date=DONE,
        text="x",
    )


def test_parse_underscored_date_keys_and_long_key_forms() -> None:
    text = "id:9 submit_date:0610191018 done_date:0610191019 status:EXPIRED error:5"
    assert parse_receipt(text) == Receipt(
        message_id="9",
        state=MessageState.EXPIRED,
        submit_date=SUBMITTED,
        done_date=DONE,
        error=5,
    )


def test_fields_come_in_any_order_and_unknown_fields_are_skipped() -> None:
    text = "stat:REJECTD dest:447700900123 err:012 id:4f1c smsc:alpha sub:002 text:msg"
    assert parse_receipt(text) == Receipt(
        message_id="4f1c", state=MessageState.REJECTED, sub=2, error=12, text="msg"
    )


def test_missing_fields_take_their_defaults() -> None:
    assert parse_receipt("id:abc stat:EXPIRED") == Receipt(
        message_id="abc",
        state=MessageState.EXPIRED,
        sub=1,
        dlvrd=0,
        submit_date=None,
        done_date=None,
        error=0,
        text="",
    )


def test_a_delivered_receipt_without_dlvrd_counts_one_delivered() -> None:
    receipt = parse_receipt("id:abc stat:DELIVRD")
    assert receipt is not None
    assert receipt.dlvrd == 1


def test_ids_are_kept_exactly_as_written() -> None:
    for message_id in ["0000123", "1a2B3c", "6f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b", "0x1F"]:
        receipt = parse_receipt(f"id:{message_id} stat:DELIVRD")
        assert receipt is not None
        assert receipt.message_id == message_id


def test_the_text_is_taken_verbatim_and_keys_inside_it_are_not_fields() -> None:
    receipt = parse_receipt("id:1 stat:DELIVRD err:000 text: stat:UNDELIV id:2 err:9 ")
    assert receipt == Receipt(
        message_id="1", state=MessageState.DELIVERED, dlvrd=1, text=" stat:UNDELIV id:2 err:9 "
    )


def test_an_empty_value_does_not_swallow_the_next_key() -> None:
    receipt = parse_receipt("id: sub:003 submit date: done date:0610191019 stat:DELIVRD")
    assert receipt == Receipt(
        message_id="", state=MessageState.DELIVERED, sub=3, dlvrd=1, done_date=DONE
    )


def test_the_first_occurrence_of_a_key_wins() -> None:
    receipt = parse_receipt("id:first id:second stat:DELIVRD stat:UNDELIV")
    assert receipt is not None
    assert (receipt.message_id, receipt.state) == ("first", MessageState.DELIVERED)


def test_a_blank_before_the_colon_is_tolerated() -> None:
    receipt = parse_receipt("id : 77 stat : DELIVRD")
    assert receipt is not None
    assert (receipt.message_id, receipt.state) == ("77", MessageState.DELIVERED)


@pytest.mark.parametrize(
    ("err", "error"),
    [("000", 0), ("034", 34), ("0x1A", 26), ("X12", 0), ("", 0), ("1" * 40, 0)],
)
def test_err_reads_decimal_or_0x_hex_and_anything_else_as_zero(err: str, error: int) -> None:
    receipt = parse_receipt(f"id:1 stat:UNDELIV err:{err} text:")
    assert receipt is not None
    assert receipt.error == error


def test_unreadable_counts_and_dates_take_their_defaults() -> None:
    receipt = parse_receipt("id:1 sub:one dlvrd:-1 submit date:9999999999 stat:UNDELIV")
    assert receipt == Receipt(message_id="1", state=MessageState.UNDELIVERABLE)


def test_an_unknown_stat_word_reads_as_unknown() -> None:
    receipt = parse_receipt("id:1 stat:WHATEVER")
    assert receipt is not None
    assert receipt.state == MessageState.UNKNOWN


def test_a_stat_without_an_id_is_still_a_receipt() -> None:
    receipt = parse_receipt("stat:DELIVRD err:000")
    assert receipt is not None
    assert receipt.message_id == ""


def test_bytes_are_read_as_utf8_or_latin1_and_terminators_dropped() -> None:
    utf8 = parse_receipt("id:1 stat:DELIVRD text:héllo".encode() + b"\x00")
    latin1 = parse_receipt("id:1 stat:DELIVRD text:héllo".encode("latin-1"))
    assert utf8 is not None
    assert latin1 is not None
    assert utf8.text == latin1.text == "héllo"


@pytest.mark.parametrize(
    "text", ["", "hello world", "identity:1 status-report", b"\xff\xfe\x00", "text:id:1 stat:X"]
)
def test_text_without_id_or_stat_is_not_a_receipt(text: str | bytes) -> None:
    assert parse_receipt(text) is None


# -- properties ----------------------------------------------------------------------------

receipt_dates = st.none() | st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31, 23, 59)
).map(lambda d: d.replace(second=0, microsecond=0, tzinfo=UTC))

receipts = st.builds(
    Receipt,
    message_id=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=65),
    state=st.sampled_from(
        [s for s in MessageState if s not in {MessageState.SCHEDULED, MessageState.SKIPPED}]
    ),
    sub=st.integers(0, 999),
    dlvrd=st.integers(0, 999),
    submit_date=receipt_dates,
    done_date=receipt_dates,
    error=st.integers(0, 999),
    text=st.text(max_size=20).filter(lambda t: not t.endswith("\x00")),
)


@given(receipts)
def test_format_then_parse_gives_the_receipt_back(receipt: Receipt) -> None:
    assert parse_receipt(format_receipt(receipt)) == receipt


@given(receipts)
def test_formatted_receipts_can_be_sent_as_bytes(receipt: Receipt) -> None:
    assert parse_receipt(format_receipt(receipt).encode()) == receipt


receipt_like = st.lists(
    st.sampled_from(
        ["id:", "sub:", "dlvrd:", "submit date:", "done_date:", "stat:", "err:", "text:", " "]
    )
    | st.text(max_size=12),
    max_size=20,
).map("".join)


@given(st.text() | receipt_like)
def test_parsing_any_text_never_raises(text: str) -> None:
    result = parse_receipt(text)
    assert result is None or isinstance(result, Receipt)


@given(st.binary())
def test_parsing_any_bytes_never_raises(data: bytes) -> None:
    result = parse_receipt(data)
    assert result is None or isinstance(result, Receipt)


# -- id correlation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "style", "key"),
    [
        (" 0A1b ", "as_is", " 0A1b "),
        (" 0A1b ", "upper", "0A1B"),
        (" 0A1b ", "lower", "0a1b"),
        ("000123", "strip_zeros", "123"),
        ("000", "strip_zeros", "0"),
        ("", "strip_zeros", ""),
        ("1A2B", "hex", "6699"),
        ("0x1a2b", "hex", "6699"),
        ("001a2b", "hex", "6699"),
        ("0006699", "decimal", "6699"),
        ("not-hex", "hex", "not-hex"),
        (" 12ab ", "decimal", "12ab"),
        ("١٢", "decimal", "١٢"),
    ],
)
def test_normalize_id(value: str, style: IdStyle, key: str) -> None:
    assert normalize_id(value, style=style) == key


def test_hex_submit_ids_correlate_with_decimal_receipt_ids() -> None:
    submit_sm_resp_id, receipt_id = "16FEE0E525", "98765432101"
    assert normalize_id(submit_sm_resp_id, style="hex") == normalize_id(receipt_id, style="decimal")


@given(st.integers(min_value=0, max_value=2**128))
def test_any_number_has_one_key_in_either_base(number: int) -> None:
    assert normalize_id(f"{number:X}", style="hex") == normalize_id(f"00{number}", style="decimal")


@given(st.text(), st.sampled_from(["as_is", "hex", "decimal", "upper", "lower", "strip_zeros"]))
def test_normalize_id_never_raises(value: str, style: IdStyle) -> None:
    assert isinstance(normalize_id(value, style=style), str)


def test_hex_and_decimal_conversions() -> None:
    assert hex_to_decimal("16fee0e525") == "98765432101"
    assert hex_to_decimal("0X16FEE0E525") == "98765432101"
    assert decimal_to_hex("98765432101") == "16fee0e525"
    assert decimal_to_hex("98765432101", upper=True, width=12) == "0016FEE0E525"
    assert decimal_to_hex("0") == "0"


@pytest.mark.parametrize("value", ["", "0x", "12g", " 12", "١٢", "-1"])
def test_hex_to_decimal_refuses_what_is_not_hex(value: str) -> None:
    with pytest.raises(ValueError, match="hexadecimal"):
        hex_to_decimal(value)


@pytest.mark.parametrize("value", ["", "1a", " 12", "١٢", "-1", "+1"])
def test_decimal_to_hex_refuses_what_is_not_decimal(value: str) -> None:
    with pytest.raises(ValueError, match="decimal"):
        decimal_to_hex(value)


@given(st.integers(min_value=0, max_value=2**128))
def test_conversions_are_inverse(number: int) -> None:
    assert hex_to_decimal(decimal_to_hex(str(number))) == str(number)
