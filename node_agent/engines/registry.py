"""Build an engine from its kind name: the one place that knows every engine implementation."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from node_agent.engines.base import Engine

#: kind -> "module:factory"; imported on use so an engine's dependencies load only when chosen.
_ENGINES: dict[str, str] = {
    "ollama": "node_agent.engines.ollama:OllamaEngine",
    "openai": "node_agent.engines.openai_compat:OpenAICompatEngine",
    "llamacpp": "node_agent.engines.llamacpp:LlamaCppEngine",
}


class UnknownEngine(ValueError):
    """No engine of that kind exists."""


def engine_kinds() -> tuple[str, ...]:
    """The engine kinds `create_engine` accepts."""
    return tuple(_ENGINES)


def default_url(kind: str) -> str:
    """The URL an engine of `kind` uses when none is configured (llamacpp: '' = the bundled model)."""
    module, _, _ = _target(kind).partition(":")
    return getattr(import_module(module), "DEFAULT_URL")


def _target(kind: str) -> str:
    try:
        return _ENGINES[kind.strip().lower()]
    except KeyError:
        raise UnknownEngine(f"unknown engine {kind!r}; known: {', '.join(_ENGINES)}") from None


def create_engine(kind: str, url: str, **opts: Any) -> Engine:
    """An engine of `kind` talking to `url`; `opts` go to its constructor (e.g. keep_alive for ollama)."""
    module, _, factory = _target(kind).partition(":")
    return getattr(import_module(module), factory)(url, **opts)


def engine_for(settings: Any) -> Engine:
    """The engine a NodeSettings describes, with the options that apply to its kind."""
    kind = settings.engine.strip().lower()
    opts: dict[str, Any] = {}
    if kind == "ollama" and settings.keep_alive:
        opts["keep_alive"] = settings.keep_alive
    elif kind == "openai" and settings.engine_api_key:
        opts["api_key"] = settings.engine_api_key
    elif kind == "llamacpp":
        opts.update(n_ctx=settings.llama_context, n_threads=settings.llama_threads or None)
    return create_engine(kind, settings.engine_url, **opts)
