"""Wire-level test doubles of the engines the node agent talks to (no mocks of client libraries).

Names are imported lazily so `python -m tests.doubles.ollama_double` does not load the module twice.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DoubleModel", "OllamaDouble", "RecordedRequest", "default_tokens"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from tests.doubles import ollama_double

        return getattr(ollama_double, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
