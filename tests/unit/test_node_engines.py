"""Pure parts of the engines: registry, URLs, request bodies, stop-string handling, status rendering."""

from __future__ import annotations

import pytest

from node_agent.doctor import FAIL, OK, check_token
from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, LlamaCppEngine, _first_stop, _stop_prefix_len
from node_agent.engines.openai_compat import _request_body, _status_error, api_base
from node_agent.engines.base import EngineBusy, GenerationFailed, ModelUnavailable
from node_agent.engines.registry import default_url, engine_kinds
from node_agent.settings import NodeSettings
from node_agent.status import render
from protocol import ChatMessage, GenerationParams


def test_registry_knows_three_engines():
    assert set(engine_kinds()) == {"ollama", "openai", "llamacpp"}
    assert default_url("OLLAMA") == "http://127.0.0.1:11434"


@pytest.mark.parametrize("url", ["http://vllm:8000", "http://vllm:8000/", "http://vllm:8000/v1",
                                 "http://vllm:8000/v1/"])
def test_openai_base_url(url):
    assert api_base(url) == "http://vllm:8000/v1"


def test_openai_request_asks_for_streamed_usage():
    body = _request_body("m", (ChatMessage(role="user", content="hi"),),
                         GenerationParams(max_tokens=5, stop=("\n",), seed=7, format={"type": "object"}))
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 5 and body["stop"] == ["\n"] and body["seed"] == 7
    assert body["response_format"]["type"] == "json_schema"


def test_openai_status_mapping():
    assert isinstance(_status_error(503, {"error": {"message": "busy"}}), EngineBusy)
    assert isinstance(_status_error(429, "slow down"), EngineBusy)
    assert isinstance(_status_error(404, {"error": "nope"}), ModelUnavailable)
    err = _status_error(400, {"error": {"message": "bad"}}, produced=True)
    assert isinstance(err, GenerationFailed) and err.produced_tokens and "bad" in str(err)


def test_stop_strings_are_cut_and_their_prefixes_held_back():
    assert _first_stop("hello\nworld", ["\n"]) == 5
    assert _first_stop("hello", ["x"]) is None
    assert _stop_prefix_len("answer: EN", ["END"]) == 2  # "EN" may become "END": hold it
    assert _stop_prefix_len("answer", ["END"]) == 0


def test_llamacpp_engine_names_its_model():
    assert LlamaCppEngine("").model_name == BUNDLED_MODEL_NAME
    assert LlamaCppEngine("/models/Qwen2.5-0.5B-Instruct-Q4_K_M.gguf").model_name == "qwen2.5-0.5b-instruct-q4_k_m"
    assert LlamaCppEngine("/models/x.gguf", model_name="qwen2.5:0.5b").model_name == "qwen2.5:0.5b"


def test_doctor_token_check():
    assert check_token(NodeSettings(node_token=None)).status == FAIL
    bad = check_token(NodeSettings(node_token="not-a-token"))
    assert bad.status == FAIL and "malformed" in bad.detail and bad.fix
    assert check_token(NodeSettings(node_token="infnode_ab12_s3cret")).status == OK


def test_status_render_shows_what_is_advertised():
    text = render({
        "running": True, "node_id": "node_ab12", "state": "online", "agent_version": "0.1.0",
        "engine": "ollama", "engine_version": "0.13.0", "engine_url": "http://127.0.0.1:11434", "engine_ok": True,
        "nats_url": "nats://x:4222", "nats_connected": True, "slots": 2, "active_jobs": 1, "jobs_served": 5,
        "outcomes": {"completed": 4, "failed": 1}, "tokens_generated": 321,
        "models": [{"name": "llama3.2:1b", "loaded": True, "size_bytes": 1_300_000_000, "context_length": 4096,
                    "tokens_per_second": 88.2, "embeddings": False}],
        "hidden_models": ["nomic-embed-text"], "gpus": [{"name": "NVIDIA L4", "vram_total_mb": 23034,
                                                         "vram_free_mb": 9000, "utilization_pct": 50.0,
                                                         "temperature_c": 60.0}],
        "labels": {"region": "eu-west"},
    })
    for fact in ("node_ab12", "0.13.0", "1/2 busy", "4 completed", "llama3.2:1b", "88.2 tok/s", "nomic-embed-text",
                 "NVIDIA L4", "region=eu-west", "earnings"):
        assert fact in text
