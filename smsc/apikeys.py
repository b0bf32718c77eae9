"""Who is calling the HTTP API: an account's API key (``Authorization: Bearer``) or its
SMPP credentials (``Authorization: Basic``, or Kannel/Jasmin-style ``username`` and
``password`` parameters).

A key is 32 random octets in URL-safe base64 after ``smsc_``; the config keeps only its
SHA-256 (``sha256$<hex>``: a key has 256 bits of entropy, so a fast hash is enough, unlike
a password). ``smsc api-key`` prints a new key and its hash. Hashed passwords (scrypt)
are checked off the event loop; a password that matched is remembered (by its SHA-256)
so that each request does not pay for scrypt again.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
from collections import OrderedDict
from collections.abc import Mapping

from smsc.accounts import AccountState

KEY_PREFIX = "smsc_"
#: Remembered (account, password digest) pairs that matched a hashed password, at most.
_MAX_REMEMBERED = 10_000


def new_key(random32: bytes) -> tuple[str, str]:
    """A key from 32 random octets (the caller draws them) and its config hash."""
    if len(random32) != 32:
        raise ValueError("an API key needs 32 random octets")
    key = KEY_PREFIX + base64.urlsafe_b64encode(random32).decode().rstrip("=")
    return key, key_hash(key)


def key_hash(key: str) -> str:
    return "sha256$" + hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) of an ``Authorization: Basic`` value; None when it is not one."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        text = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = text.partition(":")
    return (user, password) if sep else None


def bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


class Authenticator:
    """Finds the account of a key or of a system_id and password."""

    def __init__(self, accounts: Mapping[str, AccountState]) -> None:
        self.accounts = accounts
        self._remembered: OrderedDict[tuple[str, bytes], str] = OrderedDict()
        #: Keys that named an account: key → (its hash, the account's state); looked
        #: again at each use (a reload may drop the key or replace the account).
        self._keys: OrderedDict[str, tuple[str, AccountState]] = OrderedDict()

    def by_key(self, key: str) -> AccountState | None:
        known = self._keys.get(key)
        if known is not None:
            digest, state = known
            if self.accounts.get(state.system_id) is state and digest in state.account.api_keys:
                return state
            del self._keys[key]
        digest = key_hash(key)
        found = None
        for state in self.accounts.values():
            for listed in state.account.api_keys:
                if hmac.compare_digest(listed, digest):
                    found = state
        if found is not None:
            self._keys[key] = (digest, found)
            if len(self._keys) > _MAX_REMEMBERED:
                self._keys.popitem(last=False)
        return found

    async def by_password(self, system_id: str, password: str) -> AccountState | None:
        state = self.accounts.get(system_id)
        if state is None:
            return None
        auth = state.auth
        if not auth.password_hashed:
            return state if auth.password_matches(password) else None
        digest = hashlib.sha256(password.encode("utf-8", "surrogateescape")).digest()
        key = (system_id, digest)
        if self._remembered.get(key) == auth.password:  # the same hash still configured
            self._remembered.move_to_end(key)
            return state
        if not await asyncio.to_thread(auth.password_matches, password):
            return None
        self._remembered[key] = auth.password
        if len(self._remembered) > _MAX_REMEMBERED:
            self._remembered.popitem(last=False)
        return state
