"""Pure parts of the application API: its time formats, Kannel's dlr-url escapes and
Jasmin's receipt fields, the API keys."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from router.model import Address, DeliveryReport, Message, StoredMessage
from smppcore.constants import MessageState
from smsc.apikeys import basic_credentials, bearer, key_hash, new_key
from smsc.callbacks import Target
from smsc.http_times import duration, instant, validity_end
from smsc.legacy_dlr import jasmin_fields, kannel_registered_delivery, kannel_url, legacy_request

NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("PT1H", 3600), ("P2D", 172_800), ("PT90S", 90), ("P1DT1H1M1.5S", 90_061.5), ("PT0.5S", 0.5)],
)
def test_iso_8601_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["P", "PT", "1H", "P1Y", "PT-1S", "P1DT", ""])
def test_what_is_not_a_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        duration(text)


def test_validity_is_seconds_a_duration_or_an_instant() -> None:
    assert validity_end(60, NOW) == NOW + 60
    assert validity_end("PT1M", NOW) == NOW + 60
    assert validity_end("2023-11-14T22:14:20Z", NOW) == NOW + 60
    with pytest.raises(ValueError, match="more than 0"):
        validity_end("PT0S", NOW)
    with pytest.raises(ValueError, match="time zone"):
        instant("2030-01-01T10:00:00")
    assert instant("2023-11-14T23:13:20+01:00") == NOW


def test_api_keys_and_credentials() -> None:
    key, digest = new_key(b"\x01" * 32)
    assert key.startswith("smsc_")
    assert digest == key_hash(key)
    assert digest.startswith("sha256$")
    assert new_key(b"\x02" * 32)[0] != key
    with pytest.raises(ValueError, match="32"):
        new_key(b"short")
    assert basic_credentials("Basic YWNtZTpwdzpwdw==") == ("acme", "pw:pw")
    assert basic_credentials("Basic !!!") is None
    assert basic_credentials("Bearer x") is None
    assert bearer("bearer  k ") == "k"
    assert bearer("Basic k") is None


def stored(state: MessageState = MessageState.DELIVERED) -> tuple[StoredMessage, DeliveryReport]:
    msg = Message(
        id="abc-2",
        client_id="abc",
        account="acme",
        source=Address(5, 0, "Acme"),
        destination=Address(1, 1, "0044770090001"),
        short_message=b"Hello",
        submitted_at=NOW - 60,
    )
    report = DeliveryReport("abc-2", state, 0, NOW, carrier="cheap", carrier_message_id="C-9")
    return StoredMessage(message=msg, state=state), report


def test_kannel_escapes_are_filled_in_and_url_encoded() -> None:
    target = Target(
        "http://app/dlr?t=%d&i=%I&s=%i&f=%F&p=%p&P=%P&q=%q&n=%n&T=%T&pct=%%&x=%x&A=%A",
        None,
        dialect="kannel",
        mask=3,
        user="acme",
    )
    url = kannel_url(target, *stored(), NOW)
    assert url is not None
    got = {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}
    assert got["t"] == "1"
    assert got["i"] == "abc"  # the id the client was given
    assert got["s"] == "cheap"
    assert got["f"] == "C-9"
    assert got["p"] == "0044770090001"
    assert got["P"] == "Acme"
    assert got["q"] == "+44770090001"
    assert got["n"] == "acme"
    assert got["T"] == str(int(NOW))
    assert got["pct"] == "%"
    assert got["x"] == "%x"  # not an escape: left as written
    assert got["A"].startswith("id:abc sub:001 dlvrd:001 submit date:")
    assert "stat:DELIVRD err:000 text:Hello" in got["A"]


def test_kannel_dlr_mask_chooses_the_types() -> None:
    failed = stored(MessageState.UNDELIVERABLE)
    enroute = stored(MessageState.ENROUTE)
    only_failures = Target("http://app/?t=%d", None, dialect="kannel", mask=2)
    assert kannel_url(only_failures, *stored(), NOW) is None
    url = kannel_url(only_failures, *failed, NOW)
    assert url == "http://app/?t=2"
    assert kannel_url(only_failures, *enroute, NOW) is None
    buffered = Target("http://app/?t=%d", None, dialect="kannel", mask=4)
    assert kannel_url(buffered, *enroute, NOW) == "http://app/?t=4"
    assert kannel_registered_delivery(3) == 1
    assert kannel_registered_delivery(4) == 0x10
    assert kannel_registered_delivery(7) == 0x11
    assert kannel_registered_delivery(8) == 0


def test_jasmin_receipts_by_level_and_method() -> None:
    level2 = Target("http://app/dlr", None, dialect="jasmin", mask=2, method="POST")
    fields = jasmin_fields(level2, *stored())
    assert fields is not None
    assert fields["id"] == "abc"
    assert fields["message_status"] == "DELIVRD"
    assert (fields["level"], fields["connector"], fields["id_smsc"]) == ("2", "cheap", "C-9")
    assert (fields["sub"], fields["dlvrd"], fields["err"]) == ("001", "001", "000")
    assert len(fields["subdate"]) == len(fields["donedate"]) == 10
    assert jasmin_fields(Target("u", None, dialect="jasmin", mask=1), *stored()) is None
    assert jasmin_fields(level2, *stored(MessageState.ENROUTE)) is None
    request = legacy_request(level2, *stored(), NOW)
    assert request is not None
    assert request[0] == "http://app/dlr"
    assert request[2] == "form"
    get = Target("http://app/dlr?k=1", None, dialect="jasmin", mask=3, method="GET")
    request = legacy_request(get, *stored(), NOW)
    assert request is not None
    assert request[0].startswith("http://app/dlr?k=1&id=abc&message_status=DELIVRD")
    assert (request[1], request[2]) == (b"", "get")
