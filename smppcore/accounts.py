"""Who may bind: the MC side's account checks, shared by our server and the simulator.

Pure policy: given an account table, a bind request, the peer's address and how many
sessions the account already has, answer with the command_status of the bind_resp.
Passwords are compared in constant time and never appear in errors or reprs.

A configured password is either the plain value (at most 8 characters, as on the wire) or
a salted scrypt hash, ``scrypt$n=16384,r=8,p=1$<salt>$<hash>`` (salt and hash in base64
without padding), as ``smsc hash-password`` prints it. Checking a hash costs tens of
milliseconds of CPU by design: the server runs it off the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
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
"""A password we send in a bind (at most 8 characters on the wire)."""
AccountPassword = Annotated[str, Meta(max_length=256)]
"""A password we check: plain (at most 8 characters) or a ``scrypt$...`` hash."""

SCRYPT_PREFIX = "scrypt$"
#: The cost ``smsc hash-password`` uses: 16 MiB and some 50-100 ms per check.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAX_MEMORY = 256 * 2**20
_HASH_FORMAT = "expected scrypt$n=<N>,r=<R>,p=<P>$<salt>$<hash> as smsc hash-password prints"


class PasswordHash(msgspec.Struct, frozen=True):
    """A parsed ``scrypt$...`` password hash."""

    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    @classmethod
    def parse(cls, text: str) -> PasswordHash:
        """Parse a hash; ValueError says what is wrong without echoing any of it."""
        parts = text.split("$")
        if len(parts) != 4 or parts[0] != SCRYPT_PREFIX[:-1]:
            raise ValueError(f"not a valid password hash ({_HASH_FORMAT})")
        try:
            params = dict(item.split("=", 1) for item in parts[1].split(","))
            n, r, p = int(params.pop("n")), int(params.pop("r")), int(params.pop("p"))
        except (ValueError, KeyError):
            raise ValueError(f"password hash: bad parameters ({_HASH_FORMAT})") from None
        if params or n < 2 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
            raise ValueError("password hash: n must be a power of 2, r 1..64, p 1..16")
        if 128 * n * r * p > _SCRYPT_MAX_MEMORY:
            raise ValueError("password hash: parameters need more than 256 MiB")
        try:
            salt = _b64decode(parts[2])
            digest = _b64decode(parts[3])
        except (ValueError, binascii.Error):
            raise ValueError("password hash: salt and hash must be base64") from None
        if len(salt) < 8 or len(digest) < 16:
            raise ValueError("password hash: salt or hash too short")
        return cls(n, r, p, salt, digest)

    def matches(self, offered: bytes) -> bool:
        computed = _scrypt(offered, self.salt, self.n, self.r, self.p, len(self.digest))
        return hmac.compare_digest(computed, self.digest)


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int, size: int) -> bytes:
    maxmem = 128 * r * (n + p + 2) + 2**20
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=size)


def hash_password(
    password: str,
    salt: bytes,
    *,
    n: int = SCRYPT_N,
    r: int = SCRYPT_R,
    p: int = SCRYPT_P,
) -> str:
    """The ``scrypt$...`` hash of ``password`` with ``salt`` (16 random octets: the caller
    draws them, this module has no randomness)."""
    digest = _scrypt(password.encode(), salt, n, r, p, 32)
    return f"scrypt$n={n},r={r},p={p}${_b64encode(salt)}${_b64encode(digest)}"


def check_password_setting(value: str) -> None:
    """ValueError (naming ``password``, never its value) unless ``value`` is a plain
    password of at most 8 characters or a valid hash."""
    if value.startswith(SCRYPT_PREFIX):
        try:
            PasswordHash.parse(value)
        except ValueError as exc:
            raise ValueError(f"password: {exc}") from None
    elif len(value) > 8:
        raise ValueError(
            "password: longer than 8 characters (the most a bind carries); "
            "give it as a hash from smsc hash-password"
        )


class Account(msgspec.Struct, frozen=True, forbid_unknown_fields=True, repr_omit_defaults=True):
    """One ESME account as the MC sees it."""

    system_id: SystemId
    password: AccountPassword = msgspec.field(default="")
    """Plain (at most 8 characters) or a ``scrypt$...`` hash."""
    bind_types: tuple[BindType, ...] = (
        BindType.TRANSMITTER,
        BindType.RECEIVER,
        BindType.TRANSCEIVER,
    )
    max_sessions: Annotated[int, Meta(ge=1, le=100000)] = 10
    allow_cidrs: tuple[str, ...] = ()
    """Peers allowed to bind (``10.0.0.0/8``, ``127.0.0.1``); empty: any."""

    def __post_init__(self) -> None:
        check_password_setting(self.password)
        for cidr in self.allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(f"allow_cidrs: {cidr!r} is not an address or network") from None

    def __repr__(self) -> str:  # never show the password
        return f"Account(system_id={self.system_id!r})"

    @property
    def password_hashed(self) -> bool:
        """Is the password a hash (slow to check: run the check off the event loop)?"""
        return self.password.startswith(SCRYPT_PREFIX)

    def password_matches(self, offered: str) -> bool:
        """Constant time for a plain password; one scrypt run for a hash."""
        wire = offered.encode("latin-1", errors="replace")
        if self.password_hashed:
            return PasswordHash.parse(self.password).matches(wire)
        return hmac.compare_digest(self.password.encode(), wire)

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


class AccountSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an account's configuration holds in every role that accepts binds (smsc's
    accounts and the simulator's add their own keys)."""

    system_id: SystemId
    password: AccountPassword = ""
    """Plain (at most 8 characters) or a hash from ``smsc hash-password``."""
    bind_types: tuple[BindType, ...] = (
        BindType.TRANSMITTER,
        BindType.RECEIVER,
        BindType.TRANSCEIVER,
    )
    max_sessions: Annotated[int, Meta(ge=1, le=100_000)] = 100
    allow_cidrs: tuple[str, ...] = ()
    """Peers allowed to bind (``10.0.0.0/8``, ``127.0.0.1``); empty: any."""
    throughput: Annotated[float, Meta(gt=0)] | None = None
    """Submits per second over all the account's sessions (token bucket); over it,
    ESME_RTHROTTLED. null: no limit."""
    burst: Annotated[int, Meta(ge=1)] | None = None
    """Bucket size; default one second of throughput."""

    def __post_init__(self) -> None:
        self.auth()  # checks the password setting and allow_cidrs

    def __repr__(self) -> str:  # never show the password
        return f"{type(self).__name__}(system_id={self.system_id!r})"

    def auth(self) -> Account:
        """The part of the account that bind checks need."""
        return Account(
            system_id=self.system_id,
            password=self.password,
            bind_types=self.bind_types,
            max_sessions=self.max_sessions,
            allow_cidrs=self.allow_cidrs,
        )


def check_bind(
    account: Account | None,
    *,
    command_id: int,
    password: str,
    peer_host: str | None,
    sessions_in_use: int,
    password_ok: bool | None = None,
) -> int:
    """The bind_resp status for this bind: ESME_ROK or the reason it is refused.

    ``password_ok``: the result of ``account.password_matches(password)`` when the caller
    has already run it (off the event loop, for a hashed password)."""
    if account is None:
        return CommandStatus.ESME_RINVSYSID
    if password_ok is None:
        password_ok = account.password_matches(password)
    if not password_ok:
        return CommandStatus.ESME_RINVPASWD
    bind_type = BIND_TYPE_OF_COMMAND.get(command_id)
    if bind_type is None or bind_type not in account.bind_types:
        return CommandStatus.ESME_RBINDFAIL
    if not account.allows_peer(peer_host):
        return CommandStatus.ESME_RBINDFAIL
    if sessions_in_use >= account.max_sessions:
        return CommandStatus.ESME_RBINDFAIL
    return CommandStatus.ESME_ROK
