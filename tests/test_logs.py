"""Structured logs (smsc/logs.py, configured by the entry point): the JSON and text formats,
``auto`` choosing by the stream, per-component levels, the ``logging:`` config section,
one summary line per message at its final state (router.messages) — and, end to end at
DEBUG, never a password or a message body in any record.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from processes import smsc_process
from smsc_fixtures import (
    FAST,
    PASSWORD,
    SYSTEM_ID,
    UPSTREAM_PASSWORD,
    app_config,
    bind_client,
    open_client,
    profile,
    running_app,
    serve_process,
    wait_final_receipts,
)

from smppcore.aio import BindError
from smppcore.config import ConfigError, load_config
from smppcore.constants import CommandStatus
from smppcore.pdu import BindTransceiver, CancelSm
from smppcore.smpptime import format_absolute
from smsc.cli import _parser, serve_config
from smsc.config import SmscConfig
from smsc.logs import JsonFormatter, TextFormatter, configure

BODY = "Top-secret body 7Q2X"
COMPONENTS = ("router.upstream", "router.messages", "smsc.server", "router.router", "aiosqlite")


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in COMPONENTS}
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        for name, component_level in levels.items():
            logging.getLogger(name).setLevel(component_level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line]


# --- formats and levels ---------------------------------------------------------------------


def test_json_lines_carry_the_standard_fields_and_the_extras() -> None:
    out = io.StringIO()
    configure("info", log_format="json", stream=out)
    log = logging.getLogger("smsc.server")
    log.info("bind %s as %s", "acme", "transceiver", extra={"account": "acme", "n": 3})
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed")
    first, second = records(out)
    assert first["level"] == "info"
    assert first["logger"] == "smsc.server"
    assert first["msg"] == "bind acme as transceiver"
    assert (first["account"], first["n"]) == ("acme", 3)
    assert datetime.fromisoformat(first["ts"]).tzinfo is not None
    assert second["level"] == "error"
    assert "ValueError: boom" in second["exc"]
    assert len(out.getvalue().splitlines()) == 2  # the traceback stays inside its line


def test_auto_is_text_on_a_terminal_and_json_elsewhere() -> None:
    tty = Terminal()
    handler = configure("info", stream=tty)
    assert isinstance(handler.formatter, TextFormatter)
    logging.getLogger("router.router").info("hello", extra={"carrier": "cheap"})
    line = tty.getvalue().strip()
    assert line.endswith("INFO router.router: hello carrier=cheap"), line
    pipe = io.StringIO()
    assert isinstance(configure("info", stream=pipe).formatter, JsonFormatter)
    assert isinstance(configure("info", log_format="text", stream=pipe).formatter, TextFormatter)
    assert isinstance(configure("info", log_format="json", stream=tty).formatter, JsonFormatter)


def test_component_levels_override_the_root_level() -> None:
    out = io.StringIO()
    configure(
        "warning",
        log_format="json",
        components={"router.upstream": "debug", "router.messages": "error"},
        stream=out,
    )
    logging.getLogger("router.upstream").debug("bind detail")
    logging.getLogger("router.router").info("not shown: root is at warning")
    logging.getLogger("router.messages").warning("not shown: its component is at error")
    logging.getLogger("router.router").warning("shown")
    assert [r["msg"] for r in records(out)] == ["bind detail", "shown"]


def test_libraries_that_log_message_data_stay_quiet_at_debug() -> None:
    out = io.StringIO()
    configure("debug", log_format="json", stream=out)
    logging.getLogger("aiosqlite").debug("executing INSERT ... b'the body'")
    logging.getLogger("aiosqlite").warning("shown")
    configure("debug", log_format="json", components={"aiosqlite": "debug"}, stream=out)
    logging.getLogger("aiosqlite").debug("asked for by name")
    assert [r["msg"] for r in records(out)] == ["shown", "asked for by name"]


def test_the_logging_section_and_the_old_log_level_key() -> None:
    config = load_config(
        {
            "logging": {
                "level": "debug",
                "format": "json",
                "components": {"router.messages": "warning"},
            }
        },
        SmscConfig,
    )
    assert config.log_settings.level == "debug"
    assert config.log_settings.components == {"router.messages": "warning"}
    assert load_config({"log_level": "error"}, SmscConfig).log_settings.level == "error"
    with pytest.raises(ConfigError, match=r"logging\.components"):
        load_config({"logging": {"components": {"router": "loud"}}}, SmscConfig)
    with pytest.raises(ConfigError, match=r"logging\.format"):
        load_config({"logging": {"format": "xml"}}, SmscConfig)
    args = _parser().parse_args(["serve", "--log-level", "warning", "--log-format", "text"])
    settings = serve_config(args).log_settings
    assert (settings.level, settings.format) == ("warning", "text")


# --- the summary line -----------------------------------------------------------------------


async def traffic(tmp_path: Path) -> list[str]:
    """Delivered, refused by the carrier, failed over, cancelled, a wrong password; the
    ids of the messages."""
    refusing = profile(
        rules=[
            {"match": {"destination_prefix": "4472"}, "submit_status": "ESME_RINVDSTADR"},
            {"match": {"destination_prefix": "4471"}, "submit_status": "ESME_RSYSERR"},
        ]
    )
    config = app_config(tmp_path, {"cheap": refusing, "mid": FAST})
    async with running_app(config) as app:
        intruder = await open_client(app)
        with pytest.raises(BindError):
            await intruder.c.bind(BindTransceiver(system_id=SYSTEM_ID, password="nope1234"))
        await intruder.close()
        esme = await bind_client(app)
        ids = [
            await esme.submit_ok(destination, text=BODY.encode())
            for destination in ("447700900001", "447200000001", "447100000001")
        ]
        later = format_absolute(datetime.now(UTC) + timedelta(hours=1))
        scheduled = await esme.submit_ok(schedule_delivery_time=later, text=BODY.encode())
        resp = await esme.request(CancelSm(message_id=scheduled))
        assert resp.command_status == CommandStatus.ESME_ROK
        ids.append(scheduled)
        await wait_final_receipts(esme, ids)
        await esme.close()
    return ids


def test_one_summary_line_per_message_at_its_final_state(tmp_path: Path) -> None:
    out = io.StringIO()
    configure("info", log_format="json", stream=out)
    delivered, rejected, failed_over, cancelled = asyncio.run(traffic(tmp_path))
    summaries = [r for r in records(out) if r["logger"] == "router.messages"]
    by_id = {r["message_id"]: r for r in summaries}
    assert len(summaries) == len(by_id) == 4
    expected = {
        delivered: ("DELIVERED", "cheap", 1, 0),
        rejected: ("REJECTED", "cheap", 1, int(CommandStatus.ESME_RINVDSTADR)),
        failed_over: ("DELIVERED", "mid", 2, 0),
        cancelled: ("DELETED", "", 0, 0),
    }
    for message_id, (state, carrier, attempts, error) in expected.items():
        line = by_id[message_id]
        assert line["level"] == "info"
        assert line["msg"] == f"message {message_id} {state}"
        assert (line["state"], line["carrier"], line["attempts"], line["error"]) == (
            state,
            carrier,
            attempts,
            error,
        )
        assert line["account"] == SYSTEM_ID
        assert line["total_seconds"] >= 0
    assert by_id[failed_over]["tried"] == ["cheap"]
    assert by_id[delivered]["carrier_seconds"] >= 0  # accepted → receipt
    assert by_id[rejected]["carrier_seconds"] is None


def test_the_summary_line_can_be_switched_off(tmp_path: Path) -> None:
    out = io.StringIO()
    configure("info", log_format="json", components={"router.messages": "warning"}, stream=out)
    asyncio.run(traffic(tmp_path))
    lines = records(out)
    assert lines, "the rest still logs at info"
    assert not [r for r in lines if r["logger"] == "router.messages"]


def test_no_password_and_no_message_body_in_any_record(tmp_path: Path) -> None:
    out = io.StringIO()
    configure("debug", log_format="json", stream=out)
    asyncio.run(traffic(tmp_path))
    lines = records(out)
    assert len(lines) > 10  # it did log, at debug
    # Everything but the logger's name (one is router.upstream; so is a test password).
    text = json.dumps([{k: v for k, v in r.items() if k != "logger"} for r in lines])
    for secret in (PASSWORD, UPSTREAM_PASSWORD, "nope1234", BODY, BODY.encode().hex()):
        assert secret not in text, secret


# --- the entry point ------------------------------------------------------------------------


def test_serve_logs_json_lines_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    async def main() -> None:
        async with serve_process(
            tmp_path, "--port", "0", "--metrics-port", "0", "--api-port", "0"
        ) as serve:
            pass
        lines = serve.stderr.read_text().splitlines()
        assert lines
        for line in lines:
            record = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= record.keys()
        assert any(json.loads(line)["logger"] == "smsc.app" for line in lines)

    asyncio.run(main())


def test_the_carrier_simulator_uses_the_same_set_up(tmp_path: Path) -> None:
    async def main() -> None:
        async with smsc_process("carrier", tmp_path, "--port", "0") as carrier:
            pass
        lines = carrier.stderr.read_text().splitlines()
        assert any(json.loads(line)["logger"] == "simulator.carrier" for line in lines)
        async with smsc_process(
            "carrier", tmp_path, "--port", "0", "--log-format", "text", name="text"
        ) as carrier:
            pass
        text = carrier.stderr.read_text()
        assert " INFO simulator.carrier: carrier listening on 127.0.0.1:" in text
        assert not text.startswith("{")

    asyncio.run(main())
