"""Integration-tier fixtures: the default Ollama double (the `stack` fixture lives in tests/fixtures/stack.py)."""

from __future__ import annotations

import pytest

from tests.doubles.ollama_double import OllamaDouble


@pytest.fixture
async def double():
    async with OllamaDouble(models=["qwen2.5:7b", "llama3.2:3b"]) as d:
        yield d
