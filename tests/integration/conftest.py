"""Integration-tier fixtures: an in-process stack on the session's real NATS and a fresh database."""

from __future__ import annotations

import pytest

from tests.doubles.ollama_double import OllamaDouble
from tests.harness import Stack


@pytest.fixture
async def stack(nats_url, database_url):
    s = await Stack(nats_url, database_url).start()
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def double():
    async with OllamaDouble(models=["qwen2.5:7b", "llama3.2:3b"]) as d:
        yield d
