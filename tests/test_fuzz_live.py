"""Hostile input against a live ``smsc serve`` (issue 6).

One ``python -m smsc serve`` child (uvloop, a simulated carrier behind the router, short
session timers) takes, over loopback: hypothesis-generated malformed PDUs (unknown command
ids, bad command_length, mutated bodies behind a valid header, requests in the wrong
state, random bytes, streams cut short), half PDUs that never complete, a peer that writes
without reading, and floods of connections that never bind — while a well-behaved client
binds and submits with receipts. Each malformed input must get the SMPP 3.4 answer
(generic_nack ESME_RINVCMDLEN / ESME_RINVCMDID, or the request's own response with the
right status, or a close after a framing error), the server must keep serving, and its
memory and descriptors must stay bounded.

Clients are plain blocking sockets driven by smppcore's codec, so each byte on the wire is
the test's choice. Every read has a deadline; nothing sleeps to wait.

Hostile connections each come from an address of their own in 127.1.0.0/16 (any 127/8
address reaches loopback), the well-behaved client from 127.0.0.1. The bind guard counts
failed binds per peer address, rightly: the fuzzer's wrong passwords must cool down the
fuzzer, not the client that binds correctly beside it (before, hypothesis's bad binds put
127.0.0.1 in cool-down and the good binds of later examples were refused at random).
``test_bind_guard_cools_down_the_guesser_and_spares_the_rest`` shows the guard still trips.

``HYPOTHESIS_PROFILE=fuzz .venv/bin/pytest tests/test_fuzz_live.py`` runs a long fuzz (fifty
times the examples, random draws; see profiles.py); ``make test`` runs the derandomized ci
profile.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from profiles import examples
from smsc_fixtures import (
    app_config,
    bind_client,
    running_app,
    simulator,
    upstream,
    wait_final_receipts,
)

from smppcore.codec import DEFAULT_MAX_PDU_LENGTH, FrameBuffer, decode, encode
from smppcore.constants import RESPONSE_BIT, CommandId, CommandStatus
from smppcore.pdu import (
    PDU_CLASSES,
    BindReceiver,
    BindTransceiver,
    BindTransmitter,
    CancelSm,
    DataSm,
    DeliverSm,
    DeliverSmResp,
    EnquireLink,
    EnquireLinkResp,
    GenericNack,
    Pdu,
    QuerySm,
    ReplaceSm,
    SubmitSm,
    SubmitSmResp,
    UnbindResp,
)
from smppcore.tlv import Tag

ROOT = Path(__file__).resolve().parent.parent
#: Every wait on the server; nothing should come near it.
DEADLINE = 10.0
STARTUP_DEADLINE = 60.0
EXAMPLES = examples(40)

GOOD_ID, GOOD_PW = "acme", "acme-pw"
FUZZ_ID, FUZZ_PW = "fuzz", "fuzz-pw"
#: The sequence number of the enquire_link sent after each hostile input: once its answer
#: is back, every answer to what came before it is too (the server answers in order).
MARK = 0x7FFFFFF0
MAX_CONNECTIONS = 1000
SESSION_INIT = 2.0
SLOT_TIMEOUT = 1.0
INACTIVITY = 2.0
#: The bind guard as configured for this server (SMSC defaults, written out).
FAILED_BINDS, FAILED_BIND_WINDOW, BIND_COOLDOWN = 5, 60.0, 300.0
_S = CommandStatus
_HEADER = struct.Struct(">IIII")

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


# --- the server -------------------------------------------------------------------------


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    port: int
    http_port: int
    stderr: Path

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
        assert match, status
        return int(match.group(1))

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def metric(self, name: str) -> float:
        with socket.create_connection(("127.0.0.1", self.http_port), timeout=DEADLINE) as s:
            s.sendall(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
        match = re.search(rf"^{name} (\S+)$", body.decode(), re.M)
        assert match, name
        return float(match.group(1))


def _config(tmp: Path) -> dict[str, Any]:
    return {
        "listen": {"host": "127.0.0.1", "port": 0, "max_connections": MAX_CONNECTIONS},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "session": {
            "window": 100,
            "inbound_window": 100,
            "slot_timeout": SLOT_TIMEOUT,
            "enquire_link_interval": None,
            "inactivity_timeout": INACTIVITY,
            "session_init_timeout": SESSION_INIT,
        },
        "security": {
            "failed_binds": FAILED_BINDS,
            "failed_bind_window": FAILED_BIND_WINDOW,
            "bind_cooldown": BIND_COOLDOWN,
        },
        "accounts": [
            {"system_id": GOOD_ID, "password": GOOD_PW, "max_window": 100},
            {"system_id": FUZZ_ID, "password": FUZZ_PW, "max_sessions": 1000},
        ],
        "router": {
            "carriers": [upstream("sim", binds=2, window=200)],
            "routes": [{"prefix": "", "carriers": [{"carrier": "sim", "price": "0.001"}]}],
            "store": {"path": str(tmp / "smsc.db")},
        },
        "simulated_carriers": [{"name": "sim", "config": simulator()}],
        "log_level": os.environ.get("SMSC_FUZZ_LOG", "warning"),
    }


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("fuzz")
    conf = tmp / "smsc.yaml"
    conf.write_text(json.dumps(_config(tmp)))  # JSON is YAML
    stderr = tmp / "serve.stderr"
    with stderr.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "smsc", "serve", "--config", str(conf)],
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    try:
        assert proc.stdout is not None
        out = b""
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            end = time.monotonic() + STARTUP_DEADLINE
            while b"listening on" not in out:
                assert sel.select(end - time.monotonic()), "smsc serve did not start in time"
                data = os.read(proc.stdout.fileno(), 4096)
                assert data, stderr.read_text()
                out += data
        text = out.decode()
        http = re.search(r"on http://127\.0\.0\.1:(\d+)", text)
        listening = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        assert http, text
        assert listening, text
        port, http_port = int(listening.group(1)), int(http.group(1))
        yield Serve(proc, port, http_port, stderr)
        assert proc.poll() is None, f"smsc serve died: {stderr.read_text()}"
    finally:
        proc.terminate()
        try:
            proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        text = stderr.read_text()
        assert "Traceback" not in text, text


# --- a blocking client that sends exactly what the test says -----------------------------


class Closed(Exception):
    """The server closed the connection."""


class Peer:
    """One TCP connection; reads are decoded with smppcore (the server must only ever send
    well-formed PDUs) and deliver_sm / enquire_link from the server are answered."""

    def __init__(self, port: int, source: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection(
            ("127.0.0.1", port), timeout=DEADLINE, source_address=(source, 0)
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._frames = FrameBuffer(DEFAULT_MAX_PDU_LENGTH)
        self._ready: list[bytes] = []
        self.delivered: list[DeliverSm] = []
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_pdu(self, pdu: Pdu) -> None:
        self.sock.sendall(encode(pdu))

    def read(self, deadline: float) -> Pdu:
        """The next PDU from the server; Closed on EOF or reset."""
        while not self._ready:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no PDU from the server in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Closed from exc
            except TimeoutError:
                continue
            if not data:
                raise Closed
            self._ready.extend(self._frames.feed(data))
            assert self._frames.error is None, self._frames.error
        pdu = decode(self._ready.pop(0))
        if isinstance(pdu, DeliverSm):
            self.delivered.append(pdu)
            self.send_pdu(DeliverSmResp(sequence_number=pdu.sequence_number))
        elif isinstance(pdu, EnquireLink):
            self.send_pdu(EnquireLinkResp(sequence_number=pdu.sequence_number))
        return pdu

    def read_until(self, when: float) -> Pdu | None:
        """The next PDU, or None once ``when`` has come."""
        try:
            return self.read(when)
        except TimeoutError:
            return None

    def request(self, pdu: Pdu) -> Pdu:
        """Send ``pdu`` and return the response with its sequence number."""
        self.send_pdu(pdu)
        deadline = time.monotonic() + DEADLINE
        while True:
            got = self.read(deadline)
            if got.command_id & RESPONSE_BIT and got.sequence_number == pdu.sequence_number:
                return got

    def bind(self, kind: type[Pdu], system_id: str, password: str) -> None:
        resp = self.request(kind(self.next_seq(), system_id=system_id, password=password))  # type: ignore[call-arg]
        assert resp.command_status == _S.ESME_ROK, resp

    def answers_until_mark(self, *expected: int) -> tuple[list[Pdu], bool]:
        """Send the marker enquire_link; return the responses received until its answer and
        an answer to each sequence number of ``expected`` (a submit_sm is answered once
        the router took it, possibly after the marker), and whether the server closed the
        connection instead."""
        try:
            self.send_pdu(EnquireLink(MARK))
        except (ConnectionResetError, BrokenPipeError):
            pass  # already closed: read what it sent before
        deadline = time.monotonic() + DEADLINE
        out: list[Pdu] = []
        waiting = {MARK, *expected}
        while waiting:
            try:
                pdu = self.read(deadline)
            except Closed:
                return out, True
            if pdu.command_id & RESPONSE_BIT:
                waiting.discard(pdu.sequence_number)
                if pdu.sequence_number != MARK or not isinstance(pdu, EnquireLinkResp):
                    out.append(pdu)
        return out, False

    def wait_closed(self, deadline: float) -> None:
        """Read (and drop) until the server closes; TimeoutError at the deadline."""
        while True:
            try:
                self.read(deadline)
            except Closed:
                return


def header(length: int, cid: int, seq: int, status: int = 0) -> bytes:
    return _HEADER.pack(length, cid, status, seq)


def with_body(cid: int, seq: int, body: bytes) -> bytes:
    """A PDU with a valid header (command_length = 16 + len(body)) and any body."""
    return header(16 + len(body), cid, seq) + body


BINDS: dict[str, type[Pdu] | None] = {
    "open": None,
    "tx": BindTransmitter,
    "rx": BindReceiver,
    "trx": BindTransceiver,
}


_HOSTILE = itertools.count(1)


def hostile_address() -> str:
    """A loopback address no connection of this run has used: 127.1.0.1, 127.1.0.2, ..."""
    n = next(_HOSTILE)
    return f"127.{1 + (n >> 16) % 254}.{(n >> 8) & 0xFF}.{n & 0xFF}"


def fuzz_peer(serve: Serve, state: str) -> Peer:
    """A connection from a fresh hostile address, bound as ``state`` says."""
    peer = Peer(serve.port, hostile_address())
    kind = BINDS[state]
    if kind is not None:
        try:
            peer.bind(kind, FUZZ_ID, FUZZ_PW)
        except BaseException:
            peer.close()
            raise
    return peer


def assert_serving(serve: Serve) -> None:
    """The server is up and binds, submits and answers as before."""
    assert serve.alive(), serve.stderr.read_text()
    with Peer(serve.port) as peer:
        peer.bind(BindTransmitter, FUZZ_ID, FUZZ_PW)
        resp = peer.request(SubmitSm(peer.next_seq(), destination_addr="447700900001"))
        assert isinstance(resp, SubmitSmResp), resp
        assert resp.command_status == _S.ESME_ROK, resp
        assert resp.message_id


# --- malformed PDUs: the SMPP 3.4 answer ---------------------------------------------------

UNKNOWN_IDS = st.integers(0, 0xFFFFFFFF).filter(lambda c: c not in PDU_CLASSES)
SEQ = st.integers(1, 0x7FFFFFEF)
STATES = st.sampled_from(sorted(BINDS))


@FUZZ
@given(state=STATES, cid=UNKNOWN_IDS, seq=SEQ, body=st.binary(max_size=64))
def test_unknown_command_id_gets_generic_nack_rinvcmdid(
    serve: Serve, state: str, cid: int, seq: int, body: bytes
) -> None:
    with fuzz_peer(serve, state) as peer:
        peer.send(with_body(cid, seq, body))
        answers, closed = peer.answers_until_mark(seq)
    assert not closed
    assert answers == [GenericNack(seq, _S.ESME_RINVCMDID)]


BAD_LENGTHS = st.one_of(st.integers(0, 15), st.integers(DEFAULT_MAX_PDU_LENGTH + 1, 0xFFFFFFFF))


@FUZZ
@given(
    state=STATES,
    length=BAD_LENGTHS,
    cid=st.integers(0, 0xFFFFFFFF),
    seq=SEQ,
    tail=st.binary(max_size=32),
)
def test_bad_command_length_gets_generic_nack_rinvcmdlen_then_close(
    serve: Serve, state: str, length: int, cid: int, seq: int, tail: bytes
) -> None:
    with fuzz_peer(serve, state) as peer:
        peer.send(header(length, cid, seq) + tail)
        answers, closed = peer.answers_until_mark()
    assert closed, "the stream cannot be trusted after a bad command_length"
    assert answers == [GenericNack(seq, _S.ESME_RINVCMDLEN)]


#: Well-formed requests an ESME may send; the fuzzer mutates their bodies.
REQUESTS: list[Pdu] = [
    SubmitSm(
        source_addr="447700900123",
        destination_addr="447700900456",
        short_message=b"hello",
        tlvs=(),
    ),
    DataSm(destination_addr="447700900456", source_addr="1234"),
    QuerySm(message_id="0000001A", source_addr="447700900123"),
    CancelSm(message_id="0000001A", destination_addr="447700900456"),
    ReplaceSm(message_id="0000001A", source_addr="447700900123", short_message=b"x"),
    BindTransmitter(system_id=FUZZ_ID, password=FUZZ_PW),
    BindTransceiver(system_id=FUZZ_ID, password=FUZZ_PW),
    DeliverSm(destination_addr="1234", short_message=b"from the wrong side"),
    EnquireLink(),
]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes]:
    """(command_id, body): a valid request's body with flipped, cut or added octets."""
    pdu = draw(st.sampled_from(REQUESTS))
    body = bytearray(encode(pdu)[16:])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "grow", "zap"]))
        if kind == "flip" and body:
            i = draw(st.integers(0, len(body) - 1))
            body[i] = draw(st.integers(0, 255))
        elif kind == "cut" and body:
            del body[draw(st.integers(0, len(body) - 1)) :]
        elif kind == "grow":
            at = draw(st.integers(0, len(body)))
            body[at:at] = draw(st.binary(min_size=1, max_size=300))
        elif kind == "zap" and body:
            i = draw(st.integers(0, len(body) - 1))
            body[i] = 0
    return pdu.command_id, bytes(body)


@FUZZ
@given(state=STATES, request=mutated(), seq=SEQ)
def test_mutated_body_behind_valid_header_gets_one_answer(
    serve: Serve, state: str, request: tuple[int, bytes], seq: int
) -> None:
    cid, body = request
    cls = PDU_CLASSES[cid]
    with fuzz_peer(serve, state) as peer:
        peer.send(with_body(cid, seq, body))
        answers, closed = peer.answers_until_mark(seq)
    assert not closed, "a PDU with a valid length leaves the stream readable"
    assert len(answers) == 1, answers
    (answer,) = answers
    assert answer.sequence_number == seq
    assert type(answer) in (cls.response_class, GenericNack), answer
    if isinstance(answer, GenericNack):
        assert answer.command_status != _S.ESME_ROK


#: (state, request, expected status): requests outside the session table (Table 2-1).
WRONG_STATE: list[tuple[str, Pdu, int]] = [
    ("open", SubmitSm(destination_addr="4477"), _S.ESME_RINVBNDSTS),
    ("open", DataSm(destination_addr="4477"), _S.ESME_RINVBNDSTS),
    ("open", QuerySm(message_id="1"), _S.ESME_RINVBNDSTS),
    ("rx", SubmitSm(destination_addr="4477"), _S.ESME_RINVBNDSTS),
    ("rx", CancelSm(message_id="1"), _S.ESME_RINVBNDSTS),
    ("tx", BindReceiver(system_id=FUZZ_ID, password=FUZZ_PW), _S.ESME_RALYBND),
    ("trx", BindTransceiver(system_id=FUZZ_ID, password=FUZZ_PW), _S.ESME_RALYBND),
    ("open", BindTransmitter(system_id=FUZZ_ID, password="wrong"), _S.ESME_RINVPASWD),
    ("open", BindTransmitter(system_id="nobody", password="x"), _S.ESME_RINVSYSID),
]


@pytest.mark.parametrize(
    ("state", "request_pdu", "status"),
    WRONG_STATE,
    ids=[f"{s}-{type(p).__name__}-{_S(st_).name}" for s, p, st_ in WRONG_STATE],
)
def test_request_in_the_wrong_state_gets_its_status(
    serve: Serve, state: str, request_pdu: Pdu, status: int
) -> None:
    with fuzz_peer(serve, state) as peer:
        resp = peer.request(msgspec.structs.replace(request_pdu, sequence_number=77))
        assert type(resp) is request_pdu.response_class
        assert resp.command_status == status
        answers, closed = peer.answers_until_mark()
        assert (answers, closed) == ([], False)


GUESS = st.one_of(
    st.tuples(
        st.sampled_from([FUZZ_ID, GOOD_ID]),
        st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=8).filter(
            lambda p: p not in (FUZZ_PW, GOOD_PW)
        ),
    ),
    st.tuples(st.sampled_from(["nobody", "root", "smppclient"]), st.just("secret")),
)


@FUZZ
@given(guesses=st.lists(GUESS, min_size=FAILED_BINDS, max_size=FAILED_BINDS))
def test_bind_guard_cools_down_the_guesser_and_spares_the_rest(
    serve: Serve, guesses: list[tuple[str, str]]
) -> None:
    """failed_binds wrong binds from one address, each answered for what it got wrong; then
    that address is refused even with the right password, while a client elsewhere binds."""
    guesser = hostile_address()
    for system_id, password in guesses:
        with Peer(serve.port, guesser) as peer:
            resp = peer.request(
                BindTransceiver(peer.next_seq(), system_id=system_id, password=password)
            )
        known = system_id in (FUZZ_ID, GOOD_ID)
        assert resp.command_status == (_S.ESME_RINVPASWD if known else _S.ESME_RINVSYSID)
    with Peer(serve.port, guesser) as peer:
        resp = peer.request(BindTransceiver(peer.next_seq(), system_id=FUZZ_ID, password=FUZZ_PW))
        assert resp.command_status == _S.ESME_RBINDFAIL, "the guesser was not cooled down"
    assert_serving(serve)  # from 127.0.0.1


@FUZZ
@given(state=STATES, data=st.binary(min_size=1, max_size=600))
def test_random_bytes_get_answers_or_a_close(serve: Serve, state: str, data: bytes) -> None:
    with fuzz_peer(serve, state) as peer:
        peer.send(data)
        answers, closed = peer.answers_until_mark()
    # Whatever came back decoded (Peer.read checks) and answers something: a response.
    assert all(a.command_id & RESPONSE_BIT for a in answers)
    if not closed:
        return
    # A close only follows a framing error (its generic_nack ESME_RINVCMDLEN last), an
    # unbind (unbind_resp last) — or the random bytes contained a whole bind + unbind.
    assert answers, "closed without a word"
    last = answers[-1]
    assert (isinstance(last, GenericNack) and last.command_status == _S.ESME_RINVCMDLEN) or (
        last.command_id == CommandId.UNBIND_RESP
    ), answers


@FUZZ
@given(state=STATES, request=st.sampled_from(REQUESTS), cut=st.integers(0, 200))
def test_stream_cut_inside_a_pdu_is_closed_unanswered(
    serve: Serve, state: str, request: Pdu, cut: int
) -> None:
    wire = encode(msgspec.structs.replace(request, sequence_number=5))
    part = wire[: min(cut, len(wire) - 1)]
    with fuzz_peer(serve, state) as peer:
        peer.send(part)
        peer.sock.shutdown(socket.SHUT_WR)
        got: list[Pdu] = []
        with pytest.raises(Closed):
            _read_all(peer, got)
    assert not [p for p in got if p.sequence_number == 5], got


def _read_all(peer: Peer, into: list[Pdu]) -> None:
    deadline = time.monotonic() + DEADLINE
    while True:
        into.append(peer.read(deadline))


@pytest.mark.parametrize("body", [b"", b"\x00junk"])
def test_unbind_is_answered_then_closed(serve: Serve, body: bytes) -> None:
    """unbind_resp, then the close — with or without octets after the header (the codec
    reads none for unbind and is lenient about the rest)."""
    with fuzz_peer(serve, "trx") as peer:
        peer.send(with_body(CommandId.UNBIND, 9, body))
        answers, closed = peer.answers_until_mark(9)
    assert closed
    assert [(type(a), a.sequence_number, a.command_status) for a in answers] == [
        (UnbindResp, 9, _S.ESME_ROK)
    ]


# --- half PDUs, peers that never read --------------------------------------------------------


@pytest.mark.parametrize("state", ["open", "trx"])
def test_half_pdu_that_never_completes_is_reaped(serve: Serve, state: str) -> None:
    """Slowloris: a header promising a long PDU, a few octets of body trickled, then
    nothing. Before a bind session_init_timeout ends it, after one inactivity_timeout."""
    with fuzz_peer(serve, state) as peer:
        start = time.monotonic()
        peer.send(header(60_000, CommandId.SUBMIT_SM, 3))
        for octet in b"\x00\x01\x01447":
            peer.send(bytes([octet]))  # one segment each (TCP_NODELAY)
        peer.wait_closed(start + DEADLINE)
        elapsed = time.monotonic() - start
    timer = SESSION_INIT if state == "open" else INACTIVITY
    assert elapsed >= timer * 0.9
    assert_serving(serve)


def test_peer_that_writes_without_reading_is_not_buffered(serve: Serve) -> None:
    """Each enquire_link and unknown command is answered; a peer that sends them and reads
    nothing must not make the server hold the answers without bound: it stops reading
    that peer (TCP pushes back), and drops it once its timers end the session. (Before
    the fix it read on, its unsent answers growing at the rate the peer sent.)"""
    with fuzz_peer(serve, "tx") as peer:  # bound: no session_init_timeout to end it early
        sock = peer.sock
        chunk = (header(16, CommandId.ENQUIRE_LINK, 1) + header(16, 0x1AA, 2)) * 4096
        ring = memoryview(chunk * 2)  # ring[sent % len(chunk):][:len(chunk)]: the stream goes on
        limit = 32 * 1024 * 1024  # ~5 MB of kernel buffers, then the server stops reading
        sent = 0
        sock.setblocking(False)
        with selectors.DefaultSelector() as sel:
            sel.register(sock, selectors.EVENT_WRITE)
            while sent < limit:
                if not sel.select(0.5):
                    break  # the server has stopped reading us
                at = sent % len(chunk)
                try:
                    sent += sock.send(ring[at : at + len(chunk)])
                except BlockingIOError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    break  # ended by inactivity_timeout already (a slow machine)
            assert sent < limit, "the server kept reading a peer that reads nothing"
            # Unread, the peer sends nothing: inactivity_timeout ends the session; its answers
            # can never be written, so the close must not wait for them (slot_timeout bounds it).
            sel.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            deadline = time.monotonic() + INACTIVITY + SLOT_TIMEOUT + DEADLINE
            reset = False
            while not reset and time.monotonic() < deadline:
                sel.select(deadline - time.monotonic())
                reset = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
                if not reset:
                    at = sent % len(chunk)
                    try:
                        sent += sock.send(ring[at : at + len(chunk)])
                    except BlockingIOError:
                        pass
                    except (ConnectionResetError, BrokenPipeError):
                        reset = True
    assert reset, "the server kept a session it had ended open for its unsent answers"
    assert_serving(serve)


# --- connection floods while a good client works -------------------------------------------


@dataclass
class GoodClient:
    """Binds, submits with registered_delivery at ``rate`` per second (at most ``window``
    unanswered) until told to stop, then waits for every receipt; in a thread, beside the
    hostile traffic. Any submit_sm_resp (or receipt) later than DEADLINE fails it."""

    port: int
    rate: float = 200.0
    window: int = 20
    stop: threading.Event = field(default_factory=threading.Event)
    accepted: set[str] = field(default_factory=set)
    refused: list[int] = field(default_factory=list)
    receipts: set[str] = field(default_factory=set)
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def join(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(4 * DEADLINE)
        assert not self.thread.is_alive(), "the good client hung"
        if self.error is not None:
            raise self.error

    def _run(self) -> None:
        try:
            self._work()
        except BaseException as exc:
            self.error = exc

    def _work(self) -> None:
        with Peer(self.port) as peer:
            peer.bind(BindTransceiver, GOOD_ID, GOOD_PW)
            outstanding = 0
            next_at = progress = time.monotonic()
            while not self.stop.is_set() or outstanding:
                now = time.monotonic()
                may_send = outstanding < self.window and not self.stop.is_set()
                if may_send and now >= next_at:
                    peer.send_pdu(
                        SubmitSm(
                            peer.next_seq(),
                            source_addr="447700900123",
                            destination_addr="447700900456",
                            short_message=b"well behaved",
                            registered_delivery=1,
                        )
                    )
                    outstanding += 1
                    next_at = max(next_at + 1 / self.rate, now - 1.0)
                    continue
                pdu = peer.read_until(next_at if may_send else progress + DEADLINE)
                if pdu is None:
                    if not may_send:
                        raise TimeoutError("no submit_sm_resp in time")
                    continue
                if isinstance(pdu, SubmitSmResp):
                    outstanding -= 1
                    progress = time.monotonic()
                    if pdu.command_status:
                        self.refused.append(pdu.command_status)
                    else:
                        self.accepted.add(pdu.message_id)
                self._note_receipts(peer)
            deadline = time.monotonic() + DEADLINE
            while not self.accepted <= self.receipts:
                peer.read(deadline)
                self._note_receipts(peer)

    def _note_receipts(self, peer: Peer) -> None:
        for pdu in peer.delivered:
            rid = pdu.tlv(Tag.RECEIPTED_MESSAGE_ID)
            if isinstance(rid, str):
                self.receipts.add(rid)
        peer.delivered.clear()


def open_flood(port: int, n: int, rng: random.Random) -> list[socket.socket]:
    """``n`` connections that never bind: a third send nothing, a third part of a
    header, a third a header promising a long submit_sm and a few body octets."""
    socks = []
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
        if i % 3 == 1:
            _try_send(s, rng.randbytes(rng.randint(1, 15)))
        elif i % 3 == 2:
            _try_send(s, header(65_000, CommandId.SUBMIT_SM, i) + rng.randbytes(10))
    return socks


def _try_send(s: socket.socket, data: bytes) -> None:
    try:
        s.send(data)
    except (BlockingIOError, OSError):
        pass  # still connecting, or already dropped: it stays a silent connection


def wait_all_closed(socks: list[socket.socket], deadline: float) -> None:
    """Wait until the server has closed every one of ``socks`` (EOF or reset)."""
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        open_ = len(socks)
        while open_:
            left = deadline - time.monotonic()
            assert left > 0, f"{open_} of {len(socks)} idle connections still open"
            for key, _ in sel.select(left):
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    if conn.recv(65536):
                        continue
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                sel.unregister(conn)
                open_ -= 1


def test_connection_flood_is_capped_reaped_and_leaves_good_clients_alone(serve: Serve) -> None:
    """Rounds of 2,000 connections that never bind (silent, half header, slowloris half
    PDU) against max_connections 1,000: the server evicts the oldest unbound ones, never
    holds more descriptors than the cap allows, reaps the rest at session_init_timeout,
    binds new clients during the flood, keeps a bound client's submits and receipts
    flowing — and its memory after a round does not grow with the rounds."""
    rng = random.Random(6)
    good = GoodClient(serve.port)
    good.start()
    with Peer(serve.port) as warm:  # warm-up traffic before the baseline
        warm.bind(BindTransmitter, FUZZ_ID, FUZZ_PW)
        for _ in range(200):
            warm.request(SubmitSm(warm.next_seq(), destination_addr="447700900002"))
    base_fds = serve.fds()
    rss_after: list[int] = []
    try:
        for _ in range(3):
            socks = open_flood(serve.port, 2000, rng)
            try:
                # A new client binds and submits during the flood (it evicts an idle one).
                assert_serving(serve)
                assert serve.fds() <= base_fds + MAX_CONNECTIONS + 5
                wait_all_closed(socks, time.monotonic() + SESSION_INIT + 4 * DEADLINE)
            finally:
                for s in socks:
                    s.close()  # our side, whatever happened (closing twice is harmless)
            assert serve.fds() <= base_fds + MAX_CONNECTIONS + 5
            rss_after.append(serve.rss_kib())
        accepted_during_flood = len(good.accepted)
    finally:
        good.join()
    assert accepted_during_flood > 0
    assert not good.refused, good.refused
    assert good.accepted <= good.receipts
    # The cap evicted idle connections (how many, against session_init_timeout reaping
    # them, depends on how fast this machine accepts; the descriptor bound above holds
    # either way).
    assert serve.metric("smsc_connections_dropped_total") > 0
    # Rounds 2 and 3 reuse what round 1 allocated: leaked sessions would show as ~2,000
    # connections' worth (several MB) per round.
    assert rss_after[2] - rss_after[0] < 8 * 1024, rss_after
    assert_serving(serve)


def test_server_survived(serve: Serve) -> None:
    """After everything above: still serving, no traceback in its log (checked at exit)."""
    assert_serving(serve)


def test_final_receipts_leave_the_correlation_map(tmp_path: Path) -> None:
    """Memory per message ends with its final receipt: the carrier-id → our-id mapping
    leaves the router's in-memory map (the store keeps it). Before, every mapping stayed
    until max_cache (500,000), and a soak at 500 msg/s grew ~7 MB a minute."""

    async def main() -> None:
        async with running_app(app_config(tmp_path, {"a": {}})) as app:
            assert app.router is not None
            esme = await bind_client(app)
            try:
                ids = []
                for _ in range(50):
                    resp = await esme.c.request(
                        SubmitSm(destination_addr="447700900456", registered_delivery=1)
                    )
                    assert isinstance(resp, SubmitSmResp)
                    assert resp.command_status == _S.ESME_ROK
                    ids.append(resp.message_id)
                await wait_final_receipts(esme, ids)
                assert app.router.correlator.cached == 0
            finally:
                await esme.close()

    asyncio.run(main())
