"""Which webhook URLs may be called: http(s) only, and no loopback/private/link-local targets unless allowed."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from control_plane.errors import BadRequest

MAX_URL_LENGTH = 2048
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"}


class TargetRefused(Exception):
    """The webhook target resolves to an address webhooks may not reach."""


_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are an IPv4 address
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use prefix: never a public target
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")  # deprecated IPv4-compatible form (::a.b.c.d)


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """The IPv4 addresses an IPv6 address carries (mapped, compatible, NAT64, 6to4, Teredo server and client).

    `ipaddress` calls many of these forms global even when the IPv4 inside is loopback or private, and a host
    with NAT64 or 6to4 routes them to that IPv4 address: each must be judged by the address it carries.
    """
    out = []
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    if ip in _NAT64 or ip in _IPV4_COMPATIBLE:
        out.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    return out


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (not loopback, private, link-local, reserved, multicast),
    judging IPv6 forms that carry an IPv4 address (NAT64, 6to4, Teredo, mapped, compatible) by that address."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _NAT64_LOCAL:
            return False
        inner = embedded_ipv4(ip)
        if inner:
            return all(v4.is_global and not v4.is_multicast for v4 in inner)
    return ip.is_global and not ip.is_multicast


def _literal_address(host: str) -> str | None:
    """The address a host names literally, including legacy IPv4 forms resolvers accept (127.1, 0x7f.0.0.1,
    2130706433); None for a DNS name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return socket.inet_ntoa(socket.inet_aton(host))
    except OSError:
        return None


def check_url(url: str, *, allow_private: bool) -> str:
    """A webhook_url as given on a job: well-formed http(s) with a host; literal private IPs refused (400)."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"webhook_url is longer than {MAX_URL_LENGTH} characters", param="webhook_url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest("webhook_url must be an absolute http:// or https:// URL", param="webhook_url")
    if parts.username or parts.password:
        raise BadRequest("webhook_url must not carry credentials; verify the signature instead", param="webhook_url")
    try:
        parts.port
    except ValueError:
        raise BadRequest("webhook_url has an invalid port", param="webhook_url") from None
    if not allow_private:
        host = parts.hostname.lower().rstrip(".")
        if host in _LOCAL_NAMES or host.endswith(".localhost"):
            raise BadRequest(f"webhook_url host {host} is local; webhooks only go to public addresses "
                             "(self-hosters: set INFERNET_WEBHOOK_ALLOW_PRIVATE=1)", param="webhook_url")
        literal = _literal_address(host)
        # A name is checked again each time it is resolved at delivery (and the connection pinned to the answer).
        if literal is not None and not is_public(literal):
            raise BadRequest(f"webhook_url address {host} is loopback, private or reserved; webhooks only go to "
                             "public addresses (self-hosters: set INFERNET_WEBHOOK_ALLOW_PRIVATE=1)",
                             param="webhook_url")
    return url


async def resolve(host: str, port: int, *, allow_private: bool) -> str:
    """The address to connect to for a target host; TargetRefused when it (or any of its addresses) is private."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise OSError(f"cannot resolve {host}: {exc}") from exc
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise OSError(f"cannot resolve {host}: no addresses")
    if not allow_private:
        bad = [a for a in addresses if not is_public(a)]
        if bad:
            raise TargetRefused(f"{host} resolves to a non-public address ({bad[0]}); webhooks only go to public "
                                "addresses (self-hosters: set INFERNET_WEBHOOK_ALLOW_PRIVATE=1)")
    return addresses[0]
