"""Concatenation: segment sizes, UDH and SAR (TS 23.040 §9.2.3.24), and reassembly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smppcore.constants import CommandStatus, DataCoding
from smppcore.errors import EncodingError, LocalProtocolError, RemoteProtocolError
from smppcore.segment import (
    ConcatInfo,
    Expired,
    Mode,
    Reassembler,
    RefBits,
    SarInfo,
    Segment,
    concat_udh,
    parse_udh,
    split,
    split_bytes,
)
from smppcore.text import decode_text

GSM = DataCoding.SMSC_DEFAULT
UCS2 = DataCoding.UCS2
MODES: tuple[Mode, ...] = ("udh", "sar", "payload")
REF_BITS: tuple[RefBits, ...] = (8, 16)


def payloads(segments: tuple[Segment, ...]) -> list[bytes]:
    return [
        parse_udh(s.short_message)[1] if s.esm_class_udhi else s.short_message for s in segments
    ]


# --- sizes --------------------------------------------------------------------------------


def test_160_gsm_septets_are_one_sms_without_udh_or_sar() -> None:
    (only,) = split("a" * 160, ref=1)
    assert only == Segment(short_message=b"a" * 160, data_coding=GSM)


def test_161_gsm_septets_are_153_plus_8() -> None:
    first, second = split("a" * 161, ref=0x42)
    assert first.esm_class_udhi
    assert second.esm_class_udhi
    assert first.short_message == bytes.fromhex("050003420201") + b"a" * 153
    assert second.short_message == bytes.fromhex("050003420202") + b"a" * 8
    assert first.sar is None


def test_a_16_bit_reference_leaves_152_septets() -> None:
    first, second = split("a" * 161, ref=0x1234, ref_bits=16)
    assert first.short_message == bytes.fromhex("06080412340201") + b"a" * 152
    assert second.short_message == bytes.fromhex("06080412340202") + b"a" * 9


def test_extension_characters_count_two_septets() -> None:
    assert len(split("€" * 80, ref=1)) == 1
    assert len(split("€" * 80 + "a", ref=1)) == 2


def test_an_escape_pair_is_never_split_at_the_boundary() -> None:
    first, second = payloads(split("€" * 81, ref=1))  # septet 153 would be an ESC
    assert first == b"\x1b\x65" * 76
    assert second == b"\x1b\x65" * 5
    first, second = payloads(split("a" + "€" * 80, ref=1))  # septet 153 ends a pair: kept
    assert len(first) == 153


def test_escape_escape_pairs_are_counted_from_the_start() -> None:
    ends_pair = b"a" * 151 + b"\x1b\x1b" + b"b" * 10  # septet 153 closes ESC ESC
    assert len(payloads(split_bytes(ends_pair, data_coding=GSM, ref=1))[0]) == 153
    opens_pair = b"a" * 152 + b"\x1b\x1b" + b"b" * 10  # septet 153 opens ESC ESC
    assert len(payloads(split_bytes(opens_pair, data_coding=GSM, ref=1))[0]) == 152


def test_70_ucs2_characters_are_one_sms_71_are_67_plus_4() -> None:
    assert len(split("Ж" * 70, ref=1)) == 1
    first, second = payloads(split("Ж" * 71, ref=1))
    assert (len(first), len(second)) == (134, 8)
    first, _ = payloads(split("Ж" * 71, ref=1, ref_bits=16))
    assert len(first) == 132


def test_an_emoji_at_the_boundary_is_not_split() -> None:
    segments = split("a" * 66 + "😀" + "b" * 10, ref=7)
    assert segments[0].data_coding == UCS2
    first, second = (decode_text(p, UCS2) for p in payloads(segments))
    assert (first, second) == ("a" * 66, "😀" + "b" * 10)


def test_eight_bit_data_is_140_octets_or_parts_of_134() -> None:
    assert len(split_bytes(bytes(140), ref=1)) == 1
    first, second = payloads(split_bytes(bytes(141), ref=1))
    assert (len(first), len(second)) == (134, 7)
    first, _ = payloads(split_bytes(bytes(141), ref=1, ref_bits=16))
    assert len(first) == 133
    assert split_bytes(b"\x01", ref=1)[0].data_coding == DataCoding.BINARY
    assert len(split("é" * 141, DataCoding.LATIN1, ref=1)) == 2


def test_a_carrier_limit_below_140_octets_shrinks_every_size() -> None:
    assert len(split("a" * 152, ref=1, max_octets=133)) == 1  # 133 * 8 // 7
    first, _ = payloads(split("a" * 153, ref=1, max_octets=133))
    assert len(first) == 145  # (133 - 6) * 8 // 7


# --- modes --------------------------------------------------------------------------------


def test_sar_parts_have_the_udh_sizes_and_no_udh() -> None:
    segments = split("a" * 161, mode="sar", ref=300, ref_bits=16)
    assert [s.short_message for s in segments] == [b"a" * 152, b"a" * 9]
    assert [s.sar for s in segments] == [SarInfo(300, 2, 1), SarInfo(300, 2, 2)]
    assert not any(s.esm_class_udhi for s in segments)
    assert split("a" * 161, mode="sar", ref=3)[0].short_message == b"a" * 153


def test_payload_mode_gives_the_whole_text_once() -> None:
    (only,) = split("Ж" * 500, mode="payload", ref=1)
    assert only == Segment(short_message="Ж".encode("utf-16-be") * 500, data_coding=UCS2)


def test_payload_mode_is_bounded_by_the_tlv_length() -> None:
    with pytest.raises(LocalProtocolError) as info:
        split_bytes(bytes(0x10000), mode="payload", ref=1)
    assert info.value.status == CommandStatus.ESME_RINVMSGLEN


def test_the_chosen_coding_travels_with_each_segment() -> None:
    assert {s.data_coding for s in split("x" * 200, ref=1)} == {GSM}
    assert {s.data_coding for s in split("Ж" * 200, ref=1)} == {UCS2}
    assert {s.data_coding for s in split("x", DataCoding.IA5, ref=1)} == {DataCoding.IA5}


def test_more_than_255_parts_is_refused() -> None:
    assert len(split("a" * 153 * 255, ref=1)) == 255
    with pytest.raises(LocalProtocolError) as info:
        split("a" * (153 * 255 + 1), ref=1)
    assert info.value.status == CommandStatus.ESME_RINVMSGLEN


@pytest.mark.parametrize(
    ("ref", "ref_bits", "max_octets"),
    [(256, 8, 140), (-1, 8, 140), (0x10000, 16, 140), (1, 12, 140), (1, 8, 141), (1, 8, 15)],
)
def test_bad_split_arguments_are_misuse(ref: int, ref_bits: int, max_octets: int) -> None:
    with pytest.raises(LocalProtocolError):
        split("a", ref=ref, ref_bits=ref_bits, max_octets=max_octets)  # type: ignore[arg-type]


def test_text_that_does_not_fit_the_requested_coding_is_refused() -> None:
    with pytest.raises(EncodingError) as info:
        split("abc😀", GSM, ref=1)
    assert info.value.position == 3


# --- UDH ----------------------------------------------------------------------------------


def test_udh_golden_bytes() -> None:
    assert concat_udh(0x42, 3, 2) == bytes.fromhex("050003420302")
    assert concat_udh(0xBEEF, 3, 2, ref_bits=16) == bytes.fromhex("060804BEEF0302")


def test_parse_udh_finds_the_concatenation_and_the_payload() -> None:
    udh = bytes.fromhex("050003420302")
    assert parse_udh(udh + b"text") == (ConcatInfo(0x42, 3, 2, 8), b"text", udh)
    udh16 = bytes.fromhex("060804BEEF0302")
    assert parse_udh(udh16 + b"x") == (ConcatInfo(0xBEEF, 3, 2, 16), b"x", udh16)


def test_parse_udh_skips_other_information_elements() -> None:
    udh = bytes.fromhex("0B05040B8423F00003420302")  # application ports, then concat
    assert parse_udh(udh + b"wap") == (ConcatInfo(0x42, 3, 2, 8), b"wap", udh)
    ports_only = bytes.fromhex("0605040B8423F0")
    assert parse_udh(ports_only + b"p") == (None, b"p", ports_only)
    assert parse_udh(b"\x00abc") == (None, b"abc", b"\x00")


@pytest.mark.parametrize(
    "udh",
    [
        "050003420300",  # seq 0
        "050003420304",  # seq above total
        "050003420000",  # total 0
        "0400024203",  # concat IE with a wrong length
        "060004420302FF",  # ... likewise
    ],
)
def test_an_invalid_concatenation_element_is_ignored(udh: str) -> None:
    concat, payload, _ = parse_udh(bytes.fromhex(udh) + b"z")
    assert (concat, payload) == (None, b"z")


def test_the_last_valid_concatenation_element_wins() -> None:
    udh = bytes.fromhex("0A00030103020003020303")
    assert parse_udh(udh + b"q")[0] == ConcatInfo(2, 3, 3, 8)
    udh = bytes.fromhex("0A00030103020003020304")  # the second one is invalid
    assert parse_udh(udh + b"q")[0] == ConcatInfo(1, 3, 2, 8)


@pytest.mark.parametrize(
    "message",
    [
        "",  # UDHI set, nothing at all
        "0500034203",  # UDHL 5 but 4 octets follow
        "06",  # UDHL 6, nothing follows
        "0300044203",  # IE length 4 overruns a 3-octet UDH
        "0100",  # IE header cut by the UDH end
    ],
)
def test_a_udh_that_overruns_its_container_is_refused(message: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_udh(bytes.fromhex(message))
    assert info.value.status == CommandStatus.ESME_RINVMSGLEN


# --- reassembly ---------------------------------------------------------------------------


def test_parts_in_any_order_make_the_whole_message() -> None:
    r = Reassembler(max_pending=10, timeout=60.0)
    assert r.add("k", SarInfo(9, 3, 3), b"c", now=0.0) is None
    assert r.add("k", SarInfo(9, 3, 1), b"a", now=1.0) is None
    assert len(r) == 1
    assert r.add("k", SarInfo(9, 3, 2), b"b", now=2.0) == b"abc"
    assert len(r) == 0
    assert r.next_deadline() is None


def test_a_repeated_part_is_ignored() -> None:
    r = Reassembler(max_pending=10, timeout=60.0)
    r.add("k", ConcatInfo(1, 2, 1), b"first", now=0.0)
    assert r.add("k", ConcatInfo(1, 2, 1), b"again", now=0.0) is None
    assert r.add("k", ConcatInfo(1, 2, 2), b"+", now=0.0) == b"first+"


def test_a_one_part_message_passes_straight_through() -> None:
    r = Reassembler(max_pending=1, timeout=1.0)
    assert r.add("k", ConcatInfo(5, 1, 1), b"solo", now=0.0) == b"solo"
    assert len(r) == 0


def test_keys_references_and_reference_kinds_do_not_mix() -> None:
    r = Reassembler(max_pending=10, timeout=60.0)
    r.add(("acct", "123"), ConcatInfo(1, 2, 1), b"A", now=0.0)
    assert r.add(("acct", "456"), ConcatInfo(1, 2, 2), b"x", now=0.0) is None
    assert r.add(("acct", "123"), ConcatInfo(2, 2, 2), b"x", now=0.0) is None
    assert r.add(("acct", "123"), ConcatInfo(1, 2, 2, 16), b"x", now=0.0) is None
    assert r.add(("acct", "123"), SarInfo(1, 2, 2), b"x", now=0.0) is None
    assert r.add(("acct", "123"), ConcatInfo(1, 2, 2), b"B", now=0.0) == b"AB"


def test_a_partial_message_times_out_from_its_first_part() -> None:
    r = Reassembler(max_pending=10, timeout=30.0)
    r.add("k", SarInfo(7, 3, 2), b"b", now=100.0)
    r.add("k", SarInfo(7, 3, 1), b"a", now=120.0)  # does not extend the deadline
    assert r.next_deadline() == 130.0
    assert r.expire(129.9) == []
    assert r.expire(130.0) == [Expired("k", 7, 3, (1, 2), "timeout")]
    assert len(r) == 0
    assert r.next_deadline() is None
    assert r.add("k", SarInfo(7, 3, 3), b"c", now=131.0) is None  # a late part starts over


def test_expire_reports_only_what_is_due_oldest_first() -> None:
    r = Reassembler(max_pending=10, timeout=10.0)
    r.add("a", SarInfo(1, 2, 1), b"", now=0.0)
    r.add("b", SarInfo(1, 2, 1), b"", now=5.0)
    r.add("c", SarInfo(1, 2, 1), b"", now=8.0)
    assert [e.key for e in r.expire(15.0)] == ["a", "b"]
    assert r.next_deadline() == 18.0


def test_time_going_backwards_does_not_reorder_deadlines() -> None:
    r = Reassembler(max_pending=10, timeout=10.0)
    r.add("a", SarInfo(1, 2, 1), b"", now=50.0)
    r.add("b", SarInfo(1, 2, 1), b"", now=40.0)  # treated as 50.0
    assert r.expire(59.0) == []
    assert [e.key for e in r.expire(60.0)] == ["a", "b"]


def test_the_oldest_partial_message_is_evicted_for_room() -> None:
    r = Reassembler(max_pending=2, timeout=60.0)
    r.add("a", SarInfo(1, 2, 1), b"", now=0.0)
    r.add("b", SarInfo(1, 2, 1), b"", now=1.0)
    r.add("c", SarInfo(1, 2, 1), b"", now=2.0)
    assert len(r) == 2
    assert r.next_deadline() == 2.0  # a report is waiting: due at once
    assert r.expire(2.0) == [Expired("a", 1, 2, (1,), "evicted")]
    assert r.next_deadline() == 61.0
    assert r.add("a", SarInfo(1, 2, 2), b"", now=3.0) is None  # "a" is gone: starts over


def test_a_reused_reference_with_another_total_starts_over() -> None:
    r = Reassembler(max_pending=10, timeout=60.0)
    r.add("k", ConcatInfo(4, 3, 1), b"old", now=0.0)
    assert r.add("k", ConcatInfo(4, 2, 1), b"new", now=5.0) is None
    assert r.add("k", ConcatInfo(4, 2, 2), b"!", now=6.0) == b"new!"
    assert r.expire(6.0) == [Expired("k", 4, 3, (1,), "superseded")]


def test_reports_of_early_drops_are_bounded() -> None:
    r = Reassembler(max_pending=2, timeout=60.0)
    for i in range(10):
        r.add(str(i), SarInfo(1, 2, 1), b"", now=float(i))
    assert len(r) == 2
    assert [e.key for e in r.expire(9.0)] == ["6", "7"]  # the two newest reports are kept


def test_invalid_sar_numbering_is_the_peers_fault() -> None:
    r = Reassembler(max_pending=2, timeout=60.0)
    bad = [SarInfo(1, 0, 1), SarInfo(1, 2, 3), SarInfo(1, 2, 0), SarInfo(1, 256, 1)]
    for info in [*bad, SarInfo(0x10000, 2, 1), SarInfo(-1, 2, 1)]:
        with pytest.raises(RemoteProtocolError) as exc:
            r.add("k", info, b"", now=0.0)
        assert exc.value.status == CommandStatus.ESME_RINVOPTPARAMVAL
    assert len(r) == 0


def test_an_impossible_concat_info_is_misuse() -> None:
    r = Reassembler(max_pending=2, timeout=60.0)
    with pytest.raises(LocalProtocolError):
        r.add("k", ConcatInfo(256, 2, 1, 8), b"", now=0.0)
    with pytest.raises(LocalProtocolError):
        r.add("k", ConcatInfo(1, 2, 3), b"", now=0.0)


@pytest.mark.parametrize(("max_pending", "timeout"), [(0, 1.0), (1, 0.0), (1, float("nan"))])
def test_reassembler_limits_must_be_positive(max_pending: int, timeout: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Reassembler(max_pending, timeout)


# --- round trips --------------------------------------------------------------------------

GSM_ALPHABET = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./09:;<=>?¡AZÄÖÑÜ§¿azäöñüà^{}\\[~]|€\f"
)


@st.composite
def messages(draw: st.DrawFn) -> tuple[str, int | None]:
    """Texts of 0 to about 15 parts: a random unit repeated, between random ends."""
    gsm = draw(st.booleans())
    chars = st.text(alphabet=GSM_ALPHABET, max_size=40) if gsm else st.text(max_size=40)
    text = draw(chars) + draw(chars) * draw(st.integers(0, 60)) + draw(chars)
    return text, draw(st.sampled_from([None, GSM if gsm else UCS2]))


@given(
    messages(),
    st.sampled_from(MODES),
    st.sampled_from(REF_BITS),
    st.integers(0, 255),
    st.data(),
)
def test_split_then_reassemble_in_any_order_gives_the_text(
    message: tuple[str, int | None], mode: Mode, ref_bits: RefBits, ref: int, data: st.DataObject
) -> None:
    text, coding = message
    segments = split(text, coding, mode=mode, ref=ref, ref_bits=ref_bits)
    r = Reassembler(max_pending=4, timeout=60.0)
    results = []
    for segment in data.draw(st.permutations(segments)):
        info: ConcatInfo | SarInfo | None
        if segment.sar is not None:
            info, payload = segment.sar, segment.short_message
        elif segment.esm_class_udhi:
            info, payload, _ = parse_udh(segment.short_message)
            assert info is not None
            assert (info.ref, info.ref_bits) == (ref, ref_bits)
        else:
            info, payload = None, segment.short_message
        whole = payload if info is None else r.add(("src", "dst"), info, payload, now=0.0)
        if whole is not None:
            results.append(whole)
    assert len(results) == 1
    assert decode_text(results[0], segments[0].data_coding) == text
    assert len(r) == 0


@given(messages(), st.sampled_from(REF_BITS))
def test_every_part_but_the_last_is_full_and_each_stands_alone(
    message: tuple[str, int | None], ref_bits: RefBits
) -> None:
    text, coding = message
    segments = split(text, coding, ref=1, ref_bits=ref_bits)
    if len(segments) == 1:
        return
    unit = 1 if segments[0].data_coding == GSM else 2  # octets per septet / UTF-16 unit
    capacity = (153 if unit == 1 else 134) - (unit if ref_bits == 16 else 0)
    sizes = [len(p) for p in payloads(segments)]
    assert all(size <= capacity for size in sizes)
    assert all(size >= capacity - unit for size in sizes[:-1])  # at most one pair held back
    parts = [decode_text(p, segments[0].data_coding) for p in payloads(segments)]
    assert "".join(parts) == text  # each part decodes alone: no pair was cut
