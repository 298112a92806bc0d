"""How a node dials the bus: its servers, its token as the credential, its own inbox prefix, and TLS."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from node_agent.settings import NodeSettings
from protocol import subjects


def servers(nats_url: str) -> list[str]:
    """The comma-separated URLs without any user:password part: a node authenticates with its token only."""
    out = []
    for raw in nats_url.split(","):
        raw = raw.strip()
        if not raw:
            continue
        parts = urlsplit(raw if "://" in raw else f"nats://{raw}")
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        out.append(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))
    return out


def tls_context(settings: NodeSettings) -> ssl.SSLContext | None:
    """A context that verifies the server against `nats_tls_ca` (or the system CAs for tls:// URLs)."""
    wants_tls = any(u.startswith("tls://") for u in servers(settings.nats_url))
    if not settings.nats_tls_ca and not wants_tls:
        return None
    ctx = ssl.create_default_context(cafile=settings.nats_tls_ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def connect_options(settings: NodeSettings, node_id: str) -> dict[str, Any]:
    """Keyword arguments for nats.connect shared by the agent and `doctor`."""
    options: dict[str, Any] = {
        "servers": servers(settings.nats_url),
        "token": settings.node_token or None,
        "inbox_prefix": subjects.node_inbox_prefix(node_id),
        "name": f"infernet-node {node_id}",
    }
    ctx = tls_context(settings)
    if ctx is not None:
        options["tls"] = ctx
    return options
