"""``smsc serve`` and ``smsc route`` run as a user would (``python -m smsc``), and the file
that documents every key of smsc's configuration (conf/smsc.example.yaml).

Processes run in ``tmp_path`` (their store is created there) and are waited for through
what they print ("listening on HOST:PORT"), read under a deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import pytest
from carrier_helpers import Phone
from loops import LOOP_FACTORIES, Run
from processes import assert_config_error, documented_keys, smsc_run
from smsc_fixtures import DEADLINE, ROOT, serve_process

from smppcore.aio import connect
from smppcore.config import field_names
from smppcore.configfile import load_yaml_config
from smppcore.constants import CommandStatus, MessageState
from smppcore.pdu import BindTransceiver, SubmitSm
from smppcore.receipt import parse_receipt
from smppcore.tlv import Tag
from smsc.app import simulator_configs
from smsc.config import SmscConfig

EXAMPLE = ROOT / "conf" / "smsc.example.yaml"



# --- the example file -----------------------------------------------------------------------


def test_example_config_loads() -> None:
    config = load_yaml_config(EXAMPLE, SmscConfig)
    assert [a.system_id for a in config.accounts] == ["test", "acme"]
    assert [c.name for c in config.router.carriers] == ["sim", "partner"]
    assert [s.name for s in config.simulated_carriers] == ["sim"]
    (route,) = [r for r in config.router.routes if r.accounts]
    assert (route.prefix, route.accounts) == ("44", ("acme",))
    assert {str(cp.amount) for r in config.router.routes for cp in r.carriers} >= {
        "0.0050",
        "0.0045",
    }
    (sim,) = simulator_configs(config)
    assert sim[1].accounts[0].system_id == config.router.carriers[0].system_id


def test_example_config_documents_every_key() -> None:
    keys = documented_keys(EXAMPLE)
    missing = field_names(SmscConfig) - keys
    assert not missing, f"conf/smsc.example.yaml lacks {sorted(missing)}"


# --- bad configuration ----------------------------------------------------------------------


_SIM = "simulated_carriers:\n  - name: sim\n    config:\n"
_CARRIER = "router:\n  carriers:\n    - name: sim\n"


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("listen:\n  port: 2775\n  colour: blue\n", "$.listen.colour", "unknown key"),
        (
            "accounts:\n  - system_id: acme\n    password: muchtoolong\n",
            "$.accounts[0].password",
            "longer than 8 characters",
        ),
        (
            _CARRIER
            + "  routes:\n    - prefix: 44\n      carriers: [{carrier: sim, price: '1'}]\n",
            "$.router.routes[0].prefix",
            "Expected `str`, got `int`",
        ),
        (
            _CARRIER
            + "  routes:\n    - prefix: '44'\n      carriers: [{carrier: sim, price: 0.5}]\n",
            "$.router.routes[0].carriers[0].price",
            "Expected `int | str`, got `float`",
        ),
        (
            _CARRIER
            + "  routes:\n    - prefix: '44'\n      carriers: [{carrier: nope, price: 1}]\n",
            "$.router.routes[0].carriers[0].carrier",
            "no carrier named 'nope'",
        ),
        (
            "router:\n  ack_after: never\n",
            "$.router.ack_after",
            "Invalid enum value 'never'",
        ),
        (
            _CARRIER + _SIM + "      profiles:\n        default:\n          seeed: 1\n",
            "$.simulated_carriers[0].config.profiles[...].seeed",
            "unknown key",
        ),
        (_SIM + "      port: 1\n", "$.simulated_carriers[0].name", "no router carrier named 'sim'"),
        ("admin:\n  token_file: no-such-token.txt\n", "$.admin.token_file", "No such file"),
        ("admin:\n  token_file: ''\n", "$.admin.token_file", "length >= 1"),
    ],
    ids=[
        "unknown-key",
        "password-too-long",
        "unquoted-prefix",
        "float-price",
        "unknown-carrier",
        "bad-enum",
        "bad-simulator-key",
        "simulator-without-carrier",
        "missing-token-file",
        "empty-token-file-name",
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, text: str, where: str, reason: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    result = smsc_run("serve", "--config", str(path), cwd=tmp_path)
    assert_config_error(result, path, where, reason)
    assert list(tmp_path.iterdir()) == [path]  # refused before anything started


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = smsc_run("serve", "--config", str(missing), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"smsc: {missing}: $: no such file"


# --- a running smsc -------------------------------------------------------------------------


async def submit_and_wait_receipt(port: int, system_id: str, password: str, dest: str) -> str:
    """Bind, submit one message, wait for its final receipt; returns its stat word."""
    phone = Phone()
    conn = await connect("127.0.0.1", port, handler=phone, timeout=DEADLINE)
    try:
        async with asyncio.timeout(DEADLINE):
            await conn.bind(BindTransceiver(system_id=system_id, password=password))
            resp = await conn.request(
                SubmitSm(
                    source_addr="MyBrand",
                    destination_addr=dest,
                    registered_delivery=1,
                    short_message=b"hello from the CLI test",
                )
            )
            assert resp.command_status == CommandStatus.ESME_ROK
            message_id = resp.message_id  # type: ignore[attr-defined]
            while True:
                pdu = await phone.delivered.get()
                if pdu.tlv(Tag.RECEIPTED_MESSAGE_ID) == message_id:
                    break
        value = pdu.tlv(Tag.MESSAGE_STATE)
        assert isinstance(value, int)
        state = MessageState(value)
        receipt = parse_receipt(pdu.short_message)
        assert receipt is not None
        assert receipt.message_id == message_id
        assert receipt.state == state
        return state.name
    finally:
        conn.close()


def test_embedded_default_serves_routes_explains_and_stops_on_sigterm(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        args = ("--port", "0", "--metrics-port", "0", "--api-port", "0")
        async with serve_process(tmp_path, *args) as serve:
            assert serve.http_port is not None
            state = await submit_and_wait_receipt(serve.port, "test", "test", "447700900001")
            assert state in {"DELIVERED", "UNDELIVERABLE", "EXPIRED"}

            route = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "smsc",
                "route",
                "--port",
                str(serve.http_port),
                "--destination",
                "4477009001",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=tmp_path,
            )
            async with asyncio.timeout(DEADLINE):
                out, err = await route.communicate()
            assert route.returncode == 0, err
            text = out.decode()
            assert "4477009001" in text
            assert "'44'" in text or " 44" in text
            for carrier in ("cheap", "mid", "premium"):
                assert carrier in text

            # A bound client sees the unbind; the process exits 0 promptly.
            phone = Phone()
            conn = await connect("127.0.0.1", serve.port, handler=phone, timeout=DEADLINE)
            await conn.bind(BindTransceiver(system_id="test", password="test"))
            serve.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(DEADLINE):
                await phone.closed.wait()
            assert phone.close_reason == "unbound by peer"
            assert await serve.exit_code() == 0  # (EXIT_DEADLINE: a hang, not a slow exit)
        assert (tmp_path / "smsc.db").exists()

    run(main())


def test_smsc_route_without_a_server_says_it_cannot_reach_it(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = smsc_run("route", "--port", str(port), "--destination", "44", cwd=tmp_path)
    assert result.returncode == 1
    assert "cannot reach" in result.stderr
    assert "Traceback" not in result.stderr


def test_example_config_serves_and_stops_on_sigint(tmp_path: Path) -> None:
    async def main() -> None:
        args = ("--config", str(EXAMPLE), "--port", "0", "--metrics-port", "0", "--api-port", "0")
        async with serve_process(tmp_path, *args, "--log-level", "warning") as serve:
            # "33..." routes to sim (partner, at 4.5 micro-units cheaper, is not running).
            state = await submit_and_wait_receipt(serve.port, "test", "test", "33612345678")
            assert state in {"DELIVERED", "UNDELIVERABLE", "EXPIRED"}
            serve.proc.send_signal(signal.SIGINT)
            assert await serve.exit_code() == 0  # (EXIT_DEADLINE: a hang, not a slow exit)
        assert (tmp_path / "smsc.db").exists()

    with asyncio.Runner(loop_factory=LOOP_FACTORIES["uvloop"]) as runner:
        runner.run(main())
