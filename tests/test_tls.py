"""SMPP over TLS: smsc serve's TLS listener, the carrier simulator's TLS listener, and the
router's TLS binds to carriers; certificate problems refused as configuration errors.

A throwaway CA (``trustme``) signs a certificate for 127.0.0.1 / localhost and one for a
client; every file lives under ``tmp_path``. Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import smpplib.client
import smpplib.consts
import trustme
from carrier_fixtures import ESME_SESSION, Esme, carrier_config, running_carrier
from carrier_fixtures import PASSWORD as CARRIER_PW
from carrier_fixtures import SYSTEM_ID as CARRIER_ID
from loops import Run
from smsc_fixtures import (
    DEADLINE,
    FAST,
    PASSWORD,
    SYSTEM_ID,
    app_config,
    bind_client,
    running_app,
)

from smppcore.aio import BindError, ConnectionClosed, Handler, connect, start_server
from smppcore.codec import encode
from smppcore.config import ConfigError
from smppcore.constants import CommandStatus
from smppcore.pdu import BindTransceiver
from smppcore.session import SessionConfig
from smppcore.tls import ClientTls, ServerTls, TlsError, client_context, server_context
from smsc.app import App, check_tls
from smsc.cli import main
from smsc.config import SimulatedCarrier, SmscConfig


class Pki:
    """A CA, a server certificate (127.0.0.1, localhost) and a client certificate, as files."""

    def __init__(self, root: Path) -> None:
        self.ca = trustme.CA()
        self.ca_pem = root / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        self.cert = root / "server.pem"
        self.key = root / "server.key"
        server.cert_chain_pems[0].write_to_path(str(self.cert))
        server.private_key_pem.write_to_path(str(self.key))
        client = self.ca.issue_cert("esme.example")
        self.client_cert = root / "client.pem"
        self.client_key = root / "client.key"
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))

    def listen_tls(self, *, client_ca: bool = False) -> dict[str, Any]:
        return {
            "host": "127.0.0.1",
            "port": 0,
            "cert": str(self.cert),
            "key": str(self.key),
            **({"client_ca": str(self.ca_pem)} if client_ca else {}),
        }

    def client(self, *, with_cert: bool = False) -> ssl.SSLContext:
        if with_cert:
            return client_context(
                ClientTls(ca=str(self.ca_pem), cert=str(self.client_cert), key=str(self.client_key))
            )
        return client_context(ClientTls(ca=str(self.ca_pem)))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def tls_bind(app: App, ctx: ssl.SSLContext) -> Esme:
    """A transceiver bound over the TLS listener (raises when refused)."""
    esme = Esme()
    esme.conn = await connect(
        "127.0.0.1", app.tls_port, config=ESME_SESSION, handler=esme, ssl=ctx, timeout=DEADLINE
    )
    try:
        async with asyncio.timeout(DEADLINE):
            await esme.c.bind(BindTransceiver(system_id=SYSTEM_ID, password=PASSWORD))
    except BaseException:
        await esme.close()
        raise
    return esme


# --- smsc serve's TLS listener --------------------------------------------------------------


def test_an_esme_binds_over_tls_submits_and_gets_its_receipt(
    run: Run, tmp_path: Path, pki: Pki
) -> None:
    async def main_() -> None:
        config = app_config(tmp_path, {"cheap": FAST}, listen_tls=pki.listen_tls())
        async with running_app(config) as app:
            assert app.tls_port not in (0, app.port)
            esme = await tls_bind(app, pki.client())
            try:
                assert esme.c.transport is not None
                assert esme.c.transport.get_extra_info("ssl_object") is not None
                our_id = await esme.submit_ok("447700900123", text=b"over TLS")
                receipt = await esme.receipt_for(our_id)
                assert b"stat:DELIVRD" in receipt.short_message
            finally:
                await esme.close()
            plain = await bind_client(app)  # the plain listener still serves
            await plain.close()

    run(main_())


def test_smpplib_binds_and_submits_over_tls(run1: Run, tmp_path: Path, pki: Pki) -> None:
    async def main_() -> None:
        config = app_config(tmp_path, {"cheap": FAST}, listen_tls=pki.listen_tls())
        async with running_app(config) as app:
            ctx = pki.client()
            ctx.check_hostname = False  # smpplib wraps without a server_hostname; CA still checked
            await asyncio.to_thread(smpplib_session, app.tls_port, ctx)

    run1(main_())


def smpplib_session(port: int, ctx: ssl.SSLContext) -> None:
    """smpplib (blocking): bind a transceiver over TLS, submit, read the submit_sm_resp."""
    resps: list[Any] = []
    client = smpplib.client.Client(
        "127.0.0.1", port, timeout=DEADLINE, ssl_context=ctx, allow_unknown_opt_params=True
    )
    client.set_message_sent_handler(lambda pdu, **kw: resps.append(pdu))
    client.connect()
    try:
        client.bind_transceiver(system_id=SYSTEM_ID, password=PASSWORD)
        client.send_message(
            source_addr="447700900123", destination_addr="447700900456", short_message=b"Hi"
        )
        deadline = time.monotonic() + DEADLINE
        while not resps and time.monotonic() < deadline:
            client.read_once()
        assert resps, "no submit_sm_resp"
        assert resps[0].status == smpplib.consts.SMPP_ESME_ROK
        assert resps[0].message_id
        client.unbind()
    finally:
        client.disconnect()


def test_tls_1_1_is_refused_and_1_2_accepted(run1: Run, tmp_path: Path, pki: Pki) -> None:
    assert server_context(ServerTls(str(pki.cert), str(pki.key))).minimum_version == (
        ssl.TLSVersion.TLSv1_2
    )

    async def main_() -> None:
        config = app_config(tmp_path, {"cheap": FAST}, listen_tls=pki.listen_tls())
        async with running_app(config) as app:
            old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            old.load_verify_locations(cafile=str(pki.ca_pem))
            old.set_ciphers("DEFAULT:@SECLEVEL=0")
            with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point
                warnings.simplefilter("ignore", DeprecationWarning)
                old.minimum_version = ssl.TLSVersion.TLSv1_1
                old.maximum_version = ssl.TLSVersion.TLSv1_1
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await connect("127.0.0.1", app.tls_port, ssl=old, timeout=DEADLINE)

            tls12 = pki.client()
            tls12.maximum_version = ssl.TLSVersion.TLSv1_2
            esme = await tls_bind(app, tls12)
            assert esme.c.transport is not None
            ssl_object = esme.c.transport.get_extra_info("ssl_object")
            assert ssl_object.version() == "TLSv1.2"
            await esme.close()

    run1(main_())


def test_plaintext_on_the_tls_port_gets_no_smpp_answer(run1: Run, tmp_path: Path, pki: Pki) -> None:
    async def main_() -> None:
        config = app_config(tmp_path, {"cheap": FAST}, listen_tls=pki.listen_tls())
        async with running_app(config) as app:
            reader, writer = await asyncio.open_connection("127.0.0.1", app.tls_port)
            try:
                writer.write(
                    encode(BindTransceiver(1, system_id=SYSTEM_ID, password=PASSWORD))  # type: ignore[call-arg]
                )
                async with asyncio.timeout(DEADLINE):
                    answer = await reader.read()  # to EOF: the server closes
                # Nothing SMPP comes back (at most a TLS alert record, type 0x15).
                assert answer[4:8] != bytes.fromhex("80000009")
                assert answer == b"" or answer[0] == 0x15
            finally:
                writer.close()
            assert app.server is not None
            assert not app.server.connections  # none got through

    run1(main_())


def test_a_peer_that_never_starts_the_handshake_is_closed_at_session_init_timeout(
    run: Run, pki: Pki
) -> None:
    """A TCP connection to the TLS port that says nothing holds a socket until the handshake
    deadline, which is the session's session_init_timeout (the time it has to bind)."""

    async def main() -> None:
        context = server_context(ServerTls(cert=str(pki.cert), key=str(pki.key)))
        config = SessionConfig(session_init_timeout=0.2)
        server = await start_server(lambda conn: Handler(), config=config, ssl=context)
        try:
            port = server.sockets[0].getsockname()[1]
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            opened = loop.time()
            try:
                async with asyncio.timeout(DEADLINE):
                    assert await reader.read() == b""  # to EOF: the server closed it
            finally:
                writer.close()
            assert loop.time() - opened < DEADLINE / 2
        finally:
            server.close()

    run(main())


class AuditLines(logging.Handler):
    """Collects the ``smsc.audit`` lines that mention a TLS handshake; ``wait(n)`` returns
    once ``n`` of them are in (deadline: DEADLINE)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self._changed = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if "tls handshake" in record.getMessage():
            self.lines.append(record.getMessage())
            self._changed.set()

    async def wait(self, n: int) -> list[str]:
        async with asyncio.timeout(DEADLINE):
            while len(self.lines) < n:
                self._changed.clear()
                await self._changed.wait()
        return self.lines


@pytest.fixture
def audit_lines() -> Iterator[AuditLines]:
    logger = logging.getLogger("smsc.audit")
    handler = AuditLines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def where(writer: asyncio.StreamWriter) -> str:
    host, port = writer.get_extra_info("sockname")[:2]
    return f"{host}:{port}"


def test_connections_in_their_tls_handshake_count_against_max_connections(
    run: Run, tmp_path: Path, pki: Pki, audit_lines: AuditLines
) -> None:
    """Connections to the TLS port that never say hello fill listen.max_connections like
    any unbound connection: at the limit the oldest is closed (long before its handshake
    deadline, 60 s here), and a client that completes its handshake still gets in."""

    async def main_() -> None:
        config = app_config(
            tmp_path,
            {"cheap": FAST},
            listen={"host": "127.0.0.1", "port": 0, "max_connections": 2},
            listen_tls=pki.listen_tls(),
        )
        async with running_app(config) as app:
            assert app.server is not None
            silent = [await asyncio.open_connection("127.0.0.1", app.tls_port) for _ in range(3)]
            try:
                async with asyncio.timeout(DEADLINE):
                    assert await silent[0][0].read() == b""  # the oldest one is closed
                assert len(app.server.connections) == 2
                assert app.server.metrics.connections_dropped == 1
                esme = await tls_bind(app, pki.client())  # closes the next oldest
                try:
                    async with asyncio.timeout(DEADLINE):
                        assert await silent[1][0].read() == b""
                    our_id = await esme.submit_ok("447700900123")
                    await esme.receipt_for(our_id)
                finally:
                    await esme.close()
                lines = await audit_lines.wait(2)
                assert f"peer={where(silent[0][1])} reason=closed by the server" in lines[0]
                assert f"peer={where(silent[1][1])} reason=closed by the server" in lines[1]
            finally:
                for _, writer in silent:
                    writer.close()

    run(main_())


def test_a_tls_connection_is_refused_before_its_handshake_when_every_slot_is_bound(
    run1: Run, tmp_path: Path, pki: Pki
) -> None:
    async def main_() -> None:
        config = app_config(
            tmp_path,
            {"cheap": FAST},
            listen={"host": "127.0.0.1", "port": 0, "max_connections": 1},
            listen_tls=pki.listen_tls(),
        )
        async with running_app(config) as app:
            assert app.server is not None
            esme = await bind_client(app)
            try:
                with pytest.raises((ssl.SSLError, ConnectionError)):
                    await connect("127.0.0.1", app.tls_port, ssl=pki.client(), timeout=DEADLINE)
                assert app.server.metrics.connections_dropped == 1
                await esme.submit_ok("447700900123")  # the bound session is unaffected
            finally:
                await esme.close()

    run1(main_())


def test_a_failed_or_timed_out_handshake_gets_one_audit_line(
    run: Run, tmp_path: Path, pki: Pki, audit_lines: AuditLines
) -> None:
    async def main_() -> None:
        session = {"window": 100, "inbound_window": 100, "session_init_timeout": 0.5}
        config = app_config(tmp_path, {"cheap": FAST}, session=session, listen_tls=pki.listen_tls())
        async with running_app(config) as app:
            assert app.server is not None
            reader, garbage = await asyncio.open_connection("127.0.0.1", app.tls_port)
            silent_reader, silent = await asyncio.open_connection("127.0.0.1", app.tls_port)
            try:
                garbage.write(b"\0" * 64)  # not a ClientHello
                async with asyncio.timeout(DEADLINE):
                    answer = await reader.read()
                    assert answer == b"" or answer[0] == 0x15  # at most a TLS alert
                    assert await silent_reader.read() == b""  # at the handshake deadline
                lines = await audit_lines.wait(2)
            finally:
                garbage.close()
                silent.close()
            failed = [line for line in lines if f"peer={where(garbage)} " in line]
            timed_out = [line for line in lines if f"peer={where(silent)} " in line]
            assert len(failed) == len(timed_out) == 1, lines
            assert failed[0].startswith("tls handshake failed ")
            assert "reason=no handshake" not in failed[0]
            assert timed_out[0].endswith("reason=no handshake within 0.5s")
            assert not app.server.connections  # both forgotten

    run(main_())


def test_client_certificate_required_when_client_ca_is_set(
    run1: Run, tmp_path: Path, pki: Pki
) -> None:
    async def main_() -> None:
        listen_tls = pki.listen_tls(client_ca=True)
        config = app_config(tmp_path, {"cheap": FAST}, listen_tls=listen_tls)
        async with running_app(config) as app:
            good = await tls_bind(app, pki.client(with_cert=True))
            try:
                with pytest.raises((ssl.SSLError, ConnectionError, ConnectionClosed, BindError)):
                    await tls_bind(app, pki.client())  # no certificate
                # The session with a certificate is unaffected.
                our_id = await good.submit_ok("447700900123")
                await good.receipt_for(our_id)
            finally:
                await good.close()

    run1(main_())


# --- the router to a carrier over TLS (the simulator's TLS listener) -------------------------


def with_simulator_tls(config: SmscConfig, tls: dict[str, str]) -> SmscConfig:
    """``config`` with every simulated carrier listening over TLS (``tls``: cert, key, ...)."""
    sims = tuple(
        SimulatedCarrier(name=s.name, config={**s.config, "tls": tls})
        for s in config.simulated_carriers
    )
    return msgspec.structs.replace(config, simulated_carriers=sims)


def test_router_reaches_a_carrier_over_mutual_tls_and_the_receipt_comes_back(
    run: Run, tmp_path: Path, pki: Pki
) -> None:
    async def main_() -> None:
        upstream_tls = {
            "ca": str(pki.ca_pem),
            "cert": str(pki.client_cert),
            "key": str(pki.client_key),
            "server_hostname": "localhost",
        }
        config = app_config(tmp_path, {"secure": FAST}, upstreams={"secure": {"tls": upstream_tls}})
        config = with_simulator_tls(
            config, {"cert": str(pki.cert), "key": str(pki.key), "client_ca": str(pki.ca_pem)}
        )
        async with running_app(config) as app:
            carrier = app.simulators["secure"]
            assert carrier.config.tls is not None
            assert carrier.config.tls.client_ca is not None
            esme = await bind_client(app)
            try:
                our_id = await esme.submit_ok("447700900123", text=b"via TLS")
                receipt = await esme.receipt_for(our_id)
                assert b"stat:DELIVRD" in receipt.short_message
            finally:
                await esme.close()

    run(main_())


def test_a_carrier_certificate_from_an_untrusted_ca_is_refused(
    run1: Run, tmp_path: Path, pki: Pki
) -> None:
    (tmp_path / "other").mkdir()
    other = Pki(tmp_path / "other")

    async def main_() -> None:
        tls = ServerTls(cert=str(pki.cert), key=str(pki.key))
        async with running_carrier(carrier_config(tls=msgspec.to_builtins(tls))) as carrier:
            untrusted = client_context(ClientTls(ca=str(other.ca_pem)))
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect("127.0.0.1", carrier.port, ssl=untrusted, timeout=DEADLINE)
            wrong_name = client_context(
                ClientTls(ca=str(pki.ca_pem), server_hostname="carrier.example")
            )
            with pytest.raises(ssl.SSLCertVerificationError):
                await connect(
                    "127.0.0.1",
                    carrier.port,
                    ssl=wrong_name,
                    server_hostname="carrier.example",
                    timeout=DEADLINE,
                )
            trusted = client_context(ClientTls(ca=str(pki.ca_pem)))
            conn = await connect("127.0.0.1", carrier.port, ssl=trusted, timeout=DEADLINE)
            resp = await conn.bind(BindTransceiver(system_id=CARRIER_ID, password=CARRIER_PW))
            assert resp.command_status == CommandStatus.ESME_ROK
            await conn.unbind()

    run1(main_())


# --- certificate problems are configuration errors -----------------------------------------


def test_missing_bad_and_mismatched_files_are_config_errors_naming_key_and_file(
    tmp_path: Path, pki: Pki
) -> None:
    missing = tmp_path / "nope.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")

    def listener_error(**tls: str) -> ConfigError:
        config = app_config(tmp_path, {"cheap": FAST}, listen_tls={**pki.listen_tls(), **tls})
        with pytest.raises(ConfigError) as info:
            check_tls(config, source="smsc.yaml")
        return info.value

    err = listener_error(cert=str(missing))
    assert err.path == "$.listen_tls.cert"
    assert str(missing) in err.reason
    assert "No such file" in err.reason
    assert str(err).startswith("smsc.yaml: $.listen_tls.cert: ")

    err = listener_error(cert=str(garbage))
    assert (err.path, str(garbage) in err.reason) == ("$.listen_tls.cert", True)

    err = listener_error(key=str(pki.client_key))  # someone else's key
    assert err.path == "$.listen_tls.key"
    assert str(pki.client_key) in err.reason

    err = listener_error(client_ca=str(garbage))
    assert err.path == "$.listen_tls.client_ca"

    config = app_config(
        tmp_path, {"cheap": FAST}, upstreams={"cheap": {"tls": {"ca": str(missing)}}}
    )
    with pytest.raises(ConfigError) as info:
        check_tls(config)
    assert info.value.path == "$.router.carriers[0].tls.ca"


def test_an_encrypted_key_is_refused_without_prompting(tmp_path: Path, pki: Pki) -> None:
    server = pki.ca.issue_cert("localhost")
    key = tmp_path / "encrypted.key"
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(server.private_key_pem.bytes(), password=None)
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    cert = tmp_path / "cert.pem"
    server.cert_chain_pems[0].write_to_path(str(cert))
    with pytest.raises(TlsError) as info:
        server_context(ServerTls(str(cert), str(key)))
    assert info.value.key == "key"
    assert "encrypted" in info.value.reason


def test_client_tls_needs_cert_and_key_together() -> None:
    with pytest.raises(ValueError, match="cert and key go together"):
        ClientTls(cert="client.pem")


def test_serve_and_carrier_exit_2_naming_the_certificate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "missing.pem"
    serve_yaml = tmp_path / "smsc.yaml"
    serve_yaml.write_text(
        f"listen_tls: {{port: 0, cert: '{missing}', key: '{missing}'}}\n"
        f"router: {{store: {{path: '{tmp_path / 'smsc.db'}'}}}}\n"
    )
    assert main(["serve", "--config", str(serve_yaml)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"smsc: {serve_yaml}: $.listen_tls.cert: {missing}: ")
    assert not (tmp_path / "smsc.db").exists()  # nothing started

    carrier_yaml = tmp_path / "carrier.yaml"
    carrier_yaml.write_text(f"port: 0\ntls: {{cert: '{missing}', key: '{missing}'}}\n")
    assert main(["carrier", "--config", str(carrier_yaml)]) == 2
    assert capsys.readouterr().err.startswith(f"smsc: {carrier_yaml}: $.tls.cert: {missing}: ")
