"""Who may bind: the MC side's account checks, shared by our server and the simulator.

Pure policy: given an account table, a bind request, the peer's address and how many
sessions the account already has, answer with the command_status of the bind_resp.
Passwords are compared in constant time and never appear in errors or reprs.
"""

from __future__ import annotations

import hmac
import ipaddress
from enum import Enum
from typing import Annotated

import msgspec
from msgspec import Meta

from smppcore.constants import CommandId, CommandStatus


class BindType(Enum):
    TRANSMITTER = "transmitter"
    RECEIVER = "receiver"
    TRANSCEIVER = "transceiver"


BIND_TYPE_OF_COMMAND: dict[int, BindType] = {
    CommandId.BIND_TRANSMITTER: BindType.TRANSMITTER,
    CommandId.BIND_RECEIVER: BindType.RECEIVER,
    CommandId.BIND_TRANSCEIVER: BindType.TRANSCEIVER,
}

SystemId = Annotated[str, Meta(min_length=1, max_length=15, pattern=r"^[\x21-\x7e]+$")]
Password = Annotated[str, Meta(max_length=8)]


class Account(msgspec.Struct, frozen=True, forbid_unknown_fields=True, repr_omit_defaults=True):
    """One ESME account as the MC sees it."""

    system_id: SystemId
    password: Password = msgspec.field(default="")
    bind_types: tuple[BindType, ...] = (
        BindType.TRANSMITTER,
        BindType.RECEIVER,
        BindType.TRANSCEIVER,
    )
    max_sessions: Annotated[int, Meta(ge=1, le=100000)] = 10
    allow_cidrs: tuple[str, ...] = ()
    """Peers allowed to bind (``10.0.0.0/8``, ``127.0.0.1``); empty: any."""

    def __post_init__(self) -> None:
        for cidr in self.allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"allow_cidrs: {cidr!r} is not an address or network") from None

    def __repr__(self) -> str:  # never show the password
        return f"Account(system_id={self.system_id!r})"

    def password_matches(self, offered: str) -> bool:
        return hmac.compare_digest(self.password.encode(), offered.encode("latin-1"))

    def allows_peer(self, host: str | None) -> bool:
        if not self.allow_cidrs:
            return True
        if host is None:
            return False
        try:
            addr = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        return any(addr in ipaddress.ip_network(c, strict=False) for c in self.allow_cidrs)


def check_bind(
    account: Account | None,
    *,
    command_id: int,
    password: str,
    peer_host: str | None,
    sessions_in_use: int,
) -> int:
    """The bind_resp status for this bind: ESME_ROK or the reason it is refused."""
    if account is None:
        return CommandStatus.ESME_RINVSYSID
    if not account.password_matches(password):
        return CommandStatus.ESME_RINVPASWD
    bind_type = BIND_TYPE_OF_COMMAND.get(command_id)
    if bind_type is None or bind_type not in account.bind_types:
        return CommandStatus.ESME_RBINDFAIL
    if not account.allows_peer(peer_host):
        return CommandStatus.ESME_RBINDFAIL
    if sessions_in_use >= account.max_sessions:
        return CommandStatus.ESME_RBINDFAIL
    return CommandStatus.ESME_ROK
