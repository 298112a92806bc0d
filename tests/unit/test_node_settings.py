"""Node settings: flag > environment > config file > default, the config file `init` writes, allow/deny rules."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from node_agent import config
from node_agent.agent import model_allowed
from node_agent.settings import NodeSettings, SettingsError, normalize_ollama_host


def test_defaults_without_file_env_or_flags():
    s = NodeSettings.resolve(env={})
    assert s.engine == "ollama" and s.engine_url == "http://127.0.0.1:11434"
    assert s.max_concurrency == 1 and s.metrics_port == 0 and s.bench_on_start is False
    assert s.models_allow == () and s.labels == {}


def test_flag_beats_env_beats_file_beats_default():
    file = {"nats_url": "nats://file:4222", "max_concurrency": 2, "log_level": "debug", "metrics_port": 9000}
    env = {"INFERNET_NATS_URL": "nats://env:4222", "INFERNET_MAX_CONCURRENCY": "3"}
    s = NodeSettings.resolve(env=env, file_values=file, max_concurrency=4, metrics_port=None)
    assert s.max_concurrency == 4  # flag
    assert s.nats_url == "nats://env:4222"  # env over file
    assert s.log_level == "debug" and s.metrics_port == 9000  # file over default; None flag = not passed


def test_ollama_host_counts_as_environment_for_ollama_only():
    env = {"OLLAMA_HOST": "0.0.0.0:11500"}
    assert NodeSettings.resolve(env=env, file_values={"engine_url": "http://file:1"}).engine_url == \
        "http://127.0.0.1:11500"
    assert NodeSettings.resolve(env=env, engine_url="http://flag:2").engine_url == "http://flag:2"
    openai = NodeSettings.resolve(env=env, engine="openai")
    assert openai.engine_url == "http://127.0.0.1:8000/v1"
    assert normalize_ollama_host("gpu-box") == "http://gpu-box:11434"


def test_each_engine_gets_its_own_default_url():
    assert NodeSettings.resolve(env={}, engine="llamacpp").engine_url == ""
    assert NodeSettings.resolve(env={"INFERNET_ENGINE": "openai"}).engine_url == "http://127.0.0.1:8000/v1"
    # A URL written in the file for Ollama is not inherited by an engine chosen on the command line.
    file = {"engine": "ollama", "engine_url": "http://127.0.0.1:11434"}
    assert NodeSettings.resolve(env={}, file_values=file, engine="llamacpp").engine_url == ""
    # ... but a URL given at the same level as the engine is kept.
    assert NodeSettings.resolve(env={}, file_values={"engine": "openai", "engine_url": "http://vllm:8000/v1"}) \
        .engine_url == "http://vllm:8000/v1"


def test_environment_values_are_typed():
    env = {"INFERNET_MODELS_DENY": "*embed*, llava*", "INFERNET_BENCH_ON_START": "yes",
           "INFERNET_LABELS": "region=eu-west,tier=gold", "INFERNET_PRICE_PER_MTOK": "0.25"}
    s = NodeSettings.resolve(env=env)
    assert s.models_deny == ("*embed*", "llava*") and s.bench_on_start is True
    assert s.labels == {"region": "eu-west", "tier": "gold"}
    assert s.advertised_labels() == {"region": "eu-west", "tier": "gold", "price_per_mtok": "0.25"}
    with pytest.raises(SettingsError, match="INFERNET_MAX_CONCURRENCY"):
        NodeSettings.resolve(env={"INFERNET_MAX_CONCURRENCY": "many"})


def test_config_file_mistakes_name_the_key():
    with pytest.raises(SettingsError, match="unknown setting 'nats'"):
        NodeSettings.resolve(env={}, file_values={"nats": "x"})
    with pytest.raises(SettingsError, match="max_concurrency"):
        NodeSettings.resolve(env={}, file_values={"max_concurrency": "4"})
    with pytest.raises(SettingsError, match="unknown engine"):
        NodeSettings.resolve(env={}, engine="tgi")


def test_init_template_is_valid_toml_that_resolves(tmp_path: Path):
    text = config.render(node_token="infnode_ab12_secret", engine="openai", engine_url="http://vllm:8000/v1",
                         max_concurrency=8, region="eu-west")
    assert text.count("#") > 20, "the file explains itself"
    path = tmp_path / "node.toml"
    path.write_text(text)
    values = config.load(path, required=True)
    s = NodeSettings.resolve(env={}, file_values=values)
    assert (s.engine, s.engine_url, s.max_concurrency) == ("openai", "http://vllm:8000/v1", 8)
    assert s.node_token == "infnode_ab12_secret" and s.labels == {"region": "eu-west"} and s.metrics_port == 9464
    assert tomllib.loads(config.render())["labels"] == {}


def test_config_path_and_missing_files(tmp_path: Path):
    assert config.default_path({"INFERNET_NODE_CONFIG": "/etc/infernet/node.toml"}) == Path("/etc/infernet/node.toml")
    assert config.default_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "infernet" / "node.toml"
    assert config.load(tmp_path / "absent.toml", required=False) == {}
    with pytest.raises(SettingsError, match="infernet-node init"):
        config.load(tmp_path / "absent.toml", required=True)
    (tmp_path / "bad.toml").write_text("nats_url = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        config.load(tmp_path / "bad.toml", required=True)


@pytest.mark.parametrize(("name", "allow", "deny", "expected"), [
    ("llama3.2:1b", (), (), True),
    ("llama3.2:1b", ("llama3.*",), (), True),
    ("qwen2.5:7b", ("llama3.*",), (), False),
    ("nomic-embed-text:latest", (), ("*embed*",), False),
    ("llama3.2:1b", ("llama*",), ("*:1b",), False),  # deny wins
])
def test_model_allow_deny(name, allow, deny, expected):
    assert model_allowed(name, allow, deny) is expected


def test_nats_reconnects_back_off_exponentially_with_jitter():
    from types import SimpleNamespace

    from node_agent.agent import reconnect_backoff

    a, b = SimpleNamespace(reconnects=0), SimpleNamespace(reconnects=3)
    server, delay = reconnect_backoff([b, a], {})
    assert server is a and 0.2 <= delay <= 0.3
    delays = [reconnect_backoff([SimpleNamespace(reconnects=n)], {})[1] for n in range(12)]
    for n, delay in enumerate(delays):  # doubling from 0.25 s, capped at 10 s, jittered by +-20% exactly
        base = min(10.0, 0.25 * 2 ** min(n, 6))
        assert base * 0.8 <= delay <= base * 1.2, (n, delay)
    assert 8.0 <= delays[-1] <= 12.0  # capped around 10 s
