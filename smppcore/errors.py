"""Errors of the protocol core. Each one that a peer caused carries the status to answer with."""

from __future__ import annotations

from smppcore.constants import CommandStatus, status_name


class SmppError(Exception):
    """Base of every error the protocol core raises on purpose."""


class RemoteProtocolError(SmppError):
    """The peer sent something the spec forbids.

    ``status`` is the command_status to put in the answer. ``command_id`` and
    ``sequence_number`` name the PDU that failed where they could be read (0 where not),
    so the session can answer with the matching ``*_resp`` or a ``generic_nack``.
    ``fatal`` means the byte stream can no longer be trusted and must be closed.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        command_id: int = 0,
        sequence_number: int = 0,
        fatal: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.command_id = command_id
        self.sequence_number = sequence_number
        self.fatal = fatal

    def __str__(self) -> str:
        return f"{self.args[0]} ({status_name(self.status)})"


class LocalProtocolError(SmppError):
    """Our own code asked the core to do something the spec forbids (a bug on our side).

    It also carries a status, for code that maps a refused send to a wire answer.
    """

    def __init__(self, message: str, *, status: int = CommandStatus.ESME_RSYSERR) -> None:
        super().__init__(message)
        self.status = status


class EncodingError(LocalProtocolError):
    """Text cannot be represented in the requested data_coding."""

    def __init__(self, message: str, *, position: int = -1, char: str = "") -> None:
        super().__init__(message, status=CommandStatus.ESME_RSYSERR)
        self.position = position
        self.char = char
