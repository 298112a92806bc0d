"""The node agent's settings: one frozen object; flags > environment > config file > defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


def normalize_ollama_host(value: str) -> str:
    """OLLAMA_HOST accepts `host`, `host:port` or a URL; return a URL."""
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = "http://" + value
    scheme, _, rest = value.partition("://")
    if ":" not in rest.split("/")[0]:
        rest = rest + ":11434" if "/" not in rest else rest
    host = rest.split(":")[0]
    if host in ("0.0.0.0", ""):
        rest = "127.0.0.1" + rest[len(host):]
    return f"{scheme}://{rest}"


def _default_concurrency(env: Mapping[str, str]) -> int:
    try:
        return max(1, int(env.get("OLLAMA_NUM_PARALLEL", "1")))
    except ValueError:
        return 1


@dataclass(frozen=True, slots=True)
class NodeSettings:
    #: NATS URL(s) of the control plane's bus (INFERNET_NATS_URL).
    nats_url: str = "nats://127.0.0.1:4222"
    #: Token from `infernet-control-plane nodes register NAME` (INFERNET_NODE_TOKEN).
    node_token: str | None = None
    #: Engine kind (INFERNET_ENGINE): "ollama" (default).
    engine: str = "ollama"
    #: Engine URL (INFERNET_ENGINE_URL, or OLLAMA_HOST for Ollama).
    engine_url: str = "http://127.0.0.1:11434"
    #: Jobs run at once (INFERNET_MAX_CONCURRENCY; default OLLAMA_NUM_PARALLEL or 1).
    max_concurrency: int = 1
    #: Seconds between advertisements (INFERNET_ADVERTISE_INTERVAL_S).
    advertise_interval_s: float = 5.0
    #: Later tokens are coalesced into one chunk for at most this many milliseconds (INFERNET_COALESCE_MS).
    coalesce_ms: float = 5.0
    #: Seconds in-flight jobs get to finish after SIGTERM (INFERNET_DRAIN_GRACE_S).
    drain_grace_s: float = 60.0
    log_format: str = "json"
    log_level: str = "info"
    labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, file_values: Mapping[str, Any] | None = None,
                **flags: Any) -> NodeSettings:
        """Merge defaults < config file < environment < flags (flags that are None are 'not passed')."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {"max_concurrency": _default_concurrency(env)}
        names = {f.name: f for f in fields(cls)}
        for key, value in (file_values or {}).items():
            if key in names:
                values[key] = value
        for name, f in names.items():
            raw = env.get(f"INFERNET_{name.upper()}")
            if raw:
                values[name] = _coerce(f.type, raw)
        if "INFERNET_ENGINE_URL" not in env and env.get("OLLAMA_HOST") and values.get("engine", "ollama") == "ollama":
            values["engine_url"] = normalize_ollama_host(env["OLLAMA_HOST"])
        values.update({k: v for k, v in flags.items() if v is not None})
        return cls(**values)


def _coerce(kind: Any, raw: str) -> Any:
    kind = str(kind)
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if kind.startswith("dict"):
        return dict(item.split("=", 1) for item in raw.split(",") if "=" in item)
    return raw
