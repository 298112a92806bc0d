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


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (not loopback, private, link-local, reserved, multicast)."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


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
        try:
            public = is_public(host)
        except ValueError:
            public = True  # a name: checked again when it is resolved at delivery
        if not public:
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
