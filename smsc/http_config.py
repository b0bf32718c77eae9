"""Configuration of the application HTTP API (smsc/http_api.py), its webhooks
(smsc/webhooks.py) and the per-account keys: decoded strictly with the rest of
smsc/config.py, which imports these."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from smppcore.tls import FilePath, ServerTls
from smsc.callback_guard import DEFAULT_NETWORKS, parse_network

_Port = Annotated[int, Meta(ge=0, le=65535)]
#: ``sha256$<hex>`` of an API key, as ``smsc api-key`` prints it.
ApiKeyHash = Annotated[str, Meta(pattern=r"^sha256\$[0-9a-f]{64}$")]
HttpUrl = Annotated[str, Meta(min_length=8, max_length=2000, pattern=r"^https?://[^\s]+$")]


class HttpTls(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """HTTPS instead of plain HTTP on the API's port (as ``listen_tls``)."""

    cert: FilePath
    key: FilePath
    client_ca: FilePath | None = None

    def server_tls(self) -> ServerTls:
        return ServerTls(cert=self.cert, key=self.key, client_ca=self.client_ca)


class HttpApiConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The application API: ``/v1`` on its own listener (on in the embedded default)."""

    host: str = "127.0.0.1"
    port: _Port = 8775
    tls: HttpTls | None = None
    max_body: Annotated[int, Meta(ge=1024, le=64 * 2**20)] = 2 * 2**20
    """Largest request body, octets (413 beyond)."""
    max_concurrency: Annotated[int, Meta(ge=1, le=100_000)] = 1000
    """Requests handled at once; beyond it, 503 with Retry-After."""
    idempotency_ttl: Annotated[float, Meta(gt=0, le=30 * 86_400)] = 86_400.0
    """Seconds an ``Idempotency-Key`` is remembered (its first answer replayed)."""
    path: str | None = None
    """SQLite file of the API's own records (idempotency keys, messages sent through it);
    null: next to the store (``<store>-http.db``)."""


class AccountWebhooks(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Where an account's status events and inbound messages are POSTed (instead of a
    deliver_sm to its binds)."""

    status_url: HttpUrl | None = None
    inbound_url: HttpUrl | None = None
    secret: Annotated[str, Meta(min_length=16, max_length=512)]
    """The HMAC-SHA256 key of the ``Smsc-Signature`` header."""
    intermediate: bool = False
    """Also send non-final states (``message.accepted`` ...)."""

    def __repr__(self) -> str:  # never show the secret
        return f"AccountWebhooks(status_url={self.status_url!r}, inbound_url={self.inbound_url!r})"


class WebhooksConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The webhook outbox and its sender (smsc/webhooks.py)."""

    path: str | None = None
    """SQLite file of the outbox; null: next to the store (``<store>-webhooks.db``)."""
    max_age: Annotated[float, Meta(gt=0, le=30 * 86_400)] = 86_400.0
    """Seconds an event is retried before it is dead-lettered."""
    max_pending: Annotated[int, Meta(ge=1, le=100_000_000)] = 1_000_000
    """Events waiting at most; beyond it, new ones are refused (the carrier resends)."""
    timeout: Annotated[float, Meta(gt=0, le=300)] = 10.0
    """Seconds one POST may take."""
    concurrency: Annotated[int, Meta(ge=1, le=10_000)] = 128
    """Connections in use at once, overall, each with a POST in flight (or up to
    ``pipeline``): more than ``per_endpoint``, so that a slow receiver leaves the other
    connections to use."""
    per_endpoint: Annotated[int, Meta(ge=1, le=1000)] = 32
    """Connections in use at once to one host, each with a POST in flight (or up to
    ``pipeline``): a slow receiver delays only itself."""
    pipeline: Annotated[int, Meta(ge=1, le=100)] = 16
    """POSTs sent at once on one connection to an account's own webhook URL (HTTP/1.1
    pipelining: one write, the answers in order); 1: one at a time. One at a time too to
    a receiver whose last POST failed, until one is taken. A POST the receiver closed the
    connection on before answering is sent again."""
    backoff_min: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    backoff_max: Annotated[float, Meta(gt=0, le=86_400)] = 600.0
    callback_networks: Annotated[
        tuple[Annotated[str, Meta(min_length=1, max_length=64)], ...], Meta(max_length=1000)
    ] = DEFAULT_NETWORKS
    """Where callback URLs given by applications (a message's ``callback_url``, Kannel's
    and Jasmin's ``dlr-url``) may connect: CIDRs, and ``public`` for every globally
    routable address (smsc/callback_guard.py). Link-local (cloud metadata) and unspecified
    addresses only when a listed network lies inside them. The accounts' own webhook URLs
    (set here by the operator) are not restricted."""

    def __post_init__(self) -> None:
        for i, text in enumerate(self.callback_networks):
            try:
                parse_network(text)
            except ValueError as exc:
                raise ValueError(f"callback_networks[{i}]: {exc}") from None


def check_url(url: str) -> None:
    """ValueError unless ``url`` is an absolute http(s) URL with a host."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an absolute http(s) URL")
