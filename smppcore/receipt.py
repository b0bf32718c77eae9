"""Delivery receipt text (SMPP 3.4 Appendix B): emitted strictly, parsed leniently.

We write exactly this, on one line with single spaces between the fields::

    id:<id> sub:001 dlvrd:001 submit date:YYMMDDhhmm done date:YYMMDDhhmm
    stat:DELIVRD err:000 text:<first 20 characters>

We read what vendors actually send: keys in any case and order, ``submit_date`` for
``submit date``, ``Text:``, missing or extra fields, 10-, 12- or 14-digit dates. Message
ids are kept exactly as written; ``normalize_id`` turns them into a correlation key when a
carrier writes the id of a receipt differently from the one in its submit_sm_resp.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Final, Literal

import msgspec

from smppcore.constants import MessageState
from smppcore.smpptime import format_receipt_date, parse_receipt_date

__all__ = [
    "IdStyle",
    "Receipt",
    "decimal_to_hex",
    "format_receipt",
    "hex_to_decimal",
    "is_final",
    "normalize_id",
    "parse_receipt",
    "stat_word",
    "state_from_word",
]

#: Characters of the original message a receipt repeats (Appendix B).
TEXT_LENGTH = 20
#: sub, dlvrd and err are written with three digits.
_THREE_DIGITS_MAX = 999

_STAT_WORDS: dict[MessageState, str] = {
    MessageState.SCHEDULED: "ENROUTE",  # v5 state, not yet sent: an intermediate state
    MessageState.ENROUTE: "ENROUTE",
    MessageState.DELIVERED: "DELIVRD",
    MessageState.EXPIRED: "EXPIRED",
    MessageState.DELETED: "DELETED",
    MessageState.UNDELIVERABLE: "UNDELIV",
    MessageState.ACCEPTED: "ACCEPTD",
    MessageState.UNKNOWN: "UNKNOWN",
    MessageState.REJECTED: "REJECTD",
    MessageState.SKIPPED: "UNDELIV",  # v5 state, deliberately not sent: 3.4 has no word
}

_STATES_BY_WORD: dict[str, MessageState] = {
    "DELIVRD": MessageState.DELIVERED,
    "DELIVERED": MessageState.DELIVERED,
    "EXPIRED": MessageState.EXPIRED,
    "DELETED": MessageState.DELETED,
    "UNDELIV": MessageState.UNDELIVERABLE,
    "UNDELIVERABLE": MessageState.UNDELIVERABLE,
    "UNDELIVERED": MessageState.UNDELIVERABLE,
    "ACCEPTD": MessageState.ACCEPTED,
    "ACCEPTED": MessageState.ACCEPTED,
    "UNKNOWN": MessageState.UNKNOWN,
    "REJECTD": MessageState.REJECTED,
    "REJECTED": MessageState.REJECTED,
    "ENROUTE": MessageState.ENROUTE,
}

_NOT_FINAL = frozenset({MessageState.SCHEDULED, MessageState.ENROUTE})


def stat_word(state: MessageState) -> str:
    """The 7-letter ``stat:`` word of a message state (DELIVRD, UNDELIV, ...)."""
    return _STAT_WORDS[state]


def state_from_word(word: str) -> MessageState:
    """The message state a ``stat:`` word names: any case, short or long form.

    DELIVRD/DELIVERED, UNDELIV/UNDELIVERABLE/UNDELIVERED, ACCEPTD/ACCEPTED,
    REJECTD/REJECTED, EXPIRED, DELETED, ENROUTE, UNKNOWN; anything else is UNKNOWN.
    """
    return _STATES_BY_WORD.get(word.strip().upper(), MessageState.UNKNOWN)


def is_final(state: MessageState) -> bool:
    """Whether no later receipt is expected: every state but SCHEDULED and ENROUTE.

    This follows §5.2.28, where ACCEPTED is final (accepted on behalf of the
    subscriber). Some carriers send ACCEPTD as an intermediate "accepted by the
    network"; treating it so is a per-carrier decision for the router.
    """
    return state not in _NOT_FINAL


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """The fields of a delivery receipt text.

    ``message_id`` is the id as written, never normalised. ``sub``/``dlvrd`` count
    submitted and delivered short messages; ``error`` is the network error code of
    ``err:``; ``text`` the start of the original message. Dates are aware (UTC when
    parsed) or ``None`` when absent or unreadable.
    """

    message_id: str
    state: MessageState
    sub: int = 1
    dlvrd: int = 0
    submit_date: datetime | None = None
    done_date: datetime | None = None
    error: int = 0
    text: str = ""


_THREE: Final = tuple(f"{n:03d}" for n in range(_THREE_DIGITS_MAX + 1))


def _three_digits(value: int) -> str:
    if not 0 <= value <= _THREE_DIGITS_MAX:
        value = max(0, min(_THREE_DIGITS_MAX, value))
    return _THREE[value]


def _receipt_date(value: datetime | None) -> str:
    return "" if value is None else format_receipt_date(value)


def format_receipt(r: Receipt) -> str:
    """The Appendix B text of a receipt, in the one strict form we emit.

    sub, dlvrd and err are clamped to 0-999 and written with three digits; dates are
    written in UTC as YYMMDDhhmm (a missing date leaves its value empty); text is cut
    to its first 20 characters. Encoding the result is the caller's business.
    """
    return (
        f"id:{r.message_id} sub:{_three_digits(r.sub)} dlvrd:{_three_digits(r.dlvrd)}"
        f" submit date:{_receipt_date(r.submit_date)} done date:{_receipt_date(r.done_date)}"
        f" stat:{stat_word(r.state)} err:{_three_digits(r.error)} text:{r.text[:TEXT_LENGTH]}"
    )


# A key starts the text or follows whitespace; ``:`` may be preceded by blanks.
_KEY = re.compile(
    r"(?<!\S)(?P<key>id|sub|dlvrd|submit[ _]?date|done[ _]?date|stat(?:us)?|err(?:or)?|text)"
    r"[ \t]*:",
    re.IGNORECASE,
)
_VALUE = re.compile(r"[ \t]*(\S*)")
_COUNT = re.compile(r"[0-9]{1,18}")
_HEX_ERROR = re.compile(r"0[xX]([0-9A-Fa-f]{1,8})")
_DECIMAL_ID = re.compile(r"[0-9]+")
_HEX_ID = re.compile(r"(?:0[xX])?([0-9A-Fa-f]+)")


def _canonical_key(key: str) -> str:
    """The one spelling of a key: ``Submit_Date`` → ``submit date``, ``status`` → ``stat``."""
    key = key.lower()
    for canonical in ("submit date", "done date", "stat", "err"):
        if key.startswith(canonical[:4]):
            return canonical
    return key


def _decode(data: str | bytes) -> str:
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _fields(text: str) -> dict[str, str]:
    """The values of the known keys, first occurrence winning; ``text`` runs to the end."""
    matches = list(_KEY.finditer(text))
    fields: dict[str, str] = {}
    for index, match in enumerate(matches):
        key = _canonical_key(match.group("key"))
        if key == "text":
            fields.setdefault(key, text[match.end() :])
            break
        value = _VALUE.match(text, match.end())
        next_key = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        if value is not None and value.start(1) < next_key:
            fields.setdefault(key, value.group(1))
        else:
            fields.setdefault(key, "")  # an empty value directly followed by the next key
    return fields


def _count(value: str | None, default: int) -> int:
    if value is None or _COUNT.fullmatch(value) is None:
        return default
    return int(value)


def _error(value: str | None) -> int:
    """err: decimal digits, or hexadecimal with a 0x prefix; anything else reads as 0."""
    if value is None:
        return 0
    if _COUNT.fullmatch(value):
        return int(value)
    if hex_match := _HEX_ERROR.fullmatch(value):
        return int(hex_match.group(1), 16)
    return 0


def _date(value: str | None) -> datetime | None:
    return None if value is None else parse_receipt_date(value)


def parse_receipt(data: str | bytes) -> Receipt | None:
    """Read a receipt text as leniently as vendors require; never raises.

    Returns ``None`` only when the text has neither an ``id:`` nor a ``stat:`` key.
    Keys are case-insensitive and may come in any order (``submit_date``, ``Text:``,
    ``status``/``error`` long forms too); unknown fields are skipped. Each value is the
    token after its key, except ``text:``, which takes the rest of the message verbatim
    (it may contain anything the subscriber wrote, so no key is looked for after it).
    Defaults for missing or unreadable fields: id ``""``, stat UNKNOWN, sub 1, dlvrd 1
    when DELIVERED else 0, dates ``None``, err 0 (non-numeric err also reads 0; a
    ``0x`` prefix reads as hexadecimal), text ``""``. Bytes are read as UTF-8, or as
    Latin-1 when they are not UTF-8; trailing NULs (C string terminators) are dropped.
    """
    text = _decode(data).rstrip("\x00")
    fields = _fields(text)
    if "id" not in fields and "stat" not in fields:
        return None
    state = state_from_word(fields.get("stat", ""))
    return Receipt(
        message_id=fields.get("id", ""),
        state=state,
        sub=_count(fields.get("sub"), 1),
        dlvrd=_count(fields.get("dlvrd"), 1 if state == MessageState.DELIVERED else 0),
        submit_date=_date(fields.get("submit date")),
        done_date=_date(fields.get("done date")),
        error=_error(fields.get("err")),
        text=fields.get("text", ""),
    )


# -- message id correlation -------------------------------------------------------------

IdStyle = Literal["as_is", "hex", "decimal", "upper", "lower", "strip_zeros"]


def normalize_id(value: str, *, style: IdStyle) -> str:
    """The correlation key of a message id, written the way ``style`` says. Never raises.

    - ``as_is``: unchanged;
    - ``upper`` / ``lower``: case folded, surrounding whitespace dropped;
    - ``strip_zeros``: leading zeros dropped (``"000"`` becomes ``"0"``);
    - ``hex`` / ``decimal``: the id is a number in that base (hex may carry ``0x``);
      the key is that number in decimal, so a carrier answering submit_sm with hex
      ``"1A2B"`` and receipting ``"6699"`` correlates with ``hex`` on one side and
      ``decimal`` on the other. An id that is not such a number is returned stripped.
    """
    if style == "as_is":
        return value
    text = value.strip()
    if style == "upper":
        return text.upper()
    if style == "lower":
        return text.lower()
    if style == "strip_zeros":
        return text.lstrip("0") or ("0" if text else "")
    try:
        return hex_to_decimal(text) if style == "hex" else str(_decimal_number(text))
    except ValueError:  # not a number in that base, or too long to print in decimal
        return text


def _decimal_number(value: str) -> int:
    if _DECIMAL_ID.fullmatch(value) is None:
        raise ValueError(f"not a decimal message id: {value!r}")
    return int(value)


def hex_to_decimal(value: str) -> str:
    """The decimal form of a hexadecimal id (``"1A2B"`` or ``"0x1a2b"`` → ``"6699"``).

    Raises ``ValueError`` when ``value`` is not ASCII hexadecimal digits.
    """
    match = _HEX_ID.fullmatch(value)
    if match is None:
        raise ValueError(f"not a hexadecimal message id: {value!r}")
    return str(int(match.group(1), 16))


def decimal_to_hex(value: str, *, upper: bool = False, width: int = 0) -> str:
    """The hexadecimal form of a decimal id (``"6699"`` → ``"1a2b"``), zero-padded to
    ``width`` digits, upper case on request. Raises ``ValueError`` on non-decimal input.
    """
    digits = f"{_decimal_number(value):{'X' if upper else 'x'}}"
    return digits.rjust(width, "0")
