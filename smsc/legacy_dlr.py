"""Delivery-report callbacks in the dialects of Kannel and Jasmin, for messages sent
through their drop-in endpoints (smsc/legacy_http.py): the request an application
written for them expects, built when the carrier answers the submit or the receipt comes
(and then queued in the webhook outbox like every other callback: retried, unlike theirs).

Kannel (``dlr-url`` with escapes, called with GET). ``%d`` is the report type, asked for
by the ``dlr-mask`` bits:

- 1 delivered to the phone, 2 not delivered, 4 queued on the SMSC (an intermediate
  state): from the carrier's receipt; ``%A`` is the receipt text (``id:... stat:DELIVRD
  err:000 ...``);
- 8 "SMSC accepted": the carrier answered the submit_sm ESME_ROK; ``%A`` is ``ACK/``;
- 16 "SMSC rejected": the message ends before any carrier took it (a carrier refused it
  for good, no route, retries or validity used up); ``%A`` is ``NACK/0x<status, 8 hex
  digits>/<what the status means>`` for a carrier's refusal (as Kannel 1.4.5 writes it),
  ``NACK/<why>`` when no carrier refused it (``NACK/no route``, ``NACK/expired``...; in
  Kannel's own words where it has them: ``NACK/Retries Exceeded`` when the retries are
  used up, as its bb_smscconn.c). As Kannel, a dlr-mask with 2 (not delivered) also gets
  this type-16 call, and then no type-2 one: the message never reached a carrier.

  A long message gets ONE type 8 or 16 for the whole of it, once every part is answered
  (as Kannel's handle_split): 8 when every part was accepted, else 16 with the refusal
  (smsc/legacy_split.py).

The other escapes: ``%i`` the carrier; ``%I`` our message id; ``%F`` the carrier's
message id; ``%p`` the handset and ``%P`` our sender (a receipt comes *from* the handset,
so Kannel swaps them); ``%q``/``%Q`` the same with a leading 00 as +; ``%t`` the time
(``YYYY-MM-DD HH:MM:SS``, UTC), ``%T`` as Unix seconds; ``%n`` the account; ``%%`` a
percent sign. Values are URL-encoded. A long message's receipts (types 1, 2, 4) call once
per part (``%I`` names the message).

Jasmin (``dlr-url``, ``dlr-method`` GET or POST form; any 2xx answer is taken, no
``ACK/Jasmin`` body is needed):

- level 1 (``dlr-level`` 1 or 3), the "SMS-C level" receipt: ``id``, ``message_status``
  (the submit_sm_resp's command_status name: ``ESME_ROK``, or a refusal's such as
  ``ESME_RINVDSTADR``; ``ESME_RSUBMITFAIL`` when the message ends before any carrier
  answered it), ``level`` (1) and ``connector`` (the carrier). As Jasmin, a temporary
  refusal that is retried calls nothing; a message refused for good then gets no level-2
  call. A long message gets one level-1 call, when the last of its parts is answered,
  with that last answer's status (as Jasmin's LongSubmitSmTransaction).
- level 2 (``dlr-level`` 2 or 3), the terminal receipt: ``id``, ``message_status``
  (DELIVRD, UNDELIV, EXPIRED, REJECTD, DELETED, UNKNOWN, ACCEPTD), ``level``,
  ``connector``, ``id_smsc``, ``sub``, ``dlvrd``, ``subdate``, ``donedate``, ``err`` and
  ``text``. Only for a message a carrier accepted: ``dlr-level`` 2 alone on a message
  refused before any carrier took it calls nothing at all (as Jasmin, which maps a
  message for its terminal receipt only on an ESME_ROK submit_sm_resp).

Which final reports follow a refusal is decided from the report alone (no memory): a
message no carrier accepted has no carrier message id, and its final report is not
called back when the refusal was (Kannel: dlr-mask 16 or 2; Jasmin: always — level 1 or
3 were told, level 2 alone is told nothing). A cancelled message (DELETED before any
carrier took it, never announced as a refusal) is called back as before.
"""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import quote, urlencode

from router.model import DeliveryReport, Message, Refusal, StoredMessage
from smppcore.constants import CommandStatus, MessageState, status_name
from smppcore.receipt import Receipt, format_receipt, is_final, stat_word
from smppcore.receipt_pdu import message_preview
from smsc.callbacks import Target
from smsc.legacy_split import Verdict

KANNEL_DELIVERED = 1
KANNEL_FAILED = 2
KANNEL_BUFFERED = 4
KANNEL_SMSC_ACCEPTED = 8
KANNEL_SMSC_REJECTED = 16
#: A legacy callback: (url, body, outbox kind).
Request = tuple[str, bytes, str]
#: Jasmin's message_status of a refusal no carrier answered.
_NO_ANSWER = int(CommandStatus.ESME_RSUBMITFAIL)
#: Kannel's own words for why a message failed before a carrier took it, where it has
#: them (gw/bb_smscconn.c), by our Refusal.reason.
KANNEL_REASON: dict[str, str] = {"retries exhausted": "Retries Exceeded"}
#: The refusal of a long message decided before every part was answered, none refused.
UNANSWERED = Refusal(MessageState.UNKNOWN, "", 0, "parts unanswered")

#: What a command_status means (SMPP 3.4 section 5.1.3), for Kannel's NACK text.
STATUS_TEXT: dict[int, str] = {
    0x01: "Message Length is invalid",
    0x02: "Command Length is invalid",
    0x03: "Invalid Command ID",
    0x04: "Incorrect BIND Status for given command",
    0x05: "ESME Already in Bound State",
    0x06: "Invalid Priority Flag",
    0x07: "Invalid Registered Delivery Flag",
    0x08: "System Error",
    0x0A: "Invalid Source Address",
    0x0B: "Invalid Destination Address",
    0x0C: "Message ID is invalid",
    0x0D: "Bind Failed",
    0x0E: "Invalid Password",
    0x0F: "Invalid System ID",
    0x11: "Cancel SM Failed",
    0x13: "Replace SM Failed",
    0x14: "Message Queue Full",
    0x15: "Invalid Service Type",
    0x33: "Invalid number of destinations",
    0x34: "Invalid Distribution List name",
    0x40: "Destination flag is invalid",
    0x42: "Invalid submit with replace request",
    0x43: "Invalid esm_class field data",
    0x44: "Cannot Submit to Distribution List",
    0x45: "submit_sm or submit_multi failed",
    0x48: "Invalid Source address TON",
    0x49: "Invalid Source address NPI",
    0x50: "Invalid Destination address TON",
    0x51: "Invalid Destination address NPI",
    0x53: "Invalid system_type field",
    0x54: "Invalid replace_if_present flag",
    0x55: "Invalid number of messages",
    0x58: "Throttling error (ESME has exceeded allowed message limits)",
    0x61: "Invalid Scheduled Delivery Time",
    0x62: "Invalid message validity period (Expiry time)",
    0x63: "Predefined Message Invalid or Not Found",
    0x64: "ESME Receiver Temporary App Error Code",
    0x65: "ESME Receiver Permanent App Error Code",
    0x66: "ESME Receiver Reject Message Error Code",
    0x67: "query_sm request failed",
    0xC0: "Error in the optional part of the PDU Body",
    0xC1: "Optional Parameter not allowed",
    0xC2: "Invalid Parameter Length",
    0xC3: "Expected Optional Parameter missing",
    0xC4: "Invalid Optional Parameter Value",
    0xFE: "Delivery Failure",
    0xFF: "Unknown Error",
}


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
    """The ``dlr-url`` of a receipt (types 1, 2, 4) with its escapes filled in; None when
    ``dlr-mask`` does not ask for this report's type."""
    kind = kannel_type(report.state)
    if not kind & target.mask or target.callback_url is None:
        return None
    msg = stored.message
    answer = format_receipt(_receipt(stored, report, msg.reported_id))
    carrier = report.carrier or stored.carrier
    carrier_id = report.carrier_message_id or stored.carrier_message_id
    when = report.done_at or now
    return _fill(target, target.callback_url, msg, kind, answer, carrier, carrier_id, when)


def kannel_accepted_url(
    target: Target, msg: Message, carrier: str, carrier_message_id: str, now: float
) -> str | None:
    """The ``dlr-url`` of type 8 (the carrier accepted the submit); None unless asked."""
    if not target.mask & KANNEL_SMSC_ACCEPTED or target.callback_url is None:
        return None
    kind = KANNEL_SMSC_ACCEPTED
    return _fill(target, target.callback_url, msg, kind, "ACK/", carrier, carrier_message_id, now)


def kannel_refused_url(target: Target, msg: Message, refusal: Refusal, now: float) -> str | None:
    """The ``dlr-url`` of type 16 (refused before any carrier took it); None unless
    ``dlr-mask`` asks for type 16 or 2 (as Kannel)."""
    if not target.mask & (KANNEL_SMSC_REJECTED | KANNEL_FAILED) or target.callback_url is None:
        return None
    if refusal.status:
        text = STATUS_TEXT.get(refusal.status, status_name(refusal.status))
        answer = f"NACK/0x{refusal.status:08x}/{text}"
    else:
        answer = f"NACK/{KANNEL_REASON.get(refusal.reason, refusal.reason)}"
    kind = KANNEL_SMSC_REJECTED
    return _fill(target, target.callback_url, msg, kind, answer, refusal.carrier, "", now)


def _fill(
    target: Target,
    template: str,
    msg: Message,
    kind: int,
    answer: str,
    carrier: str,
    carrier_id: str,
    when: float,
) -> str:
    """``template`` with Kannel's escapes replaced (URL-encoded)."""
    handset, sender = msg.destination.addr, msg.source.addr
    values = {
        "d": str(kind),
        "A": answer,
        "i": carrier,
        "I": msg.reported_id,
        "F": carrier_id,
        "p": handset,
        "P": sender,
        "q": "+" + handset[2:] if handset.startswith("00") else handset,
        "Q": "+" + sender[2:] if sender.startswith("00") else sender,
        "t": datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "T": str(int(when)),
        "n": target.user,
    }
    out: list[str] = []
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


def jasmin_level1(target: Target, msg: Message, carrier: str, status: int) -> dict[str, str] | None:
    """Jasmin's level-1 ("SMS-C level") receipt: the submit_sm_resp's status by name;
    None unless ``dlr-level`` is 1 or 3."""
    if target.mask not in (1, 3):
        return None
    return {
        "id": msg.reported_id,
        "message_status": status_name(status),
        "level": "1",
        "connector": carrier,
    }


def asks_submit_answer(target: Target) -> bool:
    """Does ``target`` ask to hear the carrier's answer to the submit (Kannel: dlr-mask
    8, 16, or 2 which implies 16; Jasmin: dlr-level 1 or 3)?"""
    if target.dialect == "kannel":
        return bool(target.mask & (KANNEL_SMSC_ACCEPTED | KANNEL_SMSC_REJECTED | KANNEL_FAILED))
    return target.dialect == "jasmin" and target.mask in (1, 3)


def told_by_refusal(target: Target, stored: StoredMessage, report: DeliveryReport) -> bool:
    """Is ``report`` the final state of a message no carrier accepted (no carrier
    message id), whose refusal ``target`` was told of or, as its tool, wants nothing
    after (Kannel: dlr-mask 16, or 2 which implies it; Jasmin: any level)?"""
    if report.carrier_message_id or stored.carrier_message_id:
        return False
    if report.state == MessageState.DELETED:  # cancelled: no refusal announced it
        return False
    if target.dialect == "kannel":
        return bool(target.mask & (KANNEL_SMSC_REJECTED | KANNEL_FAILED))
    return True


def legacy_request(
    target: Target, stored: StoredMessage, report: DeliveryReport, now: float
) -> Request | None:
    """(url, body, outbox kind) of the callback ``target`` asks for this receipt, or None."""
    if told_by_refusal(target, stored, report):
        return None
    if target.dialect == "kannel":
        url = kannel_url(target, stored, report, now)
        return None if url is None else (url, b"", "get")
    return _jasmin(target, jasmin_fields(target, stored, report))


def legacy_accepted(
    target: Target, msg: Message, carrier: str, carrier_message_id: str, now: float
) -> Request | None:
    """The callback ``target`` asks for when ``carrier`` accepted ``msg``, or None."""
    if target.dialect == "kannel":
        url = kannel_accepted_url(target, msg, carrier, carrier_message_id, now)
        return None if url is None else (url, b"", "get")
    return _jasmin(target, jasmin_level1(target, msg, carrier, int(CommandStatus.ESME_ROK)))


def legacy_refused(target: Target, msg: Message, refusal: Refusal, now: float) -> Request | None:
    """The callback ``target`` asks for when ``msg`` is refused before any carrier took
    it, or None."""
    if target.dialect == "kannel":
        url = kannel_refused_url(target, msg, refusal, now)
        return None if url is None else (url, b"", "get")
    status = refusal.status or _NO_ANSWER
    return _jasmin(target, jasmin_level1(target, msg, refusal.carrier, status))


def legacy_verdict(target: Target, verdict: Verdict, now: float) -> Request | None:
    """The one callback ``target`` asks for a long message whose parts are answered."""
    msg, last = verdict.message, verdict.last
    if target.dialect == "kannel":
        if verdict.accepted:
            return legacy_accepted(target, msg, last.carrier, last.carrier_message_id, now)
        refused = verdict.refused
        refusal = refused.refusal if refused is not None else None
        return legacy_refused(target, msg, refusal or UNANSWERED, now)
    if last.refusal is not None:
        return legacy_refused(target, msg, last.refusal, now)
    return legacy_accepted(target, msg, last.carrier, last.carrier_message_id, now)


def _jasmin(target: Target, fields: dict[str, str] | None) -> Request | None:
    """Jasmin's call with ``fields``: a POST form, or a GET with them in the query."""
    if fields is None or target.callback_url is None:
        return None
    if target.method == "POST":
        return target.callback_url, urlencode(fields).encode(), "form"
    joiner = "&" if "?" in target.callback_url else "?"
    return target.callback_url + joiner + urlencode(fields), b"", "get"
