"""The Ollama engine against the wire-level Ollama double: models, streaming, counters, errors, cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path

import httpx
import pytest

from node_agent.engines.base import (
    Completion,
    Delta,
    EngineBusy,
    EngineUnavailable,
    GenerationFailed,
    ModelUnavailable,
)
from node_agent.engines.ollama import OllamaEngine, is_embedding_model
from node_agent.engines.registry import UnknownEngine, create_engine, engine_kinds
from protocol import ChatMessage, GenerationParams
from tests.doubles.ollama_double import DoubleModel, OllamaDouble, default_tokens, embedding

REPO = Path(__file__).resolve().parents[2]
CHAT = "llama3.2:1b"
EMBED = "nomic-embed-text:latest"
BIG = "qwen2.5:7b"
HELLO = (ChatMessage(role="user", content="Say hello"),)
WAIT = 30.0  # generous bound for every condition wait; never a measured duration


@pytest.fixture
async def double():
    models = [CHAT, EMBED, DoubleModel(BIG, size=4_700_000_000, context_length=32768, family="qwen2")]
    async with OllamaDouble(models, loaded=[CHAT, BIG], load_on_use=False) as d:
        yield d


@pytest.fixture
async def engine(double):
    engine = create_engine("ollama", double.url)
    yield engine
    await engine.aclose()


async def run_chat(engine, model=CHAT, messages=HELLO, **params) -> tuple[list[str], Completion]:
    """Consume a whole chat; checks that exactly one Completion comes last."""
    deltas: list[str] = []
    completions: list[Completion] = []
    async with contextlib.aclosing(engine.chat(model, messages, GenerationParams(**params))) as stream:
        async for item in stream:
            assert not completions, "nothing may follow the Completion"
            if isinstance(item, Delta):
                deltas.append(item.text)
            else:
                completions.append(item)
    assert len(completions) == 1
    return deltas, completions[0]


def last_body(double: OllamaDouble, path: str) -> dict:
    return double.requests_to(path)[-1].body


# -- models and health -------------------------------------------------------------------------


async def test_registry_builds_ollama_and_rejects_unknown_kinds(double):
    assert "ollama" in engine_kinds()
    engine = create_engine("Ollama", double.url, keep_alive="10m")
    assert isinstance(engine, OllamaEngine) and engine.keep_alive == "10m"
    await engine.aclose()
    with pytest.raises(UnknownEngine):
        create_engine("no-such-engine", double.url)


async def test_health_reports_the_version(engine, double):
    health = await engine.health()
    assert health.ok and health.version == double.version


async def test_list_models_merges_tags_with_loaded_models(engine):
    models = {m.name: m for m in await engine.list_models()}
    assert set(models) == {CHAT, EMBED, BIG}
    assert models[CHAT].loaded and models[BIG].loaded and not models[EMBED].loaded
    assert models[BIG].size_bytes == 4_700_000_000
    assert models[BIG].context_length == 32768
    assert models[EMBED].context_length is None  # only known once loaded
    assert models[EMBED].embeddings and not models[CHAT].embeddings and not models[BIG].embeddings


async def test_loaded_flags_follow_the_engine(engine, double):
    double.unload(CHAT)
    double.load(EMBED)
    models = {m.name: m for m in await engine.list_models()}
    assert not models[CHAT].loaded and models[EMBED].loaded


@pytest.mark.parametrize(
    ("name", "family", "families", "expected"),
    [
        ("nomic-embed-text:latest", "nomic-bert", ["nomic-bert"], True),
        ("all-minilm:l6-v2", "bert", ["bert"], True),
        ("mxbai-embed-large", None, None, True),
        ("llama3.2:1b", "llama", ["llama"], False),
        ("qwen2.5:7b", "qwen2", None, False),
    ],
)
def test_embedding_model_rule(name, family, families, expected):
    assert is_embedding_model(name, family, families) is expected


# -- chat --------------------------------------------------------------------------------------


async def test_chat_streams_tokens_in_order_with_usage_from_counters(engine, double):
    deltas, done = await run_chat(engine)
    assert deltas == list(default_tokens("Say hello", double.token_count))
    assert done.finish_reason == "stop"
    assert done.prompt_tokens == 2
    assert done.completion_tokens == len(deltas)
    assert done.eval_seconds == pytest.approx(len(deltas) * double.eval_ns_per_token / 1e9)
    assert done.tokens_per_second == pytest.approx(1e9 / double.eval_ns_per_token)


async def test_chat_sends_generation_params_as_ollama_options(double):
    engine = OllamaEngine(double.url, keep_alive="5m")
    try:
        params = dict(max_tokens=64, temperature=0.2, top_p=0.9, stop=("###",), seed=7, format="json")
        deltas, _ = await run_chat(engine, messages=(ChatMessage(role="system", content="Be terse"), *HELLO), **params)
    finally:
        await engine.aclose()
    body = last_body(double, "/api/chat")
    assert body["model"] == CHAT and body["stream"] is True
    assert body["messages"] == [{"role": "system", "content": "Be terse"}, {"role": "user", "content": "Say hello"}]
    assert body["options"] == {"num_predict": 64, "temperature": 0.2, "top_p": 0.9, "stop": ["###"], "seed": 7}
    assert body["format"] == "json" and body["keep_alive"] == "5m"
    assert "".join(deltas).startswith('{"text": "')  # the double honours structured output


async def test_stream_follows_the_double_tokens_and_pacing(engine, double):
    double.tokens = ["Hello", ",", " world", "", "!"]
    double.delay_ms = 1
    deltas, done = await run_chat(engine)
    assert deltas == ["Hello", ",", " world", "!"]  # empty pieces are not Deltas
    assert done.completion_tokens == 5


async def test_max_tokens_reached_finishes_with_length(engine):
    deltas, done = await run_chat(engine, max_tokens=3)
    assert len(deltas) == 3
    assert done.finish_reason == "length" and done.completion_tokens == 3


async def test_missing_counters_mean_unknown_not_zero(engine, double):
    double.counters = False
    deltas, done = await run_chat(engine)
    assert deltas
    assert done.prompt_tokens is None and done.completion_tokens is None
    assert done.eval_seconds is None and done.tokens_per_second is None


# -- failures ----------------------------------------------------------------------------------


async def test_mid_stream_error_fails_after_the_tokens_it_produced(engine, double):
    double.error_after = 2
    received: list[str] = []
    with pytest.raises(GenerationFailed) as info:
        async with contextlib.aclosing(engine.chat(CHAT, HELLO, GenerationParams())) as stream:
            async for item in stream:
                received.append(item.text)
    assert received == list(default_tokens("Say hello", 2))
    assert info.value.produced_tokens is True
    assert info.value.code == "engine_error"
    assert "error was encountered" in str(info.value)


async def test_error_before_any_token_is_retryable(engine, double):
    double.error_after = 0
    with pytest.raises(GenerationFailed) as info:
        await run_chat(engine)
    assert info.value.produced_tokens is False


async def test_busy_ollama_raises_engine_busy(engine, double):
    double.status = 503
    with pytest.raises(EngineBusy) as info:
        await run_chat(engine)
    assert info.value.produced_tokens is False and info.value.code == "engine_busy"
    with pytest.raises(EngineBusy):
        await engine.embed(EMBED, ["x"])


async def test_queue_full_raises_engine_busy(engine, double):
    double.max_active = 1
    double.stall_after = 1
    async with contextlib.aclosing(engine.chat(CHAT, HELLO, GenerationParams())) as first:
        assert isinstance(await anext(first), Delta)
        with pytest.raises(EngineBusy):
            await run_chat(engine)


async def test_unknown_model_raises_model_unavailable(engine):
    with pytest.raises(ModelUnavailable) as info:
        await run_chat(engine, model="no-such-model")
    assert "not found" in str(info.value) and info.value.code == "model_unavailable"
    with pytest.raises(ModelUnavailable):
        await engine.embed("no-such-model", ["x"])


async def test_model_names_resolve_like_ollama(engine):
    vectors, _ = await engine.embed("nomic-embed-text", ["x"])  # ":latest" is implied, as in Ollama
    assert len(vectors) == 1


async def test_stopped_ollama_is_unavailable_and_comes_back_on_restart(engine, double):
    await double.stop()
    with pytest.raises(EngineUnavailable) as info:
        await run_chat(engine)
    assert info.value.produced_tokens is False and info.value.code == "engine_unavailable"
    with pytest.raises(EngineUnavailable):
        await engine.list_models()
    with pytest.raises(EngineUnavailable):
        await engine.embed(EMBED, ["x"])
    health = await engine.health()
    assert not health.ok and health.detail

    await double.start()
    assert (await engine.health()).ok
    deltas, done = await run_chat(engine)
    assert deltas and done.finish_reason == "stop"


async def test_ollama_dying_mid_stream_is_unavailable_with_tokens_produced(engine, double):
    double.stall_after = 2
    with pytest.raises(EngineUnavailable) as info:
        async with contextlib.aclosing(engine.chat(CHAT, HELLO, GenerationParams())) as stream:
            assert isinstance(await anext(stream), Delta)
            await double.restart()  # Ollama goes away mid-answer and comes back
            async for _ in stream:
                pass
    assert info.value.produced_tokens is True
    double.clear_faults()
    deltas, _ = await run_chat(engine)
    assert deltas == list(default_tokens("Say hello", double.token_count))


# -- cancellation ------------------------------------------------------------------------------


async def test_closing_the_stream_closes_the_http_stream(engine, double):
    double.stall_after = 2
    stream = engine.chat(CHAT, HELLO, GenerationParams())
    first = [await anext(stream), await anext(stream)]
    assert [d.text for d in first] == list(default_tokens("Say hello", 2))
    await double.wait_active(1, timeout=WAIT)
    await stream.aclose()
    await double.wait_cancelled(1, timeout=WAIT)
    await double.wait_for(lambda: double.active_streams == 0, timeout=WAIT)
    assert double.completed_streams == 0


async def test_cancelled_task_closes_the_http_stream(engine, double):
    double.stall_after = 1
    got_token = asyncio.Event()

    async def consume() -> None:
        async with contextlib.aclosing(engine.chat(CHAT, HELLO, GenerationParams())) as stream:
            async for _ in stream:
                got_token.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(WAIT):
        await got_token.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await double.wait_cancelled(1, timeout=WAIT)
    assert double.stream_cancelled.is_set()


# -- embeddings --------------------------------------------------------------------------------


async def test_embeddings_are_deterministic_vectors_per_input(engine, double):
    vectors, prompt_tokens = await engine.embed(EMBED, ["hello world", "bye"])
    assert vectors == [embedding("hello world", double.embed_dim), embedding("bye", double.embed_dim)]
    assert prompt_tokens == 3
    assert last_body(double, "/api/embed")["input"] == ["hello world", "bye"]
    assert await engine.embed(EMBED, []) == ([], 0)


# -- the double's own wire shapes ---------------------------------------------------------------


async def test_double_speaks_ollama_json(double):
    chat = {"model": CHAT, "messages": [{"role": "user", "content": "Say hello"}], "options": {"num_predict": 4}}
    async with httpx.AsyncClient(base_url=double.url, timeout=WAIT) as client:
        r = await client.post("/api/chat", json=chat)
        assert r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.text.splitlines()]
        assert [x["done"] for x in lines] == [False] * 4 + [True]
        assert lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 4

        r = await client.post("/api/chat", json={**chat, "stream": False})
        body = r.json()
        assert body["done"] is True and body["message"]["content"] == "".join(default_tokens("Say hello", 4))
        assert body["message"]["role"] == "assistant" and body["eval_duration"] == 4 * double.eval_ns_per_token

        r = await client.post("/api/chat", json={**chat, "model": "ghost"})
        assert (r.status_code, r.json()) == (404, {"error": 'model "ghost" not found, try pulling it first'})
        double.status = 503
        r = await client.post("/api/embed", json={"model": EMBED, "input": "x"})
        assert r.status_code == 503 and "server busy" in r.json()["error"]
        assert (await client.get("/api/version")).json() == {"version": double.version}


# -- the double as a process -------------------------------------------------------------------


async def test_double_runs_as_a_process():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.doubles.ollama_double", "--port", "0", "--models", "tiny,embed-mini",
        cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT):
            line = (await proc.stdout.readline()).decode().strip()
        assert line.startswith("ollama-double listening on http://127.0.0.1:"), line
        url = line.rsplit(" ", 1)[1]
        async with httpx.AsyncClient(base_url=url, timeout=WAIT) as client:
            tags = (await client.get("/api/tags")).json()
            assert [m["name"] for m in tags["models"]] == ["tiny", "embed-mini"]
            await client.post("/_double/config", json={"status": 503})
            assert (await client.post("/api/chat", json={"model": "tiny", "messages": []})).status_code == 503
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            async with asyncio.timeout(WAIT):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0


async def test_chats_in_a_row_reuse_one_kept_alive_connection(engine, double):
    """A finished chat reads its HTTP body to the end, so the next one goes over the same connection."""
    for _ in range(3):
        deltas, done = await run_chat(engine)
        assert deltas and done.finish_reason == "stop"
    clients = {r.client for r in double.requests_to("/api/chat")}
    assert len(double.requests_to("/api/chat")) == 3 and len(clients) == 1, clients
