"""Security-tier fixtures: an honest network (one node beside an Ollama double) and a rogue's bus connections."""

from __future__ import annotations

import pytest

from tests.doubles.ollama_double import OllamaDouble
from tests.security.rogue import GENUINE, MODEL


@pytest.fixture
async def double():
    """The honest node's engine: a known answer, held after the first token until `release()`."""
    async with OllamaDouble(models=[MODEL], tokens=GENUINE, stall_after=1) as d:
        yield d
