"""Delivery-report callbacks in the dialects of Kannel and Jasmin, for messages sent
through their drop-in endpoints (smsc/legacy_http.py): the request an application
written for them expects, built when the receipt comes (and then queued in the webhook
outbox like every other callback: retried, unlike theirs).

Kannel (``dlr-url`` with escapes, called with GET): ``%d`` the report type — 1 delivered
to the phone, 2 not delivered, 4 queued on the SMSC (an intermediate state) — asked for
by the ``dlr-mask`` bits; ``%A`` the receipt text (``id:... stat:DELIVRD err:000 ...``);
``%i`` the carrier; ``%I`` our message id; ``%F`` the carrier's message id; ``%p`` the
handset and ``%P`` our sender (a receipt comes *from* the handset, so Kannel swaps them);
``%q``/``%Q`` the same with a leading 00 as +; ``%t`` the time (``YYYY-MM-DD
HH:MM:SS``, UTC), ``%T`` as Unix seconds; ``%n`` the account; ``%%`` a percent sign.
Values are URL-encoded. (Kannel's types 8 and 16, the carrier's submit answer, are not
sent: the receipt is.)

Jasmin (``dlr-url``, ``dlr-method`` GET or POST form): the level-2 (terminal) receipt
with ``id``, ``message_status`` (DELIVRD, UNDELIV, EXPIRED, REJECTD, DELETED, UNKNOWN,
ACCEPTD), ``level``, ``connector``, ``id_smsc``, ``sub``, ``dlvrd``, ``subdate``,
``donedate``, ``err`` and ``text``, for ``dlr-level`` 2 or 3. Any 2xx answer is taken;
no ``ACK/Jasmin`` body is needed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from router.model import DeliveryReport, StoredMessage
from smppcore.constants import MessageState
from smppcore.receipt import Receipt, format_receipt, is_final, stat_word
from smppcore.receipt_pdu import message_preview
from smsc.callbacks import Target

KANNEL_DELIVERED = 1
KANNEL_FAILED = 2
KANNEL_BUFFERED = 4


def kannel_type(state: MessageState) -> int:
    if not is_final(state):
        return KANNEL_BUFFERED
    return KANNEL_DELIVERED if state == MessageState.DELIVERED else KANNEL_FAILED


def kannel_registered_delivery(mask: int) -> int:
    """The registered_delivery a Kannel ``dlr-mask`` asks of the carrier."""
    final = 1 if mask & (KANNEL_DELIVERED | KANNEL_FAILED) else 0
    return final | (0x10 if mask & KANNEL_BUFFERED else 0)


def _receipt(stored: StoredMessage, report: DeliveryReport, message_id: str) -> Receipt:
    msg = stored.message
    done = report.done_at or msg.submitted_at
    return Receipt(
        message_id=message_id,
        state=report.state,
        sub=1,
        dlvrd=1 if report.state == MessageState.DELIVERED else 0,
        submit_date=datetime.fromtimestamp(msg.submitted_at, UTC),
        done_date=datetime.fromtimestamp(done, UTC),
        error=report.error,
        text=message_preview(msg.short_message, msg.esm_class, msg.data_coding),
    )


def kannel_url(
    target: Target, stored: StoredMessage, report: DeliveryReport, now: float
) -> str | None:
    """The ``dlr-url`` with its escapes filled in; None when ``dlr-mask`` does not ask for
    this report's type."""
    kind = kannel_type(report.state)
    if not kind & target.mask or target.callback_url is None:
        return None
    msg = stored.message
    handset, sender = msg.destination.addr, msg.source.addr
    when = report.done_at or now
    values = {
        "d": str(kind),
        "A": format_receipt(_receipt(stored, report, msg.reported_id)),
        "i": report.carrier or stored.carrier,
        "I": msg.reported_id,
        "F": report.carrier_message_id or stored.carrier_message_id,
        "p": handset,
        "P": sender,
        "q": "+" + handset[2:] if handset.startswith("00") else handset,
        "Q": "+" + sender[2:] if sender.startswith("00") else sender,
        "t": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "T": str(int(when)),
        "n": target.user,
    }
    out: list[str] = []
    template = target.callback_url
    i = 0
    while i < len(template):
        char = template[i]
        if char == "%" and i + 1 < len(template):
            code = template[i + 1]
            if code == "%":
                out.append("%")
                i += 2
                continue
            if code in values:
                out.append(quote(values[code], safe=""))
                i += 2
                continue
        out.append(char)
        i += 1
    return "".join(out)


def jasmin_fields(
    target: Target, stored: StoredMessage, report: DeliveryReport
) -> dict[str, str] | None:
    """The level-2 receipt's fields; None when ``dlr-level`` asks only for level 1 or the
    state is not final."""
    if target.mask not in (2, 3) or not is_final(report.state):
        return None
    msg = stored.message
    receipt = _receipt(stored, report, msg.reported_id)
    assert receipt.submit_date is not None
    assert receipt.done_date is not None
    return {
        "id": msg.reported_id,
        "message_status": stat_word(report.state),
        "level": "2",
        "connector": report.carrier or stored.carrier,
        "id_smsc": report.carrier_message_id or stored.carrier_message_id,
        "sub": "001",
        "dlvrd": f"{receipt.dlvrd:03d}",
        "subdate": receipt.submit_date.strftime("%y%m%d%H%M"),
        "donedate": receipt.done_date.strftime("%y%m%d%H%M"),
        "err": f"{report.error:03d}",
        "text": receipt.text,
    }


def legacy_request(
    target: Target, stored: StoredMessage, report: DeliveryReport, now: float
) -> tuple[str, bytes, str] | None:
    """(url, body, outbox kind) of the callback ``target`` asks for this report, or None."""
    if target.dialect == "kannel":
        url = kannel_url(target, stored, report, now)
        return None if url is None else (url, b"", "get")
    fields = jasmin_fields(target, stored, report)
    if fields is None or target.callback_url is None:
        return None
    if target.method == "POST":
        return target.callback_url, urlencode(fields).encode(), "form"
    joiner = "&" if "?" in target.callback_url else "?"
    return target.callback_url + joiner + urlencode(fields), b"", "get"
