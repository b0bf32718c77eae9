"""Text codings of short messages: GSM 03.38 (3GPP TS 23.038), IA5, Latin-1 and UCS-2.

GSM text is handled unpacked, one septet per octet, as SMPP data_coding 0 carries it;
``gsm_pack`` / ``gsm_unpack`` convert to and from the packed 7-bit air format.
Only the default alphabet and its basic extension table are supported (no national
language shift tables).

Policies: encoding is strict (``EncodingError`` names the first character that does not
fit and its index) unless ``errors="replace"``, which substitutes ``?``. Decoding never
raises: GSM and IA5 replace unknown codes with ``?`` (so the text stays representable in
its own coding), UCS-2 replaces a lone surrogate or an odd trailing octet with U+FFFD,
and a data_coding without a text codec (binary, reserved) decodes as Latin-1.
"""

from __future__ import annotations

import codecs
import re
from typing import Final, Literal

from smppcore.constants import CommandStatus, DataCoding
from smppcore.errors import EncodingError, LocalProtocolError, RemoteProtocolError

Errors = Literal["strict", "replace"]

ESC: Final = 0x1B

# Default alphabet, code 0x00..0x7F; 0x1B (escape) is a placeholder and is never encoded.
_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Basic extension table: ESC + code.
_EXTENSION: Final = {
    0x0A: "\f",
    0x14: "^",
    0x28: "{",
    0x29: "}",
    0x2F: "\\",
    0x3C: "[",
    0x3D: "~",
    0x3E: "]",
    0x40: "|",
    0x65: "€",
}
assert len(_BASIC) == 128

# str.translate tables. Unencodable code points below 0x80 map to a non-ASCII marker, so
# "the result is ASCII" means "every character was encodable"; others are left as they are.
_ENCODE: Final[dict[int, str]] = {cp: "\x80" for cp in range(0x80)}
_ENCODE.update({ord(ch): chr(code) for code, ch in enumerate(_BASIC) if code != ESC})
_ENCODE.update({ord(ch): chr(ESC) + chr(code) for code, ch in _EXTENSION.items()})
_DECODE: Final[dict[int, str]] = {code: ch for code, ch in enumerate(_BASIC)}
_DECODE.update({code: "?" for code in range(0x80, 0x100)})
_DECODE_EXT: Final[dict[int, str]] = {**_DECODE, **_EXTENSION, ESC: " "}


def _first_unencodable(text: str, encodable: dict[int, str]) -> EncodingError:
    for position, char in enumerate(text):
        if encodable.get(ord(char), "\x80") == "\x80":
            return EncodingError(
                f"character {char!r} (U+{ord(char):04X}) at index {position} "
                "is not in the GSM 03.38 alphabet",
                position=position,
                char=char,
            )
    raise AssertionError("no unencodable character")  # pragma: no cover


# GSM text on the C charmap codec (one C call each way instead of a per-character dict).
# Decode: a 256-character table; ESC stays "\x1b" (no GSM character is U+001B), and an
# ESC pair is resolved afterwards by the character its second octet decoded to.
_DECODE_TABLE: Final = "".join(_BASIC[i] if i < 0x80 else "?" for i in range(256))
_AFTER_ESC: Final = {_BASIC[code]: ch for code, ch in _EXTENSION.items()} | {"\x1b": " "}
_ESC_PAIR: Final = re.compile("\x1b(.?)", re.DOTALL)


def _after_esc(m: re.Match[str]) -> str:
    c: str = m[1]
    return _AFTER_ESC.get(c, c)


# Encode: charmap_build makes a fast EncodingMap only when table[0] is U+0000, so the map
# writes "staged" octets that one bytes.translate moves to GSM codes: '@' (GSM 0x00) is
# staged at 0x1B (the escape, which no character has), U+0000 lands on 0xFF (not encodable),
# the ten extension characters are staged at 0x80..0x89 and expanded to ESC + code.
_EXT_ITEMS: Final = sorted(_EXTENSION.items())
_stage = ["\ufffe"] * 256
_stage[0] = "\x00"
for _code, _ch in enumerate(_BASIC):
    if _code != ESC:
        _stage[ESC if _code == 0 else _code] = _ch
for _k, (_code, _ch) in enumerate(_EXT_ITEMS):
    _stage[0x80 + _k] = _ch
_ENCODING_MAP: Final = codecs.charmap_build("".join(_stage))
_fix = bytearray(range(256))
_fix[ESC], _fix[0] = 0x00, 0xFF
_FROM_STAGE: Final = bytes(_fix)
_EXPAND: Final = (
    *((0x80 + k, bytes((0x80 + k,)), bytes((ESC, code))) for k, (code, _) in enumerate(_EXT_ITEMS)),
    (0xFF, b"\xff", b"?"),
)


def gsm_encode(text: str, *, errors: Errors = "strict") -> bytes:
    """Encode to unpacked GSM septets; extension characters become ESC + code."""
    try:
        out = codecs.charmap_encode(text, errors, _ENCODING_MAP)[0].translate(_FROM_STAGE)
    except UnicodeEncodeError:
        raise _first_unencodable(text, _ENCODE) from None
    if out.isascii():
        return out
    if errors != "replace" and 0xFF in out:
        raise _first_unencodable(text, _ENCODE)
    for octet, staged, pair in _EXPAND:
        if octet in out:  # an int needle: a bytes needle costs a raised-and-caught TypeError
            out = out.replace(staged, pair)
    return out


def gsm_decode(data: bytes) -> str:
    """Decode unpacked GSM septets, leniently.

    Octets above 0x7F become ``?``; ESC + a code missing from the extension table gives
    the default-alphabet character (TS 23.038 §6.2.1.1), ESC ESC gives a space, and a
    lone ESC at the end is dropped (the rest of a pair that was cut off).
    """
    text = codecs.charmap_decode(data, "strict", _DECODE_TABLE)[0]
    if "\x1b" in text:
        return _ESC_PAIR.sub(_after_esc, text)
    return text


def gsm_length(text: str) -> int | None:
    """Septets needed for ``text`` (extension characters count 2), or None if it does not fit."""
    out = text.translate(_ENCODE)
    return len(out) if out.isascii() else None


def gsm_fill_bits(udh_octets: int) -> int:
    """Fill bits after a UDH of ``udh_octets`` (UDHL included) so text starts on a septet."""
    return (7 - (udh_octets * 8) % 7) % 7


def gsm_pack(septets: bytes, *, fill_bits: int = 0) -> bytes:
    """Pack septets into octets, least significant bit first, after ``fill_bits`` zero bits."""
    _check_fill_bits(fill_bits)
    if not septets.isascii():
        index = next(i for i, septet in enumerate(septets) if septet > 0x7F)
        raise EncodingError(
            f"octet 0x{septets[index]:02X} at index {index} is not a septet", position=index
        )
    packed = bytearray()
    for start in range(0, len(septets), 8):  # 8 septets fill exactly 7 octets
        group = 0
        for shift, septet in enumerate(septets[start : start + 8]):
            group |= septet << (7 * shift)
        packed += group.to_bytes(7, "little")
    size = (7 * len(septets) + fill_bits + 7) // 8
    if fill_bits:
        return (int.from_bytes(packed, "little") << fill_bits).to_bytes(size, "little")
    return bytes(packed[:size])


def gsm_unpack(data: bytes, count: int, *, fill_bits: int = 0) -> bytes:
    """Unpack ``count`` septets that follow ``fill_bits`` bits of ``data``.

    Raises ``RemoteProtocolError`` (ESME_RINVMSGLEN) when ``data`` is too short.
    """
    _check_fill_bits(fill_bits)
    if count < 0:
        raise LocalProtocolError(f"septet count {count} is negative")
    if 7 * count + fill_bits > 8 * len(data):
        raise RemoteProtocolError(
            f"{len(data)} octets cannot hold {count} septets after {fill_bits} fill bits",
            status=CommandStatus.ESME_RINVMSGLEN,
        )
    if fill_bits:
        data = (int.from_bytes(data, "little") >> fill_bits).to_bytes(len(data), "little")
    septets = bytearray()
    for start in range(0, len(data), 7):
        group = int.from_bytes(data[start : start + 7], "little")
        septets += bytes((group >> (7 * shift)) & 0x7F for shift in range(8))
    return bytes(septets[:count])


def _check_fill_bits(fill_bits: int) -> None:
    if not 0 <= fill_bits <= 6:
        raise LocalProtocolError(f"fill_bits must be 0..6, not {fill_bits}")


def codec_name(data_coding: int) -> str | None:
    """The codec of a data_coding: ``"gsm"``, a Python codec name, or None (no text).

    Besides the SMPP values 0, 1, 3, 6, 7 and 8, the GSM data coding groups
    0xC0-0xDF (GSM), 0xE0-0xEF (UCS-2) and 0xF0-0xF3 (GSM with message class) are text.
    """
    if data_coding == 0 or 0xC0 <= data_coding <= 0xDF or 0xF0 <= data_coding <= 0xF3:
        return "gsm"
    if data_coding == 8 or 0xE0 <= data_coding <= 0xEF:
        return "utf-16-be"
    return _OCTET_CODECS.get(data_coding)


_OCTET_CODECS: Final = {1: "ascii", 3: "latin-1", 6: "iso8859_5", 7: "iso8859_8"}


def encode_text(text: str, data_coding: int, *, errors: Errors = "strict") -> bytes:
    """Encode ``text`` for ``data_coding``; UCS-2 is UTF-16-BE, so emoji travel as pairs.

    Raises ``EncodingError`` for a character that does not fit (unless ``errors="replace"``)
    and for a data_coding that carries no text.
    """
    codec = codec_name(data_coding)
    if codec == "gsm":
        return gsm_encode(text, errors=errors)
    if codec is None:
        raise EncodingError(f"data_coding 0x{data_coding:02X} carries no text")
    try:
        return text.encode(codec, errors)
    except UnicodeEncodeError as exc:
        char = text[exc.start]
        raise EncodingError(
            f"character {char!r} (U+{ord(char):04X}) at index {exc.start} "
            f"does not fit data_coding 0x{data_coding:02X}",
            position=exc.start,
            char=char,
        ) from None


def decode_text(data: bytes, data_coding: int) -> str:
    """Decode a short message; never raises (see the module policies)."""
    codec = codec_name(data_coding)
    if codec == "gsm":
        return gsm_decode(data)
    if codec == "ascii":
        return data.decode("latin-1").translate(_DECODE_IA5)
    return data.decode(codec or "latin-1", "replace")


_DECODE_IA5: Final = {code: "?" for code in range(0x80, 0x100)}


def choose_coding(text: str) -> DataCoding:
    """GSM (0) when every character fits, else UCS-2 (8).

    Latin-1 is never chosen: many handsets and carriers mis-render data_coding 3.
    """
    return DataCoding.SMSC_DEFAULT if gsm_length(text) is not None else DataCoding.UCS2


def count_units(text: str, data_coding: int) -> int:
    """Units ``text`` takes: GSM septets, UTF-16 code units for UCS-2, else octets.

    Raises ``EncodingError`` when ``text`` does not fit ``data_coding``.
    """
    encoded = encode_text(text, data_coding)
    return len(encoded) // 2 if codec_name(data_coding) == "utf-16-be" else len(encoded)
