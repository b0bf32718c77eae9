"""Security of binds: salted password hashes, bind-rate limiting per source address, the
audit log line of every bind attempt, and secrets kept out of errors, reprs and logs."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from carrier_fixtures import bind_esme, running_carrier
from loops import LOOP_FACTORIES
from smsc_fixtures import (
    DEADLINE,
    FAST,
    PASSWORD,
    SYSTEM_ID,
    app_config,
    bind_client,
    running_app,
)

from simulator.config import CarrierConfig
from smppcore.accounts import Account, PasswordHash, check_bind, hash_password
from smppcore.aio import BindError
from smppcore.codec import FrameBuffer, decode, encode
from smppcore.config import ConfigError, load_config
from smppcore.constants import CommandId, CommandStatus
from smppcore.pdu import BindTransceiver
from smsc.cli import main
from smsc.config import SecurityConfig, SmscConfig
from smsc.security import Admission, BindGuard

SALT = bytes(range(16))
#: Cheap parameters for the tests that hash many times (the format carries them).
FAST_HASH = {"n": 2**4, "r": 1, "p": 1}


@pytest.fixture
def run1() -> Iterator[asyncio.Runner]:
    with asyncio.Runner(loop_factory=LOOP_FACTORIES["uvloop"]) as runner:
        yield runner


# --- password hashes ------------------------------------------------------------------------


def test_a_hashed_password_matches_only_the_password() -> None:
    stored = hash_password("s3cret", SALT)
    assert stored.startswith("scrypt$n=16384,r=8,p=1$")
    assert "s3cret" not in stored
    account = Account(system_id="acme", password=stored)
    assert account.password_hashed
    assert account.password_matches("s3cret")
    assert not account.password_matches("s3cret ")
    assert not account.password_matches("")


def test_the_same_password_with_another_salt_hashes_differently() -> None:
    one = hash_password("s3cret", SALT, **FAST_HASH)
    other = hash_password("s3cret", bytes(16), **FAST_HASH)
    assert one != other
    assert Account(system_id="a", password=other).password_matches("s3cret")


def test_check_bind_with_a_hash_and_with_a_plain_password() -> None:
    hashed = Account(system_id="acme", password=hash_password("pw", SALT, **FAST_HASH))
    plain = Account(system_id="acme", password="pw")
    for account in (hashed, plain):
        ok = check_bind(
            account,
            command_id=CommandId.BIND_TRANSCEIVER,
            password="pw",
            peer_host="127.0.0.1",
            sessions_in_use=0,
        )
        bad = check_bind(
            account,
            command_id=CommandId.BIND_TRANSCEIVER,
            password="pW",
            peer_host="127.0.0.1",
            sessions_in_use=0,
        )
        assert (ok, bad) == (CommandStatus.ESME_ROK, CommandStatus.ESME_RINVPASWD)
    # A check already run elsewhere (off the event loop) is taken as given.
    assert (
        check_bind(
            hashed,
            command_id=CommandId.BIND_TRANSCEIVER,
            password="whatever",
            peer_host=None,
            sessions_in_use=0,
            password_ok=False,
        )
        == CommandStatus.ESME_RINVPASWD
    )


@pytest.mark.parametrize(
    "text",
    [
        "scrypt$",
        "scrypt$n=16384,r=8$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$n=1000,r=8,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # n not a power of 2
        "scrypt$n=16384,r=8,p=1$not*base64$aGFzaGhhc2hoYXNoaGFzaA",
        "scrypt$n=16384,r=8,p=1$c2FsdHNhbHQ$aGFzaA",  # hash too short
        "scrypt$n=1048576,r=64,p=16$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",  # too much memory
    ],
)
def test_a_malformed_hash_is_refused_without_echoing_it(text: str) -> None:
    with pytest.raises(ValueError, match="password") as info:
        Account(system_id="acme", password=text)
    for piece in text.split("$")[2:]:  # salt and hash
        assert piece not in str(info.value)
    with pytest.raises(ValueError, match="hash"):
        PasswordHash.parse(text)


SECRET = "hunter2-is-too-long"


def test_config_errors_never_echo_a_password() -> None:
    """A plain password over 8 characters (or a broken hash) is refused naming the key,
    never the value, in smsc's and the simulator's accounts."""
    for value in (SECRET, "scrypt$n=16384,r=8,p=1$" + SECRET + "$" + SECRET):
        with pytest.raises(ConfigError) as info:
            load_config(
                {"accounts": [{"system_id": "acme", "password": value}]}, SmscConfig, source="f"
            )
        assert "accounts[0]" in str(info.value)
        assert "password" in str(info.value)
        assert SECRET not in str(info.value)
        with pytest.raises(ConfigError) as info:
            load_config({"accounts": [{"system_id": "acme", "password": value}]}, CarrierConfig)
        assert SECRET not in str(info.value)
    # What the router sends upstream stays a plain password of at most 8 characters.
    with pytest.raises(ConfigError) as info:
        load_config(
            {"router": {"carriers": [{"name": "c", "password": SECRET}]}}, SmscConfig, source="f"
        )
    assert SECRET not in str(info.value)


def test_reprs_never_show_a_password() -> None:
    config = load_config({"accounts": [{"system_id": "acme", "password": "pw123456"}]}, SmscConfig)
    assert "pw123456" not in repr(config.accounts[0])
    assert "pw123456" not in repr(config.accounts[0].auth())


def test_hash_password_reads_stdin_and_prints_a_hash_that_verifies(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["hash-password"]) == 0
    out = capsys.readouterr()
    stored = out.out.strip()
    assert "s3cret" not in out.out + out.err
    assert Account(system_id="a", password=stored).password_matches("s3cret")
    # Each run draws a new salt.
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret\n"))
    assert main(["hash-password"]) == 0
    assert capsys.readouterr().out.strip() != stored


@pytest.mark.parametrize("given", ["", "\n", "123456789\n"])
def test_hash_password_refuses_an_empty_or_too_long_password(
    given: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(given))
    assert main(["hash-password"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert "123456789" not in out.err


# --- bind guard (pure, time as a parameter) -------------------------------------------------


def guard(**changes: object) -> BindGuard:
    settings: dict[str, object] = {
        "failed_binds": 3,
        "failed_bind_window": 60.0,
        "bind_cooldown": 300.0,
        **changes,
    }
    return BindGuard(load_config(settings, SecurityConfig))


def test_failed_binds_within_the_window_start_a_cool_down() -> None:
    g = guard()
    assert not g.failed("10.0.0.1", 0.0)
    assert not g.failed("10.0.0.1", 10.0)
    assert not g.blocked("10.0.0.1", 10.0)
    assert g.failed("10.0.0.1", 20.0)  # the third within 60 s
    assert g.blocked("10.0.0.1", 20.0)
    assert g.blocked("10.0.0.1", 319.9)
    assert not g.blocked("10.0.0.2", 21.0)  # other addresses are unaffected
    assert not g.blocked("10.0.0.1", 320.0)  # cool-down over
    assert g.blocks == 1


def test_failures_spread_over_more_than_the_window_do_not_block() -> None:
    g = guard()
    for t in (0.0, 40.0, 80.0, 120.0, 160.0):
        assert not g.failed("10.0.0.1", t)
    assert not g.blocked("10.0.0.1", 161.0)


def test_tracked_addresses_are_bounded_least_recent_forgotten_first() -> None:
    g = guard(max_tracked_peers=2)
    g.failed("10.0.0.1", 0.0)
    g.failed("10.0.0.2", 1.0)
    g.failed("10.0.0.1", 2.0)  # 10.0.0.1 is now the most recent
    g.failed("10.0.0.3", 3.0)  # forgets 10.0.0.2
    assert len(g) == 2
    assert g.failed("10.0.0.1", 4.0)  # its count survived
    assert not g.failed("10.0.0.2", 5.0)  # starts again from one


def test_no_limit_when_failed_binds_is_null() -> None:
    g = guard(failed_binds=None)
    for t in range(100):
        g.failed("10.0.0.1", float(t))
    assert not g.blocked("10.0.0.1", 100.0)
    assert len(g) == 0


def test_an_attempt_counts_from_its_start_and_waits_at_the_limit() -> None:
    """Attempts being checked are pending: failures + pending at the limit make the next
    one wait, however many arrive before the first check ends."""
    g = guard()  # failed_binds 3
    assert [g.begin("10.0.0.1", 0.0) for _ in range(3)] == [Admission.GO] * 3
    assert g.pending("10.0.0.1") == 3
    assert g.begin("10.0.0.1", 0.0) is Admission.WAIT  # a fourth is not checked yet
    assert g.begin("10.0.0.2", 0.0) is Admission.GO  # other addresses are unaffected
    assert not g.failed("10.0.0.1", 1.0)
    assert not g.failed("10.0.0.1", 1.0)
    assert g.begin("10.0.0.1", 1.0) is Admission.WAIT  # 2 failures + 1 pending
    assert g.failed("10.0.0.1", 1.0)  # the third failure: cool-down
    assert g.pending("10.0.0.1") == 0
    assert g.begin("10.0.0.1", 1.0) is Admission.COOLDOWN
    assert g.blocked("10.0.0.1", 300.9)
    assert g.begin("10.0.0.1", 301.0) is Admission.GO


def test_an_attempt_that_succeeds_is_released_without_counting() -> None:
    g = guard()
    for _ in range(3):
        assert g.begin("10.0.0.1", 0.0) is Admission.GO
    g.release("10.0.0.1")
    assert g.pending("10.0.0.1") == 2
    assert g.begin("10.0.0.1", 0.0) is Admission.GO  # the slot is free again
    for _ in range(3):
        g.release("10.0.0.1")
    assert g.pending("10.0.0.1") == 0
    g.release("10.0.0.1")  # one too many is harmless
    assert g.pending("10.0.0.1") == 0
    assert [g.begin("10.0.0.1", 1.0) for _ in range(4)][-1] is Admission.WAIT
    assert g.blocks == 0


def test_failures_age_out_but_attempts_in_progress_do_not() -> None:
    g = guard()
    g.failed("10.0.0.1", 0.0)
    g.failed("10.0.0.1", 0.0)
    assert g.begin("10.0.0.1", 1.0) is Admission.GO
    assert g.begin("10.0.0.1", 1.0) is Admission.WAIT
    assert g.begin("10.0.0.1", 60.0) is Admission.GO  # both failures aged out
    assert g.begin("10.0.0.1", 60.0) is Admission.GO
    assert g.begin("10.0.0.1", 1000.0) is Admission.WAIT  # three pending, however long


def test_no_pending_count_without_a_limit() -> None:
    g = guard(failed_binds=None)
    assert all(g.begin("10.0.0.1", 0.0) is Admission.GO for _ in range(100))
    assert g.begin(None, 0.0) is Admission.GO
    assert len(g) == 0


# --- live: smsc serve ------------------------------------------------------------------------


def test_a_password_guesser_is_refused_and_every_attempt_is_audited(
    run1: asyncio.Runner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main_() -> None:
        config = app_config(
            tmp_path,
            {"cheap": FAST},
            security={"failed_binds": 3, "failed_bind_window": 60, "bind_cooldown": 600},
        )
        async with running_app(config) as app:
            for guess in ("guess-1", "guess-2"):
                with pytest.raises(BindError) as info:
                    await bind_client(app, password=guess)
                assert info.value.status == CommandStatus.ESME_RINVPASWD
            with pytest.raises(BindError) as info:
                await bind_client(app, system_id="nobody", password="guess-3")
            assert info.value.status == CommandStatus.ESME_RINVSYSID
            # Three failures from 127.0.0.1: even the right password is refused now.
            with pytest.raises(BindError) as info:
                await bind_client(app)
            assert info.value.status == CommandStatus.ESME_RBINDFAIL
            # Another address binds as usual.
            other = await bind_client(app, local_host="127.0.0.2")
            await other.close()

    with caplog.at_level(logging.INFO, logger="smsc.audit"):
        run1.run(main_())
    audit = [r.getMessage() for r in caplog.records if r.name == "smsc.audit"]
    assert len(audit) == 5, audit
    assert audit[0].startswith(f"bind system_id='{SYSTEM_ID}' type=transceiver peer=127.0.0.1:")
    assert audit[0].endswith("tls=no result=ESME_RINVPASWD")
    assert "result=ESME_RINVSYSID (cool-down starts)" in audit[2]
    assert audit[3].endswith("result=ESME_RBINDFAIL (peer in bind cool-down)")
    assert "peer=127.0.0.2:" in audit[4]
    assert audit[4].endswith("result=ESME_ROK")
    everything = "\n".join(r.getMessage() for r in caplog.records)
    for secret in ("guess-1", "guess-2", "guess-3", PASSWORD):
        assert secret not in everything
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("127.0.0.1: 3 failed binds within 60s" in r.getMessage() for r in warnings)


def test_a_hashed_account_password_binds_off_the_event_loop(
    run1: asyncio.Runner, tmp_path: Path
) -> None:
    async def main_() -> None:
        hashed = hash_password(PASSWORD, SALT)
        config = app_config(
            tmp_path,
            {"cheap": FAST},
            accounts=[{"system_id": SYSTEM_ID, "password": hashed}],
        )
        async with running_app(config) as app:
            with pytest.raises(BindError) as info:
                await bind_client(app, password="wrong")
            assert info.value.status == CommandStatus.ESME_RINVPASWD
            esme = await bind_client(app)
            try:
                our_id = await esme.submit_ok("447700900123")
                await esme.receipt_for(our_id)
            finally:
                await esme.close()

    run1.run(main_())


def test_the_carrier_simulator_accepts_a_hashed_password(run1: asyncio.Runner) -> None:
    async def main_() -> None:
        hashed = hash_password("secret", SALT, **FAST_HASH)
        async with running_carrier(accounts=[{"system_id": "esme", "password": hashed}]) as carrier:
            with pytest.raises(BindError):
                await bind_esme(carrier, password="Secret")
            esme = await bind_esme(carrier, password="secret")
            await esme.close()

    run1.run(main_())


async def bind_answers(port: int, binds: list[bytes]) -> list[int]:
    """Write ``binds`` (encoded) in one go on one connection; the statuses of their
    answers, by sequence number."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"".join(binds))
        frames = FrameBuffer()
        answers: dict[int, int] = {}
        async with asyncio.timeout(DEADLINE):
            while len(answers) < len(binds):
                data = await reader.read(65536)
                assert data, f"closed after {len(answers)} answers"
                for frame in frames.feed(data):
                    pdu = decode(frame)
                    answers[pdu.sequence_number] = pdu.command_status
        return [answers[seq] for seq in sorted(answers)]
    finally:
        writer.close()


def wrong_bind(seq: int, password: str = "guess") -> bytes:
    return encode(BindTransceiver(seq, system_id=SYSTEM_ID, password=password))  # type: ignore[call-arg]


def hashed_account_config(tmp_path: Path, failed_binds: int) -> SmscConfig:
    hashed = hash_password(PASSWORD, SALT, **FAST_HASH)
    return app_config(
        tmp_path,
        {"cheap": FAST},
        accounts=[{"system_id": SYSTEM_ID, "password": hashed, "max_sessions": 20}],
        security={"failed_binds": failed_binds, "failed_bind_window": 60, "bind_cooldown": 600},
    )


def test_pipelined_guesses_get_at_most_failed_binds_passwords_checked(
    run1: asyncio.Runner, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """20 wrong binds in one write, to an account whose password is hashed (checked in a
    thread): 5 are checked, the other 15 are refused unseen once the cool-down starts."""

    async def main_() -> None:
        async with running_app(hashed_account_config(tmp_path, 5)) as app:
            statuses = await bind_answers(app.port, [wrong_bind(seq) for seq in range(1, 21)])
            assert statuses.count(CommandStatus.ESME_RINVPASWD) == 5, statuses
            assert statuses.count(CommandStatus.ESME_RBINDFAIL) == 15, statuses
            assert app.server is not None
            assert app.server.guard.blocks == 1
            assert app.server.guard.pending("127.0.0.1") == 0

    with caplog.at_level(logging.INFO, logger="smsc.audit"):
        run1.run(main_())
    audit = [r.getMessage() for r in caplog.records if r.name == "smsc.audit"]
    assert len(audit) == 20
    assert sum("(cool-down starts)" in line for line in audit) == 1


def test_concurrent_guesses_over_many_connections_from_one_address_are_limited_too(
    run1: asyncio.Runner, tmp_path: Path
) -> None:
    async def main_() -> None:
        async with running_app(hashed_account_config(tmp_path, 3)) as app:
            answers = await asyncio.gather(
                *(bind_answers(app.port, [wrong_bind(1, f"guess-{i}")]) for i in range(12))
            )
            statuses = [status for (status,) in answers]
            assert statuses.count(CommandStatus.ESME_RINVPASWD) == 3, statuses
            assert statuses.count(CommandStatus.ESME_RBINDFAIL) == 9, statuses

    run1.run(main_())


def test_many_binds_at_once_with_the_right_password_all_get_in(
    run1: asyncio.Runner, tmp_path: Path
) -> None:
    """An address binding more sessions at once than failed_binds, with the right
    password, waits its turn for the check and is never refused."""

    async def main_() -> None:
        async with running_app(hashed_account_config(tmp_path, 2)) as app:
            esmes = await asyncio.gather(*(bind_client(app) for _ in range(8)))
            try:
                assert app.server is not None
                assert len(app.server.binds) == 8
                assert app.server.guard.blocks == 0
            finally:
                for esme in esmes:
                    await esme.close()

    run1.run(main_())
