"""Messages to send, pre-encoded once and patched per message.

Each mix entry becomes a few :class:`Variant`\\ s (one text each), encoded by
:mod:`smppcore.codec` into submit_sm PDUs with placeholder addresses. Sending a message
then costs no encoding: the PDU bytes are the template's pieces joined around the sequence
number, the random digits of the two addresses and (for UDH parts) the concatenation
reference — all of fixed length, so command_length never changes.
"""

from __future__ import annotations

import random
import struct
from bisect import bisect_right
from itertools import accumulate
from typing import Final

from simulator.load.config import Coding, MixEntry, Numbers, Traffic
from smppcore.codec import encode
from smppcore.constants import DataCoding, EsmClass, RegisteredDelivery
from smppcore.errors import SmppError
from smppcore.pdu import SubmitSm
from smppcore.segment import MAX_PAYLOAD, split
from smppcore.text import encode_text
from smppcore.tlv import Tag, Tlv

CODINGS: Final[dict[Coding, int]] = {
    "gsm7": int(DataCoding.SMSC_DEFAULT),
    "ucs2": int(DataCoding.UCS2),
    "latin1": int(DataCoding.LATIN1),
    "ascii": int(DataCoding.IA5),
}

_GSM_WORDS: Final = (
    "hello", "your", "code", "is", "order", "shipped", "today", "meeting", "at", "10:30",
    "please", "confirm", "reply", "STOP", "to", "opt", "out", "balance", "EUR", "12.40",
    "thanks!", "see", "you", "soon", "delivery", "window", "(9-11)", "ref", "#4711", "ok?",
)  # fmt: skip
_UCS2_WORDS: Final = (
    "Καλημέρα", "привет", "こんにちは", "مرحبا", "😀", "👍", "🎉", "cafe\u0301", "Grüße",
    "你好", "שלום", "🚀", "ok", "✓", "€5",
)  # fmt: skip
_LATIN1_WORDS: Final = ("café", "Grüße", "señor", "naïve", "£10", "déjà", "vu", "ok")


def generate_text(coding: Coding, length: int, rng: random.Random) -> str:
    """A text of ``length`` characters in ``coding`` (UCS-2 ones carry emoji)."""
    words = {"gsm7": _GSM_WORDS, "ascii": _GSM_WORDS, "latin1": _LATIN1_WORDS}.get(
        coding, _UCS2_WORDS
    )
    out: list[str] = []
    size = 0
    while size < length:
        word = rng.choice(words)
        out.append(word)
        size += len(word) + 1
    text = " ".join(out)[:length]
    if coding == "ucs2" and "😀" not in text and length >= 2:
        text = text[: length - 1] + "😀"
    return text


class Segment:
    """One submit_sm of a message: the static pieces around the patched fields."""

    __slots__ = ("has_ref", "head", "piece_a", "piece_b", "piece_c", "piece_d")

    def __init__(
        self, pdu: bytes, src_at: int, src_len: int, dst_at: int, dst_len: int, ref_at: int
    ) -> None:
        self.head = pdu[:12]  # command_length, command_id, command_status
        self.piece_a = pdu[16:src_at]
        self.piece_b = pdu[src_at + src_len : dst_at]
        if ref_at < 0:
            self.piece_c = pdu[dst_at + dst_len :]
            self.piece_d = b""
            self.has_ref = False
        else:
            self.piece_c = pdu[dst_at + dst_len : ref_at]
            self.piece_d = pdu[ref_at + 1 :]
            self.has_ref = True


class Variant:
    """One text of a mix entry, as the submit_sm PDUs it takes."""

    __slots__ = ("segments", "template", "text")

    def __init__(self, text: str, segments: list[Segment]) -> None:
        self.text = text
        self.segments = segments
        #: For one segment: its PDU as a bytes %-format of the sequence number (``%b``,
        #: four octets) and the random numbers of the two addresses (``%0Nd``), or None.
        self.template: bytes | None = None


_SEQ = struct.Struct(">I")


class MessageFactory:
    """Builds the wire bytes of each message: ``next(seq)`` → list of PDU byte strings."""

    def __init__(self, traffic: Traffic, seed: int | str) -> None:
        self.traffic = traffic
        rng = random.Random(f"load:{seed}")
        self._rng = rng
        self.variants: list[list[Variant]] = [
            build_variants(entry, traffic, rng) for entry in traffic.mix
        ]
        weights = [e.weight for e in traffic.mix]
        self._cumulative = list(accumulate(weights))
        self._single = len([w for w in weights if w > 0]) == 1
        self._only = next(i for i, w in enumerate(weights) if w > 0)
        self._src_fmt, self._src_mod = _digits_format(traffic.source)
        self._dst_fmt, self._dst_mod = _digits_format(traffic.destination)
        self._ref = rng.randrange(256)
        #: Whether :meth:`one` may stand for :meth:`message`: every message is one
        #: submit_sm and both addresses have random digits.
        self.single_part = bool(self._src_mod and self._dst_mod) and all(
            len(v.segments) == 1 for group in self.variants for v in group
        )
        if self.single_part:
            for group in self.variants:
                for v in group:
                    s = v.segments[0]
                    v.template = b"".join(
                        (
                            _escape(s.head),
                            b"%b",
                            _escape(s.piece_a),
                            self._src_fmt,
                            _escape(s.piece_b),
                            self._dst_fmt,
                            _escape(s.piece_c),
                        )
                    )
        self._bits = [len(group).bit_length() for group in self.variants]
        self._templates = [[v.template or b"" for v in group] for group in self.variants]

    def parts_per_message(self) -> float:
        """The mean number of submit_sm per message, by the mix's weights."""
        total = self._cumulative[-1]
        mean = 0.0
        for entry, variants in zip(self.traffic.mix, self.variants, strict=True):
            mean += entry.weight / total * sum(len(v.segments) for v in variants) / len(variants)
        return mean

    def one(self, seq: int) -> bytes:
        """The PDU of one message when :attr:`single_part`: what ``message(seq)[0]`` is.

        The same random draws in the same order as :meth:`message` (``randrange(n)`` is
        ``getrandbits`` of n's bit length until below n), so the traffic of a seed does not
        depend on the path; the numbers go into the template as floats, which ``%d``
        truncates as ``int()`` does."""
        rng = self._rng
        if self._single:
            at = self._only
        else:
            at = bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
        templates = self._templates[at]
        n = len(templates)
        if n > 1:
            bits = self._bits[at]
            getrandbits = rng.getrandbits
            r = getrandbits(bits)
            while r >= n:
                r = getrandbits(bits)
            template = templates[r]
        else:
            template = templates[0]
        random = rng.random
        return template % (_SEQ.pack(seq), random() * self._src_mod, random() * self._dst_mod)

    def message(self, seq: int) -> list[bytes]:
        """The PDUs of one message, with sequence numbers ``seq``, ``seq + 1``, ...

        (the caller makes sure they do not wrap past 0x7FFFFFFF)."""
        rng = self._rng
        if self._single:
            group = self.variants[self._only]
        else:
            group = self.variants[
                bisect_right(self._cumulative, rng.random() * self._cumulative[-1])
            ]
        variant = group[rng.randrange(len(group))] if len(group) > 1 else group[0]
        src = self._src_fmt % int(rng.random() * self._src_mod) if self._src_mod else b""
        dst = self._dst_fmt % int(rng.random() * self._dst_mod) if self._dst_mod else b""
        segments = variant.segments
        if len(segments) == 1:
            s = segments[0]
            return [b"".join((s.head, _SEQ.pack(seq), s.piece_a, src, s.piece_b, dst, s.piece_c))]
        self._ref = ref = (self._ref + 1) & 0xFF
        refb = bytes((ref,))
        out = []
        for s in segments:
            if s.has_ref:
                out.append(
                    b"".join(
                        (
                            s.head,
                            _SEQ.pack(seq),
                            s.piece_a,
                            src,
                            s.piece_b,
                            dst,
                            s.piece_c,
                            refb,
                            s.piece_d,
                        )
                    )
                )
            else:
                out.append(
                    b"".join((s.head, _SEQ.pack(seq), s.piece_a, src, s.piece_b, dst, s.piece_c))
                )
            seq = seq + 1 if seq < 0x7FFFFFFF else 1
        return out


def _escape(piece: bytes) -> bytes:
    """``piece`` as literal text of a bytes %-format."""
    return piece.replace(b"%", b"%%")


def _digits_format(numbers: Numbers) -> tuple[bytes, int]:
    if numbers.digits == 0:
        return b"", 0
    return b"%%0%dd" % numbers.digits, 10**numbers.digits


def build_variants(entry: MixEntry, traffic: Traffic, rng: random.Random) -> list[Variant]:
    """Encode the texts of ``entry``. Raises ValueError saying what cannot be sent."""
    coding = CODINGS[entry.coding]
    texts = list(entry.texts) or [
        generate_text(entry.coding, entry.length, rng) for _ in range(traffic.variants)
    ]
    return [Variant(text, encode_message(text, coding, entry.long, traffic)) for text in texts]


def encode_message(text: str, coding: int, long: str, traffic: Traffic) -> list[Segment]:
    """The submit_sm templates of ``text``: one, several UDH parts, or one with a payload."""
    try:
        parts = split(text, coding, mode="udh", ref=0)
    except SmppError as exc:
        raise ValueError(str(exc)) from None
    except UnicodeError as exc:
        raise ValueError(f"text cannot be written in data_coding {coding}: {exc}") from None
    src = traffic.source
    dst = traffic.destination
    common = {
        "service_type": traffic.service_type,
        "source_addr_ton": src.ton,
        "source_addr_npi": src.npi,
        "source_addr": src.prefix + "0" * src.digits,
        "dest_addr_ton": dst.ton,
        "dest_addr_npi": dst.npi,
        "destination_addr": dst.prefix + "0" * dst.digits,
        "priority_flag": traffic.priority,
        "registered_delivery": int(RegisteredDelivery.FINAL) if traffic.registered_delivery else 0,
        "data_coding": coding,
    }
    pdus: list[tuple[SubmitSm, int]] = []
    if len(parts) > 1 and long == "payload":
        whole = encode_text(text, coding)
        if len(whole) > MAX_PAYLOAD:
            raise ValueError(f"{len(whole)} octets exceed message_payload's {MAX_PAYLOAD}")
        pdus.append(
            (SubmitSm(**common, tlvs=(Tlv(Tag.MESSAGE_PAYLOAD, whole),)), -1)  # type: ignore[arg-type]
        )
    else:
        for part in parts:
            esm = int(EsmClass.UDHI) if part.esm_class_udhi else 0
            pdu = SubmitSm(**common, esm_class=esm, short_message=part.short_message)  # type: ignore[arg-type]
            pdus.append((pdu, 3 if part.esm_class_udhi else -1))
    out = []
    for pdu, ref_in_sm in pdus:
        wire = encode(pdu)
        src_at = 16 + len(traffic.service_type) + 1 + 2 + len(src.prefix)
        dst_at = src_at + src.digits + 1 + 2 + len(dst.prefix)
        ref_at = -1
        if ref_in_sm >= 0:
            ref_at = len(wire) - len(pdu.short_message) + ref_in_sm
            assert wire[ref_at - 3 : ref_at] == b"\x05\x00\x03", "UDH not where expected"
        out.append(Segment(wire, src_at, src.digits, dst_at, dst.digits, ref_at))
    return out
