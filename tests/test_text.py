"""Text codings: GSM 03.38 (TS 23.038), IA5, Latin-1 and UCS-2 as SMPP data_coding carries them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smppcore.constants import CommandStatus, DataCoding
from smppcore.errors import EncodingError, LocalProtocolError, RemoteProtocolError
from smppcore.text import (
    choose_coding,
    codec_name,
    count_units,
    decode_text,
    encode_text,
    gsm_decode,
    gsm_encode,
    gsm_fill_bits,
    gsm_length,
    gsm_pack,
    gsm_unpack,
)

BASIC = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
EXTENSION = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}
GSM_CHARS = [ch for ch in BASIC if ch != "\x1b"] + list(EXTENSION)
gsm_texts = st.text(alphabet=st.sampled_from(GSM_CHARS), max_size=400)


# --- GSM 03.38 default alphabet, unpacked -------------------------------------------------


def test_golden_values() -> None:
    assert gsm_encode("@") == b"\x00"
    assert gsm_encode("€") == b"\x1b\x65"
    assert gsm_encode("Hello, World!") == b"Hello, World!"
    assert gsm_encode("£$¥") == b"\x01\x02\x03"
    assert gsm_encode("ΔΩ_") == b"\x10\x15\x11"


@pytest.mark.parametrize(("code", "char"), [(c, ch) for c, ch in enumerate(BASIC) if c != 0x1B])
def test_every_default_alphabet_character_is_its_code(code: int, char: str) -> None:
    assert gsm_encode(char) == bytes([code])
    assert gsm_decode(bytes([code])) == char


@pytest.mark.parametrize(("char", "code"), EXTENSION.items())
def test_every_extension_character_is_escape_plus_code(char: str, code: int) -> None:
    assert gsm_encode(char) == bytes([0x1B, code])
    assert gsm_decode(bytes([0x1B, code])) == char
    assert gsm_length(char) == 2


def test_strict_encoding_names_the_first_character_that_does_not_fit() -> None:
    with pytest.raises(EncodingError) as info:
        gsm_encode("ok € then 😀 and ç")
    assert info.value.position == 10
    assert info.value.char == "😀"
    assert "U+1F600" in str(info.value)


@pytest.mark.parametrize("char", ["`", "\x1b", "\t", "\x00", "\x7f", "ç", "\x80"])
def test_ascii_and_latin1_characters_outside_the_alphabet_are_refused(char: str) -> None:
    with pytest.raises(EncodingError) as info:
        gsm_encode("ab" + char)
    assert (info.value.position, info.value.char) == (2, char)
    assert gsm_length(char) is None


def test_replace_substitutes_a_question_mark_per_character() -> None:
    assert gsm_encode("a😀b`€", errors="replace") == b"a?b?\x1b\x65"


def test_decoding_is_lenient() -> None:
    assert gsm_decode(b"a\x80\xff") == "a??"  # not septets
    assert gsm_decode(b"\x1bA") == "A"  # no extension symbol: the default character
    assert gsm_decode(b"\x1b\x0d") == "\r"  # CR2 control shows as the default character
    assert gsm_decode(b"\x1b\x1bA") == " A"  # escape to a further table: a space
    assert gsm_decode(b"ab\x1b") == "ab"  # a lone trailing escape is dropped
    assert gsm_decode(b"\x1b\x80") == "?"


def test_length_counts_septets_with_extension_doubled() -> None:
    assert gsm_length("") == 0
    assert gsm_length("a" * 160) == 160
    assert gsm_length("[x]") == 5
    assert gsm_length("привет") is None


@given(gsm_texts)
def test_any_gsm_text_round_trips(text: str) -> None:
    encoded = gsm_encode(text)
    assert gsm_decode(encoded) == text
    assert len(encoded) == gsm_length(text)


@given(st.binary(max_size=300))
def test_decoding_any_octets_never_raises(data: bytes) -> None:
    assert len(gsm_decode(data)) <= len(data)


# --- 7-bit packing ------------------------------------------------------------------------


def test_packing_known_vector() -> None:
    packed = gsm_pack(b"hellohello")
    assert packed == bytes.fromhex("E8329BFD4697D9EC37")
    assert gsm_unpack(packed, 10) == b"hellohello"


def test_packing_after_fill_bits() -> None:
    assert gsm_pack(b"A", fill_bits=1) == b"\x82"
    assert gsm_unpack(b"\x82", 1, fill_bits=1) == b"A"
    assert gsm_pack(b"", fill_bits=0) == b""


def test_eight_septets_fill_seven_octets() -> None:
    assert len(gsm_pack(b"\x7f" * 8)) == 7
    assert gsm_pack(b"\x7f" * 8) == b"\xff" * 7
    assert len(gsm_pack(b"a" * 160)) == 140


def test_fill_bits_align_text_after_a_udh() -> None:
    assert gsm_fill_bits(6) == 1  # 8-bit reference UDH: 48 bits, one fill bit to 49
    assert gsm_fill_bits(7) == 0  # 16-bit reference UDH: 56 bits, already aligned
    assert gsm_fill_bits(0) == 0


def test_packing_refuses_an_octet_that_is_not_a_septet() -> None:
    with pytest.raises(EncodingError) as info:
        gsm_pack(b"ab\x80")
    assert info.value.position == 2


def test_unpacking_more_septets_than_the_octets_hold_is_the_peers_fault() -> None:
    with pytest.raises(RemoteProtocolError) as info:
        gsm_unpack(b"\x00" * 7, 9)
    assert info.value.status == CommandStatus.ESME_RINVMSGLEN
    assert gsm_unpack(b"\x00" * 7, 8) == b"\x00" * 8


@pytest.mark.parametrize("fill_bits", [-1, 7])
def test_fill_bits_out_of_range_is_misuse(fill_bits: int) -> None:
    with pytest.raises(LocalProtocolError):
        gsm_pack(b"a", fill_bits=fill_bits)
    with pytest.raises(LocalProtocolError):
        gsm_unpack(b"a", 1, fill_bits=fill_bits)


@given(st.binary(max_size=200).map(lambda b: bytes(x & 0x7F for x in b)), st.integers(0, 6))
def test_packing_round_trips(septets: bytes, fill_bits: int) -> None:
    packed = gsm_pack(septets, fill_bits=fill_bits)
    assert len(packed) == (7 * len(septets) + fill_bits + 7) // 8
    assert gsm_unpack(packed, len(septets), fill_bits=fill_bits) == septets


# --- data_coding --------------------------------------------------------------------------


def test_each_coding_encodes_as_specified() -> None:
    assert encode_text("Hi €", DataCoding.SMSC_DEFAULT) == b"Hi \x1b\x65"
    assert encode_text("Hi", DataCoding.IA5) == b"Hi"
    assert encode_text("café", DataCoding.LATIN1) == b"caf\xe9"
    assert encode_text("Привет", DataCoding.CYRILLIC) == "Привет".encode("iso8859_5")
    assert encode_text("aЖ", DataCoding.UCS2) == b"\x00a\x04\x16"
    assert encode_text("😀", DataCoding.UCS2) == b"\xd8\x3d\xde\x00"  # a surrogate pair
    assert encode_text("€", 0xF0) == b"\x1b\x65"  # GSM coding group, class 0 (flash)


def test_encoding_refuses_what_does_not_fit_with_position() -> None:
    with pytest.raises(EncodingError) as info:
        encode_text("naïve €", DataCoding.LATIN1)
    assert (info.value.position, info.value.char) == (6, "€")
    with pytest.raises(EncodingError) as info:
        encode_text("café", DataCoding.IA5)
    assert (info.value.position, info.value.char) == (3, "é")
    with pytest.raises(EncodingError) as info:
        encode_text("a\ud800", DataCoding.UCS2)  # a lone surrogate is not UTF-16
    assert info.value.position == 1


def test_encoding_with_replace_never_raises() -> None:
    assert encode_text("café €", DataCoding.IA5, errors="replace") == b"caf? ?"
    assert encode_text("a\ud800", DataCoding.UCS2, errors="replace") == b"\x00a\x00?"


@pytest.mark.parametrize("coding", [DataCoding.BINARY_8BIT, DataCoding.BINARY, 0x05, 0xF4, 0x42])
def test_codings_without_text_refuse_to_encode(coding: int) -> None:
    assert codec_name(coding) is None
    with pytest.raises(EncodingError, match="carries no text"):
        encode_text("x", coding)


def test_decoding_is_lenient_in_every_coding() -> None:
    assert decode_text(b"\x00a\xd8\x3d\x00b", DataCoding.UCS2) == "a\ufffdb"  # lone high
    assert decode_text(b"\xde\x00\x00b", DataCoding.UCS2) == "\ufffdb"  # lone low
    assert decode_text(b"\x00a\x00", DataCoding.UCS2) == "a\ufffd"  # odd trailing octet
    assert decode_text(b"ab\xe9", DataCoding.IA5) == "ab?"
    assert decode_text(b"caf\xe9", DataCoding.LATIN1) == "café"
    assert decode_text(b"\x00\xff", DataCoding.BINARY) == "\x00\xff"  # binary shows as Latin-1
    assert decode_text(b"\x1b\x65", 0xF1) == "€"
    assert decode_text(b"\x04\x16", 0xE0) == "Ж"


@given(st.binary(max_size=300), st.integers(0, 255))
def test_decode_text_never_raises(data: bytes, coding: int) -> None:
    assert isinstance(decode_text(data, coding), str)


@given(st.text(max_size=300))  # Hypothesis text has no lone surrogates
def test_any_text_round_trips_through_ucs2(text: str) -> None:
    encoded = encode_text(text, DataCoding.UCS2)
    assert decode_text(encoded, DataCoding.UCS2) == text
    assert count_units(text, DataCoding.UCS2) == len(encoded) // 2


def test_choose_coding_picks_gsm_when_everything_fits_else_ucs2() -> None:
    assert choose_coding("Hello [world] €5") == DataCoding.SMSC_DEFAULT
    assert choose_coding("café ñ Ü") == DataCoding.SMSC_DEFAULT
    assert choose_coding("") == DataCoding.SMSC_DEFAULT
    assert choose_coding("Привет") == DataCoding.UCS2
    assert choose_coding("ok 👍") == DataCoding.UCS2
    assert choose_coding("façade") == DataCoding.UCS2  # fits Latin-1, never chosen


def test_count_units_per_coding() -> None:
    assert count_units("a€", DataCoding.SMSC_DEFAULT) == 3
    assert count_units("a€", DataCoding.UCS2) == 2
    assert count_units("a😀", DataCoding.UCS2) == 3
    assert count_units("café", DataCoding.LATIN1) == 4
    with pytest.raises(EncodingError):
        count_units("😀", DataCoding.SMSC_DEFAULT)
