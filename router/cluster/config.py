"""The ``cluster:`` section of the serve configuration: where the nodes meet (Redis), how
long a node's leases last and how often it renews them.

With no ``redis`` URL the node runs alone (the local coordinator and the SQLite store,
today's behaviour); with one, the coordination and the message store are on Redis."""

from __future__ import annotations

import urllib.parse
from typing import Annotated

import msgspec
from msgspec import Meta

#: Schemes a Redis URL may have: TCP, TLS, a Unix socket.
REDIS_SCHEMES = ("redis", "rediss", "unix")

KeyPrefix = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]


def check_redis_url(url: str) -> str:
    """``url`` when it is a Redis URL we can use, else ValueError saying why (the
    password, when the URL holds one, is never in the message)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError("not a URL (redis://[:password@]host[:port][/db])") from None
    if parts.scheme not in REDIS_SCHEMES:
        raise ValueError(f"scheme {parts.scheme!r}: expected one of {', '.join(REDIS_SCHEMES)}")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path (unix:///run/redis.sock)")
        return url
    if not parts.hostname:
        raise ValueError("no host (redis://host:6379/0)")
    if port == 0:
        raise ValueError("port 0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise ValueError(f"database {db!r} is not a number")
    return url


class ClusterConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Several ``smsc serve`` nodes sharing one Redis (see router/cluster/redis.py).

    This node's id is the top-level ``node_id`` (also the first character of every
    message id it makes, so two nodes must never share one: a node refuses to start
    while a live node has its id)."""

    redis: Annotated[str, Meta(min_length=1, max_length=2048)] | None = None
    """redis://[:password@]host:port/db, rediss:// (TLS) or unix:///path; null: this node
    runs alone."""
    password: Annotated[str, Meta(min_length=1, max_length=512)] | None = None
    """The Redis password (AUTH) when not in the URL."""
    username: Annotated[str, Meta(min_length=1, max_length=128)] | None = None
    """The Redis ACL user, with ``password``."""
    tls_ca: Annotated[str, Meta(min_length=1)] | None = None
    """CA certificates (PEM) that sign the Redis server's certificate (rediss://);
    null: the system's."""
    key_prefix: KeyPrefix = "smsc"
    """The start of every key, the message store's too (several clusters may share a
    Redis)."""
    lease: Annotated[float, Meta(gt=0, le=3600)] = 10.0
    """Seconds a node's heartbeat, session slots and carrier bind slots last: a node
    whose heartbeat is older is dead, and what it held is free for the others."""
    heartbeat: Annotated[float, Meta(gt=0, le=600)] = 2.0
    """Seconds between heartbeats (each renews the node's leases): below ``lease``."""
    timeout: Annotated[float, Meta(gt=0, le=60)] = 2.0
    """Seconds a Redis command may take before the node counts Redis as unreachable."""
    wait_replicas: Annotated[int, Meta(ge=0, le=16)] = 0
    """Replicas of Redis that must have a write of the message store before it counts as
    stored (``WAIT``): with ``ack_after: store`` a submit is acknowledged only then. 0: once
    the primary has it (its persistence settings decide what a crash of it loses)."""
    wait_timeout: Annotated[float, Meta(gt=0, le=60)] = 1.0
    """Seconds ``WAIT`` may take: short of ``wait_replicas`` by then, the write counts as not
    stored (submits are refused ESME_RSYSERR) and is tried again."""

    def __post_init__(self) -> None:
        if self.redis is not None:
            try:
                check_redis_url(self.redis)
            except ValueError as exc:
                raise ValueError(f"redis: {exc}") from None
        if self.heartbeat >= self.lease:
            raise ValueError(
                f"heartbeat: {self.heartbeat:g}s must be below lease ({self.lease:g}s)"
            )
        if self.username is not None and self.password is None:
            raise ValueError("username: needs a password")

    def url_with_credentials(self) -> str | None:
        """``redis`` with ``username``/``password`` written into it (for clients that take
        a URL alone, such as the message store's); None when not in a cluster."""
        if self.redis is None or self.password is None:
            return self.redis
        parts = urllib.parse.urlsplit(self.redis)
        if parts.password is not None or parts.scheme == "unix":
            return self.redis
        user = urllib.parse.quote(self.username or "", safe="")
        secret = urllib.parse.quote(self.password, safe="")
        netloc = f"{user}:{secret}@{parts.netloc.rpartition('@')[2]}"
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))

    @property
    def enabled(self) -> bool:
        return self.redis is not None

    def __repr__(self) -> str:  # never show the password (in the URL or not)
        where = None
        if self.redis is not None:
            parts = urllib.parse.urlsplit(self.redis)
            host = parts.hostname or ""
            where = f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}"
        return f"ClusterConfig(redis={where!r}, lease={self.lease:g}, heartbeat={self.heartbeat:g})"
