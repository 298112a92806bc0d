"""The control plane's settings: one frozen object, read from INFERNET_* environment variables at the entry point."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any


def _replica_id() -> str:
    return f"cp_{secrets.token_hex(4)}"


@dataclass(frozen=True, slots=True)
class Settings:
    #: libpq URI of PostgreSQL (INFERNET_DATABASE_URL). Required by `serve`; `dev` starts an embedded one.
    database_url: str | None = None
    #: NATS server URL(s), comma-separated (INFERNET_NATS_URL).
    nats_url: str = "nats://127.0.0.1:4222"
    #: Address and port the HTTP API listens on (INFERNET_HTTP_HOST, INFERNET_HTTP_PORT).
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: Name of this replica in logs and job claims (INFERNET_REPLICA_ID); random by default.
    replica_id: str = field(default_factory=_replica_id)
    #: "json" for production, "console" for humans (INFERNET_LOG_FORMAT), and the level (INFERNET_LOG_LEVEL).
    log_format: str = "json"
    log_level: str = "info"
    #: Seconds a node has to accept an assignment before the next candidate is tried.
    assign_timeout_s: float = 2.0
    #: Attempts per job when nodes are lost before producing a token.
    max_attempts: int = 3
    #: Default wall-clock budget of a job in seconds, queueing included (INFERNET_DEFAULT_MAX_WALLCLOCK_SECS).
    default_max_wallclock_secs: float = 300.0
    #: Seconds a replica's claim on a pending job lasts without renewal.
    claim_secs: float = 10.0
    #: Seconds between sweeps for orphaned pending jobs, lost nodes and expired deadlines.
    sweep_interval_s: float = 1.0
    #: JetStream replicas of the results and token streams (INFERNET_STREAM_REPLICAS): 3 on a 3-server cluster.
    stream_replicas: int = 1
    #: How long token chunks stay replayable on the bus.
    token_replay_secs: float = 600.0
    #: PostgreSQL pool bounds.
    db_pool_min: int = 2
    db_pool_max: int = 16
    #: Seconds after start during which unknown models are queued, not refused: nodes may not have advertised yet.
    warmup_s: float = 15.0
    #: Seconds an authenticated key stays cached in memory.
    auth_cache_secs: float = 5.0
    #: Seconds between SSE heartbeat comments on a quiet stream (INFERNET_STREAM_HEARTBEAT_S).
    stream_heartbeat_s: float = 15.0
    #: Token chunks buffered per open stream; beyond it the relay drops live chunks and replays them from JetStream.
    stream_buffer_chunks: int = 4096
    #: Streams and waiting /v1 requests one account may hold open on this replica; more get 429 (0 = no limit).
    max_open_streams_per_account: int = 0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Read INFERNET_<FIELD> variables; keyword overrides (from CLI flags) win when not None."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"INFERNET_{f.name.upper()}")
            if raw is None or raw == "":
                continue
            values[f.name] = _coerce(f.type, raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def _coerce(kind: Any, raw: str, name: str) -> Any:
    kind = str(kind)
    try:
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
        if kind.startswith("bool"):
            return raw.lower() in {"1", "true", "yes", "on"}
    except ValueError:
        raise ValueError(f"INFERNET_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
