"""``smsc carrier`` and ``smsc carrier-mo`` run as a user would (``python -m smsc``), and the
configuration file they read (conf/carrier.example.yaml, smsc.configfile).

Processes are waited for through what they print ("listening on HOST:PORT"), read under a
deadline; nothing sleeps.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import msgspec
import pytest
from carrier_helpers import DEADLINE, Phone
from loops import Run
from processes import (
    SmscProcess,
    assert_config_error,
    documented_keys,
    smsc_process,
    smsc_run,
)

from simulator.behaviour import Behaviour
from simulator.config import CarrierConfig, status_value
from smppcore.aio import BindError, connect
from smppcore.codec import FrameBuffer, decode, encode
from smppcore.config import ConfigError, field_names
from smppcore.configfile import load_yaml_config
from smppcore.constants import CommandStatus, DataCoding, MessageState
from smppcore.pdu import (
    BindTransceiver,
    BindTransmitter,
    BindTransmitterResp,
    Pdu,
    SubmitSm,
    Unbind,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "carrier.example.yaml"



# --- the example file -----------------------------------------------------------------------


def test_example_config_loads() -> None:
    config = load_yaml_config(EXAMPLE, CarrierConfig)
    assert [a.system_id for a in config.accounts] == ["test", "flaky"]
    flaky = config.accounts[1]
    assert flaky.throughput is not None
    assert flaky.profile == "flaky"
    assert config.profiles["flaky"].misbehave.drop_after_pdus is not None


def test_example_config_documents_every_key() -> None:
    keys = documented_keys(EXAMPLE)
    missing = field_names(CarrierConfig) - keys
    assert not missing, f"conf/carrier.example.yaml lacks {sorted(missing)}"


def test_example_rules_do_what_they_say() -> None:
    profile = load_yaml_config(EXAMPLE, CarrierConfig).profiles["default"]
    behaviour = Behaviour(profile)
    refused = behaviour.decide("447700900123", "447700900999", "please REJECTME now")
    assert refused.status == status_value("ESME_RINVDSTADR")
    undeliv = behaviour.decide("447700900123", "999123", "hello")
    assert (undeliv.status, undeliv.state, undeliv.error) == (0, MessageState.UNDELIVERABLE, 1)


# --- bad configuration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "where", "reason"),
    [
        ("port: 2776\ncolour: blue\n", "$.colour", "unknown key"),
        ("session:\n  window: 10\n  windw: 5\n", "$.session.windw", "unknown key"),
        ("port: high\n", "$.port", "Expected `int`, got `str`"),
        ("port: 70000\n", "$.port", "<= 65535"),
        (
            "accounts:\n  - system_id: acme\n    profile: premium\n",
            "$.accounts[0].profile",
            "no profile named 'premium'",
        ),
        (
            "accounts:\n  - system_id: acme\n    password: muchtoolong\n",
            "$.accounts[0].password",
            "longer than 8 characters",
        ),
        (
            "accounts:\n  - system_id: acme\n    bind_types: [sender]\n",
            "$.accounts[0].bind_types[0]",
            "Invalid enum value 'sender'",
        ),
        (
            "profiles:\n  default:\n    rules:\n      - match: {destination_prefix: 999}\n",
            "$.profiles[...].rules[0].match.destination_prefix",
            "Expected `str | null`, got `int`",
        ),
        ("port: [1\nhost: x\n", "$", "YAML syntax error at line 2"),
        ("- just\n- a list\n", "$", "expected a mapping"),
    ],
    ids=[
        "unknown-key",
        "unknown-nested-key",
        "wrong-type",
        "out-of-range",
        "no-such-profile",
        "password-too-long",
        "bad-enum",
        "unquoted-digits",
        "yaml-syntax",
        "not-a-mapping",
    ],
)
def test_bad_config_exits_2_naming_the_key(
    tmp_path: Path, text: str, where: str, reason: str
) -> None:
    path = tmp_path / "carrier.yaml"
    path.write_text(text, encoding="utf-8")
    assert_config_error(smsc_run("carrier", "--config", str(path)), path, where, reason)


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = smsc_run("carrier", "--config", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == f"smsc: {missing}: $: no such file"


def test_config_error_names_the_path() -> None:
    with pytest.raises(ConfigError) as info:
        load_yaml_config(ROOT / "pyproject.toml", CarrierConfig)
    assert info.value.source.endswith("pyproject.toml")
    assert info.value.path == "$"


def test_bad_port_argument_is_a_usage_error() -> None:
    result = smsc_run("carrier", "--port", "70000")
    assert result.returncode == 2
    assert "not in 0..65535" in result.stderr


def test_carrier_mo_without_a_simulator_says_it_cannot_reach_it() -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on (bound, never listening)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = smsc_run("carrier-mo", "--port", str(port), "--text", "hi", "--timeout", "5")
    assert result.returncode == 1
    assert "cannot reach" in result.stderr
    assert "Traceback" not in result.stderr


# --- a running carrier process --------------------------------------------------------------


@asynccontextmanager
async def carrier_process(tmp_path: Path, *args: str) -> AsyncIterator[SmscProcess]:
    """``python -m smsc carrier ARGS``, ready (see tests/processes.py)."""
    async with smsc_process("carrier", tmp_path, *args) as process:
        yield process


def test_carrier_serves_metrics_and_mo_then_unbinds_everyone_on_sigterm(
    run: Run, tmp_path: Path
) -> None:
    async def main() -> None:
        async with carrier_process(tmp_path, "--port", "0", "--metrics-port", "0") as carrier:
            assert carrier.http_port is not None
            # The embedded default: test/test, at least 100 concurrent sessions.
            phone = Phone()
            trx = await connect("127.0.0.1", carrier.port, handler=phone)
            await trx.bind(BindTransceiver(system_id="test", password="test"))
            others = [Phone() for _ in range(99)]
            conns = await asyncio.gather(
                *(connect("127.0.0.1", carrier.port, handler=p) for p in others)
            )
            await asyncio.gather(
                *(c.bind(BindTransmitter(system_id="test", password="test")) for c in conns)
            )
            resp = await trx.request(
                SubmitSm(
                    source_addr="1234",
                    destination_addr="447700900123",
                    short_message=b"hello",
                    registered_delivery=1,
                )
            )
            assert resp.command_status == CommandStatus.ESME_ROK

            url = f"http://127.0.0.1:{carrier.http_port}"
            async with (
                aiohttp.ClientSession() as http,
                asyncio.timeout(DEADLINE),
                http.get(f"{url}/metrics") as scrape,
            ):
                metrics = await scrape.text()
            assert 'smsc_carrier_pdus_in_total{command="submit_sm",status="ESME_ROK"} 1.0' in (
                metrics
            )
            assert 'smsc_carrier_sessions{account="test"} 100.0' in metrics

            # MO on demand through the CLI call.
            mo = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "smsc",
                "carrier-mo",
                "--port",
                str(carrier.http_port),
                "--source",
                "306912345678",
                "--destination",
                "5555",
                "--text",
                "Καλημέρα!",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=ROOT,
            )
            async with asyncio.timeout(DEADLINE):
                out, err = await mo.communicate()
            assert mo.returncode == 0, err
            assert out.decode().strip() == "queued 1 part(s) for test"
            text, [pdu] = await phone.next_message()
            assert (text, pdu.data_coding) == ("Καλημέρα!", DataCoding.UCS2)
            assert (pdu.source_addr, pdu.destination_addr) == ("306912345678", "5555")

            carrier.proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(DEADLINE):
                await phone.closed.wait()
                await asyncio.gather(*(p.closed.wait() for p in others))
            assert phone.close_reason == "unbound by peer"
            assert {p.close_reason for p in others} == {"unbound by peer"}
            assert await carrier.exit_code() == 0

    run(main())


def test_example_config_runs_and_stops_on_sigint(run: Run, tmp_path: Path) -> None:
    async def main() -> None:
        args = ("--config", str(EXAMPLE), "--port", "0", "--log-level", "warning")
        async with carrier_process(tmp_path, *args) as carrier:
            assert carrier.http_port is None  # admin_port: null in the example
            phone = Phone()
            conn = await connect("127.0.0.1", carrier.port, handler=phone)
            await conn.bind(BindTransceiver(system_id="flaky", password="flaky123"))
            with pytest.raises(BindError) as refused:
                await (await connect("127.0.0.1", carrier.port)).bind(
                    BindTransceiver(system_id="flaky", password="wrong")
                )
            assert refused.value.status == CommandStatus.ESME_RINVPASWD
            carrier.proc.send_signal(signal.SIGINT)
            async with asyncio.timeout(DEADLINE):
                await phone.closed.wait()
            assert await carrier.exit_code() == 0

    run(main())


def test_second_signal_forces_exit(run: Run, tmp_path: Path) -> None:
    """A peer that never answers unbind holds up a graceful stop; a second signal ends it."""

    async def main() -> None:
        async with carrier_process(tmp_path, "--port", "0") as carrier:
            reader, writer = await asyncio.open_connection("127.0.0.1", carrier.port)
            frames = FrameBuffer()

            async def next_pdu() -> Pdu:
                async with asyncio.timeout(DEADLINE):
                    while True:
                        for frame in frames.feed(await reader.read(4096)):
                            return decode(frame)

            writer.write(encode(BindTransmitter(1, 0, "test", "test")))
            assert isinstance(await next_pdu(), BindTransmitterResp)
            carrier.proc.send_signal(signal.SIGTERM)
            assert isinstance(await next_pdu(), Unbind)  # shutdown has begun; we stay silent
            carrier.proc.send_signal(signal.SIGTERM)
            assert await carrier.exit_code() == 128 + signal.SIGTERM
            assert "second signal" in carrier.stderr.read_text()
            writer.close()

    run(main())


def test_override_keeps_the_rest_of_the_file(tmp_path: Path) -> None:
    import argparse

    from smsc.cli import carrier_config

    path = tmp_path / "c.yaml"
    path.write_text("port: 3000\nsystem_id: mysim\nadmin_port: 9000\n", encoding="utf-8")
    args = argparse.Namespace(config=str(path), host="0.0.0.0", port=None, metrics_port=0)
    config = carrier_config(args)
    assert (config.host, config.port, config.system_id, config.admin_port) == (
        "0.0.0.0",
        3000,
        "mysim",
        0,
    )
    assert msgspec.structs.replace(config, host="127.0.0.1", admin_port=9000) == (
        load_yaml_config(path, CarrierConfig)
    )
