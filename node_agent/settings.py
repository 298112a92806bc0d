"""The node agent's settings: one frozen object; flags > environment > config file > defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any


class SettingsError(ValueError):
    """A setting has a value the agent cannot use; the message names it and where it came from."""


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
    #: Token from `infernet-control-plane nodes register NAME` (INFERNET_NODE_TOKEN); it is also the node's
    #: credential on the bus.
    node_token: str | None = None
    #: PEM file of the CA that signed the NATS server's certificate (INFERNET_NATS_TLS_CA); set it when the
    #: bus runs TLS with a private CA. With tls:// URLs and no CA file the system's CAs are used.
    nats_tls_ca: str | None = None
    #: Engine kind (INFERNET_ENGINE): "ollama" (default), "openai" (vLLM, SGLang, llama.cpp server,
    #: LM Studio), "llamacpp" (built-in, in-process).
    engine: str = "ollama"
    #: Engine URL (INFERNET_ENGINE_URL, or OLLAMA_HOST for Ollama); for llamacpp the GGUF path ("" = bundled).
    engine_url: str = "http://127.0.0.1:11434"
    #: Bearer key for an OpenAI-compatible engine that wants one (INFERNET_ENGINE_API_KEY).
    engine_api_key: str | None = None
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
    #: Free-form facts advertised with the node, e.g. region=eu-west (INFERNET_LABELS="region=eu-west,tier=a").
    labels: dict[str, str] = field(default_factory=dict)
    #: Only models matching one of these glob patterns are advertised; empty = all (INFERNET_MODELS_ALLOW).
    models_allow: tuple[str, ...] = ()
    #: Models matching any of these glob patterns are never advertised (INFERNET_MODELS_DENY).
    models_deny: tuple[str, ...] = ()
    #: The operator's asking price in credits per 1M tokens, advertised as the label `price_per_mtok`.
    price_per_mtok: float | None = None
    #: Port of the /metrics and /status HTTP endpoint; 0 = off (INFERNET_METRICS_PORT; 9464 is customary).
    metrics_port: int = 0
    #: Interface the /metrics endpoint binds (INFERNET_METRICS_HOST).
    metrics_host: str = "127.0.0.1"
    #: Run a short generation per loaded model at start so tokens/sec is known before the first job.
    bench_on_start: bool = False
    #: Ollama's keep_alive for every request, e.g. "30m" or "-1" (INFERNET_KEEP_ALIVE); unset = Ollama's default.
    keep_alive: str | None = None
    #: llama.cpp threads for the built-in engine; 0 = half the CPUs (INFERNET_LLAMA_THREADS).
    llama_threads: int = 0
    #: llama.cpp context window for the built-in engine, in tokens (INFERNET_LLAMA_CONTEXT).
    llama_context: int = 4096
    #: The control plane's HTTP URL, used by `doctor` (reachability, clock skew) (INFERNET_CONTROL_PLANE_URL).
    control_plane_url: str | None = None

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @classmethod
    def resolve(cls, env: Mapping[str, str] | None = None, file_values: Mapping[str, Any] | None = None,
                **flags: Any) -> NodeSettings:
        """Merge defaults < config file < environment < flags (flags that are None are 'not passed')."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {"max_concurrency": _default_concurrency(env)}
        #: Where each value came from: 1 file, 2 environment, 3 flag (absent: default).
        level: dict[str, int] = {}
        names = {f.name: f for f in fields(cls)}
        for key, value in (file_values or {}).items():
            if key not in names:
                raise SettingsError(f"unknown setting {key!r} in the config file; known: {', '.join(names)}")
            values[key], level[key] = _from_file(names[key].type, key, value), 1
        for name, f in names.items():
            raw = env.get(f"INFERNET_{name.upper()}")
            if raw:
                values[name], level[name] = _coerce(f.type, raw, f"INFERNET_{name.upper()}"), 2
        engine = str(flags.get("engine") or values.get("engine") or "ollama").strip().lower()
        if flags.get("engine") is not None:
            level["engine"] = 3
        if "INFERNET_ENGINE_URL" not in env and env.get("OLLAMA_HOST") and engine == "ollama":
            values["engine_url"], level["engine_url"] = normalize_ollama_host(env["OLLAMA_HOST"]), 2
        for key, value in flags.items():
            if value is not None:
                values[key], level[key] = value, 3
        values["engine"] = engine
        # An engine chosen above the level its URL was set at (e.g. --engine llamacpp over a file written for
        # Ollama) does not inherit that URL: it gets its own default.
        if "engine_url" in values and level.get("engine", 0) > level.get("engine_url", 0) \
                and str((file_values or {}).get("engine", "ollama")).lower() != engine and level.get("engine_url") == 1:
            del values["engine_url"]
        if "engine_url" not in values:
            from node_agent.engines.registry import UnknownEngine, default_url

            try:
                values["engine_url"] = default_url(engine)
            except UnknownEngine as exc:
                raise SettingsError(str(exc)) from None
        return cls(**values)

    def advertised_labels(self) -> dict[str, str]:
        """Labels as advertised: the configured ones plus the asking price when set."""
        labels = dict(self.labels)
        if self.price_per_mtok is not None:
            labels["price_per_mtok"] = f"{self.price_per_mtok:g}"
        return labels


def _coerce(kind: Any, raw: str, source: str) -> Any:
    """An environment string as the field's type."""
    kind = str(kind)
    try:
        if kind.startswith("bool"):
            if raw.strip().lower() in ("1", "true", "yes", "on"):
                return True
            if raw.strip().lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if kind.startswith("int"):
            return int(raw)
        if kind.startswith("float"):
            return float(raw)
    except ValueError:
        raise SettingsError(f"{source}={raw!r} is not a valid {kind.split(' ')[0]}") from None
    if kind.startswith("dict"):
        return dict(item.strip().split("=", 1) for item in raw.split(",") if "=" in item)
    if kind.startswith("tuple"):
        return tuple(item.strip() for item in raw.split(",") if item.strip())
    return raw


def _from_file(kind: Any, key: str, value: Any) -> Any:
    """A TOML value checked against the field's type (TOML already gives ints, floats, lists, tables)."""
    kind = str(kind)
    ok = {
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "dict": isinstance(value, dict),
        "tuple": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "str": isinstance(value, str),
    }
    base = kind.split("[")[0].split(" ")[0]
    if base not in ok:
        return value
    if not ok[base]:
        raise SettingsError(f"config file: {key} = {value!r} should be a {kind}")
    if base == "tuple":
        return tuple(value)
    if base == "dict":
        return {str(k): str(v) for k, v in value.items()}
    if base == "float":
        return float(value)
    return value
