"""Mobile-originated (MO) traffic: building deliver_sm templates, and paced generation.

:func:`build_mo` is pure apart from the random generator it is given: it picks (or takes)
the source, destination, text and coding, and returns one deliver_sm per part — a long
text becomes UDH parts (esm_class 0x40, IEI 0x00 with an 8-bit reference). Templates carry
sequence_number 0; the outbox numbers them on the way out.

:class:`MoGenerator` sends ``MoConfig.rate`` messages per second for one account, in ticks,
through a ``send(system_id, pdus)`` callable (``Carrier.inject``). It never runs ahead of
its schedule and never owes more than one second of backlog (the rest is skipped and
counted). :func:`start_mo_generators` starts one per account whose profile has a rate;
the caller owns the tasks and cancels them (:func:`stop_mo_generators`) before
``Carrier.stop()``.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from simulator.config import MoConfig, NumberRange
from smppcore.constants import DataCoding, EsmClass, ton_npi_for
from smppcore.errors import LocalProtocolError
from smppcore.pdu import DeliverSm
from smppcore.segment import split
from smppcore.text import choose_coding, codec_name, count_units

if TYPE_CHECKING:
    from simulator.carrier import Carrier

log = logging.getLogger(__name__)

#: Longest source_addr / destination_addr of a deliver_sm (§4.6.1: C-Octet String of 21).
MAX_ADDRESS: Final = 20
#: Units one SMS carries without concatenation, by codec.
_SINGLE: Final = {"gsm": 160, "utf-16-be": 70}
#: Shortest pause between two ticks of a fast generator (seconds): above 1/MIN_TICK
#: messages per second, each tick sends a batch.
MIN_TICK: Final = 0.01
#: Backlog a late generator may catch up on, in seconds of its rate; the rest is skipped.
MAX_LAG: Final = 1.0

Send = Callable[[str, list[DeliverSm]], None]


class MoError(ValueError):
    """An MO that cannot be built (bad address, text that does not fit its coding, ...)."""


def build_mo(
    rng: random.Random,
    config: MoConfig,
    *,
    text: str | None = None,
    source: str | None = None,
    destination: str | None = None,
    data_coding: int | None = None,
    ref: int | None = None,
) -> list[DeliverSm]:
    """The deliver_sm templates of one MO message, one per part.

    What is not given is drawn from ``config`` with ``rng``: the source and destination
    from their number ranges; the text from ``config.texts``, made long (several parts)
    with probability ``long_share``; the coding GSM when the text fits, except that a drawn
    text goes out in UCS-2 with probability ``ucs2_share``. A given text with no
    ``data_coding`` goes in ``choose_coding(text)``. ``ref`` is the concatenation
    reference (0..255; drawn when None). Raises MoError for input that cannot be sent.
    """
    if source is None:
        source = draw_number(rng, config.sources)
    if destination is None:
        destination = draw_number(rng, config.destinations)
    _check_address("source", source)
    _check_address("destination", destination)
    if text is None:
        is_long = rng.random() < config.long_share
        force_ucs2 = rng.random() < config.ucs2_share
        text = _draw_text(rng, config.texts, is_long=is_long, force_ucs2=force_ucs2)
        if data_coding is None and force_ucs2:
            data_coding = DataCoding.UCS2
    if not text:
        raise MoError("text is empty")
    if data_coding is None:
        data_coding = choose_coding(text)
    elif not 0 <= data_coding <= 0xFF or codec_name(data_coding) is None:
        raise MoError(f"data_coding {data_coding} carries no text")
    if ref is None:
        ref = rng.randrange(256)
    try:
        segments = split(text, data_coding, ref=ref & 0xFF)
    except LocalProtocolError as exc:  # EncodingError included
        raise MoError(str(exc)) from None
    src_ton, src_npi = ton_npi_for(source)
    dst_ton, dst_npi = ton_npi_for(destination)
    return [
        DeliverSm(
            source_addr_ton=src_ton,
            source_addr_npi=src_npi,
            source_addr=source,
            dest_addr_ton=dst_ton,
            dest_addr_npi=dst_npi,
            destination_addr=destination,
            esm_class=EsmClass.UDHI if seg.esm_class_udhi else EsmClass.DEFAULT,
            data_coding=seg.data_coding,
            short_message=seg.short_message,
        )
        for seg in segments
    ]


def draw_number(rng: random.Random, numbers: NumberRange) -> str:
    """``prefix`` followed by ``digits`` random digits."""
    if not numbers.digits:
        return numbers.prefix
    return f"{numbers.prefix}{rng.randrange(10**numbers.digits):0{numbers.digits}d}"


def _check_address(name: str, address: str) -> None:
    if len(address) > MAX_ADDRESS:
        raise MoError(f"{name} {address!r} is longer than {MAX_ADDRESS} characters")
    if not (address.isascii() and address.isprintable()):
        raise MoError(f"{name} {address!r} must be printable ASCII")


def _draw_text(
    rng: random.Random, texts: tuple[str, ...], *, is_long: bool, force_ucs2: bool
) -> str:
    pieces = texts or ("Hello from the simulator",)
    text = rng.choice(pieces) or "."
    if not is_long:
        return text
    # Append random texts until the message no longer fits one SMS in its coding.
    while True:
        coding = DataCoding.UCS2 if force_ucs2 else choose_coding(text)
        single = _SINGLE["gsm" if coding == DataCoding.SMSC_DEFAULT else "utf-16-be"]
        if count_units(text, coding) > single:
            return text
        text = f"{text} {rng.choice(pieces) or '.'}"


class MoGenerator:
    """Scheduled MO for one account at ``config.rate`` messages per second."""

    def __init__(self, system_id: str, config: MoConfig, rng: random.Random, send: Send) -> None:
        self.system_id = system_id
        self.config = config
        self.rng = rng
        self.send = send
        #: Messages sent, parts (deliver_sm) sent, messages skipped (late) or failed.
        self.messages = 0
        self.parts = 0
        self.skipped = 0
        self.failed = 0
        self._ref = rng.randrange(256)

    def generate(self) -> list[DeliverSm]:
        """Build the next message (with the next concatenation reference)."""
        self._ref = (self._ref + 1) & 0xFF
        return build_mo(self.rng, self.config, ref=self._ref)

    async def run(self) -> None:
        """Send on schedule until cancelled. The schedule is kept from the start time, so
        ticks that come late catch up (by at most MAX_LAG seconds' worth)."""
        rate = self.config.rate
        if rate <= 0:
            return
        loop = asyncio.get_running_loop()
        floor = MIN_TICK if rate * MIN_TICK > 1 else 0.0
        cap = max(1, int(rate * MAX_LAG))
        start = loop.time()
        while True:
            done = self.messages + self.skipped + self.failed
            owed = int((loop.time() - start) * rate) + 1 - done
            if owed > cap:
                self.skipped += owed - cap
                owed = cap
            for _ in range(owed):
                self._send_one()
            next_at = start + (self.messages + self.skipped + self.failed) / rate
            # Pacing to a deadline, not waiting for a state change.
            await asyncio.sleep(max(next_at - loop.time(), floor))

    def _send_one(self) -> None:
        try:
            pdus = self.generate()
        except MoError as exc:
            if not self.failed:
                log.warning("MO for %s: %s (further failures not logged)", self.system_id, exc)
            self.failed += 1
            return
        self.send(self.system_id, pdus)
        self.messages += 1
        self.parts += len(pdus)


def mo_rng(seed: int, system_id: str) -> random.Random:
    """The seeded generator of an account's MO, apart from its submit decisions."""
    return random.Random(f"{seed}:{system_id}:mo")


def start_mo_generators(carrier: Carrier) -> list[asyncio.Task[None]]:
    """Start a generator for each account whose profile has ``mo.rate`` > 0.

    Call after ``carrier.start()``; cancel with :func:`stop_mo_generators` before
    ``carrier.stop()``.
    """
    tasks = []
    for system_id, state in carrier.accounts.items():
        mo = state.profile.mo
        if mo.rate > 0:
            gen = MoGenerator(system_id, mo, mo_rng(state.profile.seed, system_id), carrier.inject)
            tasks.append(asyncio.create_task(gen.run(), name=f"mo-generator:{system_id}"))
            log.info("MO generator for %s: %g/s", system_id, mo.rate)
    return tasks


async def stop_mo_generators(tasks: list[asyncio.Task[None]], timeout: float = 5.0) -> None:
    """Cancel the generators and wait (bounded) until they have ended."""
    for task in tasks:
        task.cancel()
    if tasks:
        async with asyncio.timeout(timeout):
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for task, result in zip(tasks, results, strict=True):
            if isinstance(result, Exception):
                log.error("%s failed: %r", task.get_name(), result)
