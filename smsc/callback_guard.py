"""Which addresses a callback URL given by an application may make smsc connect to.

A message's ``callback_url`` (``POST /v1/messages``) and a Kannel or Jasmin ``dlr-url``
come from an API key holder, who is trusted less than the operator: without a guard they
could make smsc call the cloud's metadata service (``169.254.169.254``: credentials) or an
internal admin interface (smsc's own admin API on loopback, a database's HTTP port). The
account-level webhook URLs of the config file are the operator's and are not checked.

``webhooks.callback_networks`` lists what such URLs may reach: CIDRs (``10.20.0.0/16``,
``2001:db8::/32``, a single address) and the word ``public`` (every globally routable
address: neither private, loopback, link-local, shared CGNAT space, unique-local,
multicast nor reserved). The config file's default is ``[public]``; the embedded default
(``smsc serve`` with no file, ``make run``) adds loopback, so that a receiver on the same
machine works while trying things out.

Some addresses are refused even when a listed network covers them, unless a listed network
lies inside their range (the operator named them): link-local (``169.254.0.0/16``, where
the metadata services of AWS, GCP, Azure and others answer, and ``fe80::/10``), AWS's IPv6
metadata address ``fd00:ec2::254``, Alibaba's ``100.100.100.200``, and the unspecified
addresses (``0.0.0.0/8``, ``::``: connecting to them reaches this machine). So
``0.0.0.0/0`` opens every address but those; ``169.254.169.254/32`` opens the metadata
service explicitly.

The check is made on the address actually connected to (smsc/webhook_client.py resolves
the name itself and connects only to an address allowed here), so a name that resolves to
a public address when the request is checked and to a private one when the callback is
made (DNS rebinding) gains nothing. An IPv6 address that carries an IPv4 one is judged as
that IPv4 address: mapped ``::ffff:a.b.c.d``, IPv4-compatible ``::a.b.c.d`` (``::/96``
but ``::`` and ``::1``), SIIT ``::ffff:0:a.b.c.d`` (``::ffff:0:0:0/96``), 6to4
``2002::/16``, NAT64 ``64:ff9b::/96`` and the local-use NAT64 prefix ``64:ff9b:1::/48``
(RFC 8215) in its ``/96`` form (any other address in it stays IPv6, reserved: refused by
``public``). ``public`` also refuses what Python's ``is_global`` lets through on some
versions: reserved ranges and the deprecated site-local ``fec0::/10``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The word for every globally routable address.
PUBLIC = "public"
#: Refused unless a listed network lies inside one of them.
NEVER_UNLESS_NAMED: tuple[Network, ...] = tuple(
    ipaddress.ip_network(n)
    for n in (
        "169.254.0.0/16",  # IPv4 link-local: cloud metadata services
        "100.100.100.200/32",  # Alibaba Cloud metadata
        "0.0.0.0/8",  # "this host"
        "fe80::/10",  # IPv6 link-local
        "fd00:ec2::254/128",  # AWS metadata over IPv6
        "::/128",  # unspecified
    )
)
#: IPv6 ranges whose last 32 bits are the IPv4 address a connection reaches.
_EMBEDDING: tuple[ipaddress.IPv6Network, ...] = (
    ipaddress.IPv6Network("64:ff9b::/96"),  # NAT64 well-known prefix (RFC 6052)
    ipaddress.IPv6Network("64:ff9b:1::/96"),  # local-use NAT64 (RFC 8215), /96 form
    ipaddress.IPv6Network("::ffff:0:0:0/96"),  # SIIT (RFC 6145)
)
#: Default of the config file, and of the embedded default (smsc/defaults.py).
DEFAULT_NETWORKS: tuple[str, ...] = (PUBLIC,)
LOCAL_NETWORKS: tuple[str, ...] = (PUBLIC, "127.0.0.0/8", "::1/128")


def parse_network(text: str) -> Network | None:
    """``text`` as a network (``public`` is None); ValueError when it is neither."""
    if text == PUBLIC:
        return None
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        reason = f"{text!r} is not a CIDR (such as 10.0.0.0/8) nor {PUBLIC!r}: {exc}"
        raise ValueError(reason) from None


class CallbackRefused(Exception):
    """A callback URL names (or resolves to) an address it may not reach."""


class CallbackGuard:
    """``allows(address)``; ``check_url(url)`` for a URL's literal address."""

    def __init__(self, networks: Iterable[str]) -> None:
        networks = tuple(networks)
        self.public = False
        nets: list[Network] = []
        for text in networks:
            net = parse_network(text)
            if net is None:
                self.public = True
            else:
                nets.append(net)
        self.networks = tuple(nets)
        self.described = ", ".join(networks) or "nothing"

    def allows(self, address: str | Address) -> bool:
        """May a callback connect to ``address``?"""
        try:
            ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        except ValueError:
            return False
        return self._allows(_judged(ip))

    def _allows(self, ip: Address) -> bool:
        for never in NEVER_UNLESS_NAMED:
            if ip.version == never.version and ip in never:
                return any(
                    ip in net and net.version == never.version and net.subnet_of(never)  # type: ignore[arg-type]
                    for net in self.networks
                )
        if self.public and _public(ip):
            return True
        return any(ip in net for net in self.networks if net.version == ip.version)

    def check_url(self, url: str) -> None:
        """CallbackRefused when ``url``'s host is an address literal this guard refuses
        (a name is judged when it is resolved, at connect time)."""
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return  # (not a URL: the caller's own checks answer that)
        if host is None:
            return
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return  # a name
        if not self.allows(ip):
            raise CallbackRefused(self.refusal(host, str(ip)))

    def refusal(self, host: str, address: str) -> str:
        via = "" if host == address else f" resolves to {address}, which"
        return (
            f"{host}{via} is outside webhooks.callback_networks ({self.described}):"
            " callbacks given with a message may not reach it"
        )


def _public(ip: Address) -> bool:
    """Globally routable: ``is_global`` (which Python 3.11 grants to some reserved and
    site-local IPv6 ranges), and neither multicast, reserved, site-local nor private."""
    if not ip.is_global or ip.is_multicast or ip.is_reserved or ip.is_private:
        return False
    return not (isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local)


def _judged(ip: Address) -> Address:
    """The address judged for ``ip``: the IPv4 address an IPv6 one carries (mapped,
    IPv4-compatible, SIIT, 6to4, NAT64: what the connection reaches in the end), else
    ``ip``."""
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    inner = ip.ipv4_mapped or ip.sixtofour
    if inner is not None:
        return inner
    value = int(ip)
    if 1 < value < 2**32:  # ::a.b.c.d (IPv4-compatible; not :: nor ::1)
        return ipaddress.IPv4Address(value)
    if any(ip in net for net in _EMBEDDING):
        return ipaddress.IPv4Address(value & 0xFFFFFFFF)
    return ip
