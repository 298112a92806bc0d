"""The operator's config file: where it lives, reading it (TOML), and the commented file `init` writes."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node_agent.settings import SettingsError

ENV_VAR = "INFERNET_NODE_CONFIG"


def default_path(env: Mapping[str, str] | None = None) -> Path:
    """$INFERNET_NODE_CONFIG, else $XDG_CONFIG_HOME/infernet/node.toml, else ~/.config/infernet/node.toml."""
    env = os.environ if env is None else env
    if env.get(ENV_VAR):
        return Path(env[ENV_VAR]).expanduser()
    base = Path(env["XDG_CONFIG_HOME"]).expanduser() if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "infernet" / "node.toml"


def load(path: Path, *, required: bool) -> dict[str, Any]:
    """The file's settings; {} when it does not exist and was not asked for explicitly."""
    if not path.exists():
        if required:
            raise SettingsError(f"config file {path} does not exist; "
                                f"create it with 'infernet-node init --config {path}'")
        return {}
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc}") from None


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(*, nats_url: str = "nats://127.0.0.1:4222", node_token: str = "", engine: str = "ollama",
           engine_url: str = "http://127.0.0.1:11434", max_concurrency: int = 1, region: str = "") -> str:
    """The commented config file `infernet-node init` writes."""
    return f"""\
# Infernet node agent configuration (read by every infernet-node command; see docs/operators.md).
# Precedence: command-line flag > environment variable > this file > built-in default.

# The control plane's NATS URL(s), comma-separated.                          [INFERNET_NATS_URL]
nats_url = {_toml_str(nats_url)}

# This node's token, printed once by 'infernet-control-plane nodes register NAME'. [INFERNET_NODE_TOKEN]
# Keep this file private (chmod 600): the token lets anyone act as this node.
node_token = {_toml_str(node_token)}

# The inference engine beside this agent:                                    [INFERNET_ENGINE]
#   "ollama"    Ollama (default)
#   "openai"    any OpenAI-compatible server: vLLM, SGLang, llama.cpp server, LM Studio
#   "llamacpp"  built-in llama.cpp running a GGUF file (needs: pip install 'infernet[llama]')
engine = {_toml_str(engine)}

# Where the engine listens. Ollama: http://127.0.0.1:11434 (OLLAMA_HOST works too);
# openai: the server's base URL, e.g. http://127.0.0.1:8000/v1; llamacpp: a .gguf path ("" = bundled SmolLM2).
engine_url = {_toml_str(engine_url)}                                         # [INFERNET_ENGINE_URL]

# Bearer key for an OpenAI-compatible server that requires one (vLLM --api-key).  [INFERNET_ENGINE_API_KEY]
# engine_api_key = ""

# Jobs this node runs at once. Match the engine's parallelism (OLLAMA_NUM_PARALLEL, vLLM batch).
max_concurrency = {int(max_concurrency)}                                     # [INFERNET_MAX_CONCURRENCY]

# Which of the engine's models to offer. Glob patterns; an empty allow list offers every model.
models_allow = []                        # e.g. ["llama3.*", "qwen2.5:*"]    [INFERNET_MODELS_ALLOW]
models_deny = []                         # e.g. ["*embed*"]                  [INFERNET_MODELS_DENY]

# Your asking price in credits per 1M tokens (advertised as the label price_per_mtok).
# price_per_mtok = 0.0

# Prometheus /metrics and a JSON /status for 'infernet-node status'; 0 = off.  [INFERNET_METRICS_PORT]
metrics_port = 9464
# metrics_host = "127.0.0.1"             # "0.0.0.0" lets a remote Prometheus scrape it

# Measure tokens/sec with a short generation per loaded model at start.      [INFERNET_BENCH_ON_START]
bench_on_start = false

# Logs: "json" for machines and journald, "console" for humans.              [INFERNET_LOG_FORMAT]
log_format = "json"
log_level = "info"

# The control plane's HTTP URL: lets 'infernet-node doctor' check it and the clock. [INFERNET_CONTROL_PLANE_URL]
# control_plane_url = "https://infernet.example.org"

# Free-form facts advertised with this node; jobs can ask for them (region, tier, ...).
[labels]
{"region = " + _toml_str(region) if region else '# region = "eu-west"'}
"""
