"""SMPP over TLS: the configuration both ends share, and the SSLContexts built from it.

The second impure edge module of smppcore (next to ``aio.py``): it reads certificate files
and builds :class:`ssl.SSLContext` objects. It lives here because ``smsc`` (the TLS
listener), ``router`` (TLS to carriers) and ``simulator`` (a TLS carrier) all need it, and
smppcore is their only common dependency.

Both contexts allow TLS 1.2 and later only. A failure to load a file is a
:class:`TlsError` naming the key (``cert``, ``key``, ``ca``, ``client_ca``) and the file;
:func:`config_error` turns it into a ConfigError under a key path. Key files must not be
encrypted (there is nobody to ask for a passphrase).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated

import msgspec
from msgspec import Meta

from smppcore.config import ConfigError

FilePath = Annotated[str, Meta(min_length=1)]


class ServerTls(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """TLS on a listener: our certificate (chain) and key, PEM files."""

    cert: FilePath
    """Certificate chain, PEM (ours first, then intermediates)."""
    key: FilePath
    """Private key, PEM, not encrypted."""
    client_ca: FilePath | None = None
    """CA certificates (PEM); when set, every client must present a certificate signed by
    one of them, and a handshake without one fails. null: no client certificates."""


class ClientTls(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """TLS toward a peer we connect to."""

    ca: FilePath | None = None
    """CA certificates (PEM) that sign the peer's certificate; null: the system's."""
    cert: FilePath | None = None
    """Our client certificate (PEM), for peers that require one; needs ``key``."""
    key: FilePath | None = None
    server_hostname: str | None = None
    """The name the peer's certificate must carry; null: the host we connect to."""
    verify: bool = True
    """Check the peer's certificate and name. false: encrypt only (test setups)."""

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")


class TlsError(Exception):
    """A certificate or key file could not be used: ``key`` is the config key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def config_error(err: TlsError, prefix: str, *, source: str = "") -> ConfigError:
    """``err`` as a ConfigError at ``prefix`` (a key path such as ``$.listen_tls``)."""
    return ConfigError(f"{prefix}.{err.key}", err.reason, source=source)


def _no_passphrase() -> bytes:
    raise TlsError("key", "the key is encrypted (give an unencrypted key file)")


def _readable(key: str, path: str) -> None:
    try:
        with Path(path).open("rb") as f:
            f.read(1)
    except OSError as exc:
        raise TlsError(key, f"{path}: {exc.strerror or exc}") from None


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    _readable("cert", cert)
    _readable("key", key)
    try:
        ctx.load_cert_chain(cert, key, password=_no_passphrase)
    except TlsError as err:
        raise TlsError(err.key, f"{key}: {err.reason}") from None
    except ssl.SSLError as exc:
        # Tell a bad certificate from a bad (or mismatched) key.
        probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            probe.load_verify_locations(cafile=cert)
        except ssl.SSLError:
            raise TlsError("cert", f"{cert}: not a PEM certificate ({_reason(exc)})") from None
        raise TlsError("key", f"{key}: not a PEM private key for {cert} ({_reason(exc)})") from None


def _load_ca(ctx: ssl.SSLContext, key: str, path: str) -> None:
    _readable(key, path)
    try:
        ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TlsError(key, f"{path}: no PEM CA certificate in it ({_reason(exc)})") from None


def _reason(exc: ssl.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc)


def server_context(config: ServerTls) -> ssl.SSLContext:
    """A server-side context: TLS 1.2+, our chain, client certificates when ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, config.cert, config.key)
    if config.client_ca is not None:
        _load_ca(ctx, "client_ca", config.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(config: ClientTls) -> ssl.SSLContext:
    """A client-side context: TLS 1.2+, the peer verified against ``ca`` (or the system's
    CAs) unless ``verify`` is false, our certificate when given."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.verify:
        if config.ca is not None:
            _load_ca(ctx, "ca", config.ca)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if config.cert is not None and config.key is not None:
        _load_chain(ctx, config.cert, config.key)
    return ctx


__all__ = [
    "ClientTls",
    "ServerTls",
    "TlsError",
    "client_context",
    "config_error",
    "server_context",
]
