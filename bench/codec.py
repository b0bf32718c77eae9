"""PDU encode/decode speed: smppcore against aiosmpplib's PDU classes, in the same run.

Run from the repository root:  .venv/bin/python bench/codec.py [--quick] [--rounds N]

Three PDUs are timed in both directions on both sides: a realistic submit_sm, its
submit_sm_resp, and a delivery-receipt deliver_sm. The last line of output is one JSON object
whose headline figures are ``decode_ratio_vs_aiosmpplib`` and ``encode_ratio_vs_aiosmpplib``
(aiosmpplib time / smppcore time, on submit_sm; higher is better for smppcore; issue target:
decode >= 10, encode >= 5).

Fairness rules
--------------
1. Same work on both sides, from the same inputs to the same outputs.
2. "encode" = from the message's plain fields (text as ``str``, addresses as ``str``, TLV
   values typed) to wire bytes, once per message, as in real life where each message is
   encoded once. aiosmpplib builds ``PhoneNumber``s, ``OptionalParam``s and a
   ``SubmitSm``/``DeliverSm``/``SubmitSmResp`` and calls ``.pdu()``; smppcore calls
   ``encode_text`` (GSM 03.38), ``tlv(...)`` for each TLV, builds the struct and calls
   ``encode``. aiosmpplib's ``SubmitSm.pdu()`` caches the encoded text on the object
   (``_encoded_message``), so calling ``pdu()`` again on one object is a cache hit and is NOT
   the encode figure.
3. "encode_only" = that cache-hit case, reported separately so nobody is misled: aiosmpplib
   ``pdu()`` on an object already encoded once (text cached; header and body still rebuilt)
   against smppcore ``encode()`` of a prebuilt struct whose short_message is already bytes.
   Neither side encodes text there; it measures only the PDU serialiser.
4. "decode" = from one whole frame (bytes) to fields with the text as ``str`` and TLV values
   typed. aiosmpplib: ``SmppMessage.parse_header`` + ``MESSAGE_TYPE_MAP[...]`` +
   ``from_pdu(frame, header, "gsm0338", None)`` (as its ESME does; from_pdu decodes the text
   and types the TLVs). smppcore: ``decode(frame)`` + ``decode_text(short_message,
   data_coding)``, plus ``pdu.tlv(...)`` for receipted_message_id and message_state on the
   receipt (aiosmpplib types its TLVs eagerly, smppcore lazily, so we pay for it here).
   Neither side parses the receipt text (both libraries do that in a separate, later step).
5. Realistic inputs: international 447700900123 -> 4915112345678 (TON 1, NPI 1),
   registered_delivery=1, a ~120-character GSM text with one extension character ('€');
   the receipt carries the Appendix B text plus receipted_message_id and message_state TLVs.
6. Correctness first: before any timing, both encoders must produce identical bytes, and each
   side's bytes must decode on the other side to the same fields (asserted).
7. Noise (the machine is shared): the two sides run in alternating rounds (the order flips
   every round), each round lasts at least --min-time seconds (0.2 s by default), and the
   best (minimum) of --rounds rounds (7 by default) per side is reported. The garbage
   collector is disabled while timing (as timeit does), which if anything favours
   aiosmpplib, whose dataclasses are GC-tracked where smppcore's structs are not.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from aiosmpplib.protocol import MESSAGE_TYPE_MAP, SmppMessage
from aiosmpplib.protocol import DeliverSm as ADeliverSm
from aiosmpplib.protocol import SubmitSm as ASubmitSm
from aiosmpplib.protocol import SubmitSmResp as ASubmitSmResp
from aiosmpplib.state import (
    MESSAGE_STATE,
    NPI,
    RECEIPTED_MESSAGE_ID,
    TON,
    OptionalParam,
    PhoneNumber,
)

from smppcore.codec import decode, encode
from smppcore.constants import MessageState
from smppcore.pdu import DeliverSm, SubmitSm, SubmitSmResp
from smppcore.receipt import Receipt, format_receipt
from smppcore.text import decode_text, encode_text
from smppcore.tlv import Tag, tlv

# --- inputs ------------------------------------------------------------------------------

SEQ = 4711
SRC = "447700900123"
DST = "4915112345678"
TEXT = (
    "Hi Anna, your order 58213 has shipped and arrives Thursday between 9:00 and 13:00. "
    "Total paid: 42.50€. Reply STOP to opt out."
)
MESSAGE_ID = "a3f1c9e07b2d4e86"
A_ENCODING = "gsm0338"  # aiosmpplib ESME's default_encoding, passed to from_pdu as it does
RECEIPT_TEXT = format_receipt(
    Receipt(
        message_id=MESSAGE_ID,
        state=MessageState.DELIVERED,
        sub=1,
        dlvrd=1,
        submit_date=datetime(2026, 5, 9, 12, 0, tzinfo=UTC),
        done_date=datetime(2026, 5, 9, 12, 1, tzinfo=UTC),
        error=0,
        text=TEXT,
    )
)
DELIVERED = int(MessageState.DELIVERED)

_A_TON, _A_NPI = TON.INTERNATIONAL, NPI.ISDN


# --- encode, once per message ------------------------------------------------------------


def a_encode_submit() -> bytes:
    return ASubmitSm(
        sequence_num=SEQ,
        short_message=TEXT,
        source=PhoneNumber(SRC, _A_TON, _A_NPI),
        destination=PhoneNumber(DST, _A_TON, _A_NPI),
        registered_delivery=1,
    ).pdu()


def s_encode_submit() -> bytes:
    return encode(
        SubmitSm(
            sequence_number=SEQ,
            source_addr_ton=1,
            source_addr_npi=1,
            source_addr=SRC,
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr=DST,
            registered_delivery=1,
            data_coding=0,
            short_message=encode_text(TEXT, 0),
        )
    )


def a_encode_resp() -> bytes:
    return ASubmitSmResp(sequence_num=SEQ, message_id=MESSAGE_ID).pdu()


def s_encode_resp() -> bytes:
    return encode(SubmitSmResp(sequence_number=SEQ, message_id=MESSAGE_ID))


def a_encode_receipt() -> bytes:
    return ADeliverSm(
        sequence_num=SEQ,
        short_message=RECEIPT_TEXT,
        source=PhoneNumber(DST, _A_TON, _A_NPI),
        destination=PhoneNumber(SRC, _A_TON, _A_NPI),
        esm_class=0x04,
        registered_delivery=0,
        optional_params=[
            OptionalParam(RECEIPTED_MESSAGE_ID, MESSAGE_ID),
            OptionalParam(MESSAGE_STATE, DELIVERED),
        ],
    ).pdu()


def s_encode_receipt() -> bytes:
    return encode(
        DeliverSm(
            sequence_number=SEQ,
            source_addr_ton=1,
            source_addr_npi=1,
            source_addr=DST,
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr=SRC,
            esm_class=0x04,
            registered_delivery=0,
            data_coding=0,
            short_message=encode_text(RECEIPT_TEXT, 0),
            tlvs=(
                tlv(Tag.RECEIPTED_MESSAGE_ID, MESSAGE_ID),
                tlv(Tag.MESSAGE_STATE, DELIVERED),
            ),
        )
    )


# --- the frames every decoder reads (checked identical on both sides below) -------------

SUBMIT_FRAME = s_encode_submit()
RESP_FRAME = s_encode_resp()
RECEIPT_FRAME = s_encode_receipt()


# --- decode -------------------------------------------------------------------------------


def a_decode(frame: bytes) -> SmppMessage:
    header = SmppMessage.parse_header(frame)
    return MESSAGE_TYPE_MAP[header.smpp_command].from_pdu(frame, header, A_ENCODING, None)


def s_decode_sm(frame: bytes) -> tuple[object, str]:
    pdu = decode(frame)
    return pdu, decode_text(pdu.short_message, pdu.data_coding)  # type: ignore[attr-defined]


def s_decode_resp(frame: bytes) -> object:
    return decode(frame)


def s_decode_receipt(frame: bytes) -> tuple[object, str, object, object]:
    pdu = decode(frame)
    return (
        pdu,
        decode_text(pdu.short_message, pdu.data_coding),  # type: ignore[attr-defined]
        pdu.tlv(Tag.RECEIPTED_MESSAGE_ID),
        pdu.tlv(Tag.MESSAGE_STATE),
    )


# --- correctness, before any timing ----------------------------------------------------


def verify() -> None:
    # Both encoders write the very same octets.
    assert a_encode_submit() == SUBMIT_FRAME, "submit_sm bytes differ"
    assert a_encode_resp() == RESP_FRAME, "submit_sm_resp bytes differ"
    assert a_encode_receipt() == RECEIPT_FRAME, "deliver_sm bytes differ"
    assert len(encode_text(TEXT, 0)) == len(TEXT) + 1  # exactly one extension character

    # submit_sm: aiosmpplib's bytes through smppcore, smppcore's bytes through aiosmpplib.
    p, text = s_decode_sm(a_encode_submit())
    assert isinstance(p, SubmitSm)
    assert text == TEXT
    assert (p.sequence_number, p.source_addr, p.destination_addr) == (SEQ, SRC, DST)
    assert (p.source_addr_ton, p.source_addr_npi, p.dest_addr_ton, p.dest_addr_npi) == (1, 1, 1, 1)
    assert (p.registered_delivery, p.data_coding, p.esm_class, p.tlvs) == (1, 0, 0, ())
    a = a_decode(s_encode_submit())
    assert isinstance(a, ASubmitSm)
    assert (a.short_message, a.sequence_num) == (TEXT, SEQ)
    assert (a.source.number, a.source.ton, a.source.npi) == (SRC, 1, 1)
    assert (a.destination.number, a.destination.ton, a.destination.npi) == (DST, 1, 1)
    assert (a.registered_delivery, a.encoding, a.esm_class) == (1, None, 0)
    assert a.optional_params == []

    # submit_sm_resp
    r = s_decode_resp(a_encode_resp())
    assert isinstance(r, SubmitSmResp)
    assert (r.sequence_number, r.command_status, r.message_id) == (SEQ, 0, MESSAGE_ID)
    ar = a_decode(s_encode_resp())
    assert isinstance(ar, ASubmitSmResp)
    assert (ar.sequence_num, ar.command_status, ar.message_id) == (SEQ, 0, MESSAGE_ID)

    # deliver_sm receipt
    d, text, rid, state = s_decode_receipt(a_encode_receipt())
    assert isinstance(d, DeliverSm)
    assert text == RECEIPT_TEXT
    assert (d.esm_class, d.source_addr, d.destination_addr) == (0x04, DST, SRC)
    assert (rid, state) == (MESSAGE_ID, DELIVERED)
    ad = a_decode(s_encode_receipt())
    assert isinstance(ad, ADeliverSm)
    assert ad.short_message == RECEIPT_TEXT
    assert ad.is_receipt()
    assert (ad.source.number, ad.destination.number) == (DST, SRC)
    params = {o.tag: o.value for o in ad.optional_params or []}
    assert params == {RECEIPTED_MESSAGE_ID: MESSAGE_ID, MESSAGE_STATE: DELIVERED}, params


# --- timing ---------------------------------------------------------------------------------

_V = TypeVar("_V")

# Each timer runs its body ``n`` times and returns the elapsed seconds. The body is one
# call of the function measured; the loop and call overhead is the same on both sides.


def _timer_call(fn: Callable[[], object]) -> Callable[[int], float]:
    def run(n: int) -> float:
        it = range(n)
        t0 = time.perf_counter()
        for _ in it:
            fn()
        return time.perf_counter() - t0

    return run


def _timer_arg(fn: Callable[[_V], object], arg: _V) -> Callable[[int], float]:
    def run(n: int) -> float:
        it = range(n)
        t0 = time.perf_counter()
        for _ in it:
            fn(arg)
        return time.perf_counter() - t0

    return run


def _prebuilt() -> dict[str, tuple[Callable[[], bytes], Callable[[], bytes]]]:
    """Bound methods for the encode_only (cache-hit) case; smppcore gets prebuilt structs."""
    a_submit = ASubmitSm(
        sequence_num=SEQ,
        short_message=TEXT,
        source=PhoneNumber(SRC, _A_TON, _A_NPI),
        destination=PhoneNumber(DST, _A_TON, _A_NPI),
        registered_delivery=1,
    )
    a_submit.pdu()  # fills _encoded_message: later calls are cache hits
    a_resp = ASubmitSmResp(sequence_num=SEQ, message_id=MESSAGE_ID)
    a_receipt = ADeliverSm(
        sequence_num=SEQ,
        short_message=RECEIPT_TEXT,
        source=PhoneNumber(DST, _A_TON, _A_NPI),
        destination=PhoneNumber(SRC, _A_TON, _A_NPI),
        esm_class=0x04,
        registered_delivery=0,
        optional_params=[
            OptionalParam(RECEIPTED_MESSAGE_ID, MESSAGE_ID),
            OptionalParam(MESSAGE_STATE, DELIVERED),
        ],
    )
    a_receipt.pdu()
    s_submit, s_resp, s_receipt = decode(SUBMIT_FRAME), decode(RESP_FRAME), decode(RECEIPT_FRAME)
    pairs = {
        "submit_sm": (a_submit.pdu, lambda: encode(s_submit)),
        "submit_sm_resp": (a_resp.pdu, lambda: encode(s_resp)),
        "deliver_sm": (a_receipt.pdu, lambda: encode(s_receipt)),
    }
    for name, (a_fn, s_fn) in pairs.items():
        assert a_fn() == s_fn(), f"encode_only {name}: bytes differ"
    return pairs


def cases() -> list[tuple[str, str, Callable[[int], float], Callable[[int], float]]]:
    """(pdu, operation, aiosmpplib timer, smppcore timer)."""
    pre = _prebuilt()
    # encode_only binds smppcore's encode() directly to the struct (no lambda layer) so the
    # call overhead matches aiosmpplib's bound pdu() method.
    s_submit, s_resp, s_receipt = decode(SUBMIT_FRAME), decode(RESP_FRAME), decode(RECEIPT_FRAME)
    sub_a, resp_a, rcpt_a = pre["submit_sm"][0], pre["submit_sm_resp"][0], pre["deliver_sm"][0]
    call, arg, rf = _timer_call, _timer_arg, RECEIPT_FRAME
    return [
        ("submit_sm", "encode", call(a_encode_submit), call(s_encode_submit)),
        ("submit_sm", "decode", arg(a_decode, SUBMIT_FRAME), arg(s_decode_sm, SUBMIT_FRAME)),
        ("submit_sm", "encode_only", call(sub_a), arg(encode, s_submit)),
        ("submit_sm_resp", "encode", call(a_encode_resp), call(s_encode_resp)),
        ("submit_sm_resp", "decode", arg(a_decode, RESP_FRAME), arg(s_decode_resp, RESP_FRAME)),
        ("submit_sm_resp", "encode_only", call(resp_a), arg(encode, s_resp)),
        ("deliver_sm", "encode", call(a_encode_receipt), call(s_encode_receipt)),
        ("deliver_sm", "decode", arg(a_decode, rf), arg(s_decode_receipt, rf)),
        ("deliver_sm", "encode_only", call(rcpt_a), arg(encode, s_receipt)),
    ]  # fmt: skip


def calibrate(run: Callable[[int], float], min_time: float) -> int:
    """Loop count that makes one round last at least ``min_time`` seconds (also warms up)."""
    n = 1
    while True:
        elapsed = run(n)
        if elapsed >= min_time:
            return n
        if elapsed <= 0:
            n *= 10
            continue
        n = max(n * 2, int(n * min_time * 1.2 / elapsed) + 1)


def measure(rounds: int, min_time: float) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """Seconds per operation in every round (aiosmpplib, smppcore) for every case.

    Rounds are interleaved: each round times every case on both sides, in an order that
    flips from one round to the next, so both sides see the same machine.
    """
    table = cases()
    loops = [(calibrate(a, min_time), calibrate(s, min_time)) for _, _, a, s in table]
    samples: list[tuple[list[float], list[float]]] = [([], []) for _ in table]
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        for r in range(rounds):
            for i, (_, _, a_run, s_run) in enumerate(table):
                na, ns = loops[i]
                order = ((0, a_run, na), (1, s_run, ns))
                for side, run, n in order if r % 2 == 0 else reversed(order):
                    samples[i][side].append(run(n) / n)
    finally:
        if gc_was_enabled:
            gc.enable()
    return {(p, op): smp for (p, op, _, _), smp in zip(table, samples, strict=True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 0.05 s (smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds per side (default 7)")
    parser.add_argument("--min-time", type=float, default=None, help="seconds per round (0.2)")
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)
    min_time = args.min_time or (0.05 if args.quick else 0.2)

    verify()
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    results = measure(rounds, min_time)
    wall = time.perf_counter() - t_start

    impl = platform.python_implementation()
    a_version = importlib.metadata.version("aiosmpplib")
    print(
        f"smsc bench/codec.py  {impl} {platform.python_version()}  aiosmpplib "
        f"{a_version}  nproc={os.cpu_count()}  "
        f"rounds={rounds} x >={min_time}s each side, interleaved, gc off"
    )
    print(
        f"{'pdu':<15} {'operation':<12} {'aiosmpplib µs':>14} {'smppcore µs':>12} {'ratio':>7}"
        f" {'paired':>7}"
    )
    per_pdu: dict[str, dict[str, dict[str, float]]] = {}
    for (pdu, op), (a_times, s_times) in results.items():
        a_s, s_s = min(a_times), min(s_times)
        ratio = a_s / s_s
        paired = statistics.median(a / s for a, s in zip(a_times, s_times, strict=True))
        print(
            f"{pdu:<15} {op:<12} {a_s * 1e6:>14.2f} {s_s * 1e6:>12.3f}"
            f" {ratio:>6.1f}x {paired:>6.1f}x"
        )
        per_pdu.setdefault(pdu, {})[op] = {
            "aiosmpplib_us": round(a_s * 1e6, 3),
            "smppcore_us": round(s_s * 1e6, 3),
            "ratio": round(ratio, 2),
            "paired_median_ratio": round(paired, 2),
        }
    print(
        "µs = best round per side; ratio = aiosmpplib / smppcore of those; paired = median over "
        "rounds of the two sides' ratio within a round (a noise check).\n"
        "encode = str fields -> wire bytes, once per message (aiosmpplib object built + pdu()); "
        "encode_only = aiosmpplib pdu() hitting its text cache vs smppcore encode() of a "
        "prebuilt struct, no text encoding on either side; decode = frame -> fields, text as "
        f"str.  ({wall:.1f} s, load average before run {load_before:.2f})"
    )
    sub = per_pdu["submit_sm"]
    summary = {
        "decode_ratio_vs_aiosmpplib": sub["decode"]["ratio"],
        "encode_ratio_vs_aiosmpplib": sub["encode"]["ratio"],
        "encode_only_ratio_vs_aiosmpplib": sub["encode_only"]["ratio"],
        "targets": {"decode": 10, "encode": 5},
        "targets_met": sub["decode"]["ratio"] >= 10 and sub["encode"]["ratio"] >= 5,
        "pdus": per_pdu,
        "python": platform.python_version(),
        "implementation": impl,
        "aiosmpplib": a_version,
        "nproc": os.cpu_count(),
        "rounds": rounds,
        "min_round_s": min_time,
        "quick": args.quick,
        "loadavg_1m_before": round(load_before, 2),
    }
    print(json.dumps(summary, separators=(",", ":"), ensure_ascii=False))


if __name__ == "__main__":
    main()
