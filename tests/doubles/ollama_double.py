"""A wire-compatible Ollama HTTP server for tests and benchmarks: NDJSON chat, tags, ps, embed, and faults.

In-process (shares the test's event loop)::

    async with OllamaDouble(models=["llama3.2:1b"], delay_ms=0) as double:
        engine = OllamaEngine(double.url)
        double.status = 503            # every setting can be changed at runtime
        await double.stop()            # connection refused from now on
        await double.start()           # same port again

As a process (e2e tests, benchmarks)::

    python -m tests.doubles.ollama_double --port 0 --models a,b --delay-ms 5
    # prints "ollama-double listening on http://127.0.0.1:<port>" once ready

A process is steered at runtime through `/_double/*` (not Ollama endpoints): `GET /_double/state`,
`GET /_double/requests`, `POST /_double/config` (JSON of settings), `POST /_double/release`,
`POST /_double/reset`.

Model names resolve like Ollama's: "x" finds "x:latest" and "x:latest" finds "x"; listings show the
names as configured. Capabilities (/api/show) are "embedding" for embedding models, "completion" and
"vision" for names with "vision" or "llava", "completion" and "tools" otherwise (or as configured).

Tools, as Ollama speaks them: a chat with `tools` whose last message is not a `tool` result answers
with one `message.tool_calls` entry per tool up to `tool_calls_per_reply` (arguments: a JSON object
filled from each tool's parameter schema, words from `default_tokens`), content "", then the done
line; a chat whose last message is a tool result answers with text. A model without the capability
answers 400 "... does not support tools" (or images). Generated text is `default_tokens(prompt, token_count)` unless `tokens` is set;
`options.num_predict` caps it (done_reason "length"), `options.stop` cuts it. Counters are synthetic
and deterministic: eval_duration = eval_count * eval_ns_per_token, whatever the real delay.

Cheating nodes, for the trust tests: `dishonest` answers random words whatever the prompt (it never
ran the model); `usage_factor` multiplies the token counts it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

import msgspec
import uvicorn

from tests.doubles.asgi import read_body

BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"
DEFAULT_ERROR = "an error was encountered while running the model: unexpected EOF"
DEFAULT_MODELS = ("llama3.2:1b", "nomic-embed-text:latest")

_VOCAB = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber basil cedar dune ember fern "
    "granite harbor island jasper kelp lagoon meadow nectar orchid pebble quartz river saffron timber "
    "umber valley willow yarrow zephyr acorn brook cloud dawn"
).split()
_SETTABLE = frozenset(
    "tokens token_count delay_ms error_after error_message status status_message stall_after max_active "
    "embed_dim eval_ns_per_token counters load_on_use version tool_calls_per_reply dishonest usage_factor".split()
)
_JSON = [(b"content-type", b"application/json; charset=utf-8")]
_NDJSON = [(b"content-type", b"application/x-ndjson")]
_CHUNK_TAIL = b'},"done":false}\n'
_enc = msgspec.json.encode
_log = logging.getLogger(__name__)


@lru_cache(maxsize=4096)
def default_tokens(prompt: str, count: int) -> tuple[str, ...]:
    """The double's generated text for a prompt: `count` words, deterministic, space-separated pieces."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=64).digest()
    words = [_VOCAB[(digest[i % 64] + i // 64) % len(_VOCAB)] for i in range(count)]
    return tuple(w if i == 0 else " " + w for i, w in enumerate(words))


def embedding(text: str, dim: int) -> list[float]:
    """A deterministic unit vector for a text (Ollama's /api/embed returns L2-normalised vectors)."""
    raw = hashlib.shake_256(text.encode()).digest(2 * dim)
    values = [int.from_bytes(raw[i : i + 2], "little") / 32767.5 - 1.0 for i in range(0, 2 * dim, 2)]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [v / norm for v in values]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass
class DoubleModel:
    """One model the double serves; family and digest are derived from the name when left empty."""

    name: str
    size: int = 1_321_098_329
    context_length: int = 4096
    family: str = ""
    parameter_size: str = "1.2B"
    quantization_level: str = "Q4_K_M"
    digest: str = ""
    #: What /api/show reports; None derives it from the name and family (see the module docstring).
    capabilities: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if not self.family:
            self.family = "nomic-bert" if "embed" in self.name.lower() else "llama"
        if not self.digest:
            self.digest = hashlib.sha256(self.name.encode()).hexdigest()
        if self.capabilities is None:
            if self.embedding_only:
                self.capabilities = ("embedding",)
            elif "vision" in self.name.lower() or "llava" in self.name.lower():
                self.capabilities = ("completion", "vision")
            else:
                self.capabilities = ("completion", "tools")

    @property
    def embedding_only(self) -> bool:
        return "bert" in self.family or "embed" in self.name.lower()

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization_level,
        }


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """A request the double received; body is the decoded JSON (None when empty, bytes when not JSON)."""

    method: str
    path: str
    body: Any
    #: The client's (host, port): requests on one kept-alive connection share it.
    client: tuple[str, int] | None = None


class _Stream:
    """Runtime state of one in-flight chat request."""

    __slots__ = ("wake", "finished", "disconnected", "killed", "released", "logprobs")

    def __init__(self) -> None:
        #: With logprobs asked for: how many top_logprobs per token (None: not asked).
        self.logprobs: int | None = None
        self.wake = asyncio.Event()
        self.finished = self.disconnected = self.killed = self.released = False


class _Killed(Exception):
    """Raised inside the app on stop() so uvicorn drops the connection like a dying Ollama."""


class _Gone(Exception):
    """The client went away; stop writing."""


class _HideKilled(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Killed))


_HIDE_KILLED = _HideKilled()


class _Server(uvicorn.Server):
    """uvicorn without signal capture (the test process owns signals), event-driven start and stop.

    uvicorn polls for exit every 0.1 s and sleeps 0.1 s on shutdown; a double is started and stopped
    in most tests, so this one waits on events and closes connections at once.
    """

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()
        self.exit = asyncio.Event()

    def capture_signals(self) -> contextlib.AbstractContextManager[None]:  # type: ignore[override]
        return contextlib.nullcontext()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()

    async def main_loop(self) -> None:
        await self.exit.wait()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle: closed now; mid-response: closed when the response ends
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                while self.server_state.connections:
                    await asyncio.sleep(0.002)


class OllamaDouble:
    """An ASGI app plus its uvicorn server pretending to be Ollama; every setting is a public attribute."""

    def __init__(
        self,
        models: Iterable[str | DoubleModel] = DEFAULT_MODELS,
        *,
        loaded: Iterable[str] | None = None,
        tokens: Sequence[str] | None = None,
        token_count: int = 16,
        delay_ms: float = 0.0,
        error_after: int | None = None,
        error_message: str = DEFAULT_ERROR,
        status: int | None = None,
        status_message: str | None = None,
        stall_after: int | None = None,
        max_active: int | None = None,
        embed_dim: int = 16,
        eval_ns_per_token: int = 10_000_000,
        counters: bool = True,
        load_on_use: bool = True,
        version: str = "0.13.0",
        tool_calls_per_reply: int = 1,
        dishonest: bool = False,
        usage_factor: int = 1,
        host: str = "127.0.0.1",
        port: int = 0,
        record_limit: int = 10_000,
    ) -> None:
        #: Fixed pieces to stream instead of `default_tokens(prompt, token_count)`.
        self.tokens = tokens
        self.token_count = token_count
        #: Wait before each token; 0 streams the whole answer in one write.
        self.delay_ms = delay_ms
        #: Emit this many tokens, then an `{"error": ...}` line (non-streamed: HTTP 500).
        self.error_after = error_after
        self.error_message = error_message
        #: Answer chat/embed with this HTTP status and `{"error": status_message}` (503 = busy).
        self.status = status
        self.status_message = status_message
        #: Emit this many tokens, then wait until the client leaves, `release()` or `stop()`.
        self.stall_after = stall_after
        #: Answer 503 (busy) when this many chat requests are already in flight.
        self.max_active = max_active
        self.embed_dim = embed_dim
        self.eval_ns_per_token = eval_ns_per_token
        #: False leaves out prompt_eval_count, eval_count and the durations (engines must say "unknown").
        self.counters = counters
        #: A model that served a request shows in /api/ps afterwards (unless keep_alive was 0).
        self.load_on_use = load_on_use
        self.version = version
        #: How many of the offered tools a tool-calling reply calls (the first ones).
        self.tool_calls_per_reply = tool_calls_per_reply
        #: A cheating engine: random words whatever the prompt (it never ran the model).
        self.dishonest = dishonest
        #: A cheating node: prompt_eval_count and eval_count multiplied by this (claims more tokens than it made).
        self.usage_factor = usage_factor
        self.host = host
        self.models: dict[str, DoubleModel] = {}
        self.loaded: set[str] = set()
        self.set_models(models, loaded=loaded)
        self.requests: deque[RecordedRequest] = deque(maxlen=record_limit)
        self.total_requests = 0
        self.active_streams = 0
        self.completed_streams = 0
        #: Chat requests whose client disconnected before the answer was complete.
        self.cancelled_streams = 0
        #: Set whenever a stream is cancelled by its client (cleared by reset()).
        self.stream_cancelled = asyncio.Event()
        self._port = port
        self._streams: set[_Stream] = set()
        self._change = asyncio.Event()
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._modified_at = _now()
        self._routes: dict[tuple[str, str], Callable[..., Any]] = {
            ("GET", "/"): self._root,
            ("HEAD", "/"): self._root,
            ("GET", "/api/version"): self._version,
            ("GET", "/api/tags"): self._tags,
            ("GET", "/api/ps"): self._ps,
            ("POST", "/api/show"): self._show,
            ("POST", "/api/chat"): self._chat,
            ("POST", "/api/embed"): self._embed,
        }

    # -- configuration -------------------------------------------------------------------------

    def set_models(self, models: Iterable[str | DoubleModel], *, loaded: Iterable[str] | None = None) -> None:
        """Replace the model list; `loaded=None` marks every model loaded."""
        items = [m if isinstance(m, DoubleModel) else DoubleModel(m) for m in models]
        self.models = {m.name: m for m in items}
        names = self.models if loaded is None else loaded
        self.loaded = {r.name for n in names if (r := self._resolve(n)) is not None}

    def load(self, name: str) -> None:
        if (model := self._resolve(name)) is None:
            raise KeyError(name)
        self.loaded.add(model.name)

    def unload(self, name: str) -> None:
        if (model := self._resolve(name)) is not None:
            self.loaded.discard(model.name)

    def configure(self, **changes: Any) -> None:
        """Change settings by name (also `models` and `loaded`); unknown names raise ValueError."""
        unknown = set(changes) - _SETTABLE - {"models", "loaded"}
        if unknown:
            raise ValueError(f"unknown settings: {sorted(unknown)}")
        if "models" in changes:
            self.set_models(changes.pop("models"), loaded=changes.pop("loaded", None))
        if "loaded" in changes:
            self.loaded = {r.name for n in changes.pop("loaded") if (r := self._resolve(n)) is not None}
        for name, value in changes.items():
            setattr(self, name, value)

    def clear_faults(self) -> None:
        """Back to a healthy, zero-latency double."""
        self.configure(delay_ms=0.0, error_after=None, status=None, stall_after=None, max_active=None)
        self.release()

    def reset(self) -> None:
        """Forget recorded requests and counters (settings are kept)."""
        self.requests.clear()
        self.total_requests = self.completed_streams = self.cancelled_streams = 0
        self.stream_cancelled.clear()

    def release(self) -> None:
        """Let every stalled stream continue to its end."""
        for st in self._streams:
            st.released = True
            st.wake.set()

    def requests_to(self, path: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == path]

    def state(self) -> dict[str, Any]:
        return {
            "url": self.url if self._port else None,
            "running": self.running,
            "total_requests": self.total_requests,
            "active_streams": self.active_streams,
            "completed_streams": self.completed_streams,
            "cancelled_streams": self.cancelled_streams,
            "models": sorted(self.models),
            "loaded": sorted(self.loaded),
        }

    # -- waiting -------------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Wait until `predicate()` holds (checked after every request and stream event)."""
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._change.wait()
        except TimeoutError:
            raise TimeoutError(f"double condition not met within {timeout}s; state={self.state()}") from None

    async def wait_cancelled(self, count: int = 1, timeout: float = 30.0) -> None:
        await self.wait_for(lambda: self.cancelled_streams >= count, timeout)

    async def wait_active(self, count: int = 1, timeout: float = 30.0) -> None:
        await self.wait_for(lambda: self.active_streams >= count, timeout)

    def _changed(self) -> None:
        event, self._change = self._change, asyncio.Event()
        event.set()

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}"

    @property
    def running(self) -> bool:
        return self._task is not None

    async def start(self) -> None:
        """Listen (on a free port the first time, on the same port afterwards) and serve."""
        if self._task is not None:
            return
        logging.getLogger("uvicorn.error").addFilter(_HIDE_KILLED)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(2048)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(
            self,
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            interface="asgi3",
            ws="none",
            timeout_graceful_shutdown=5,
        )
        server = _Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]), name=f"ollama-double:{self._port}")
        ready = asyncio.create_task(server.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            sock.close()
            await task  # re-raises the startup error
            raise RuntimeError("ollama double exited during startup")
        self._server, self._task = server, task
        self._changed()

    async def stop(self) -> None:
        """Stop like a dying Ollama: in-flight streams are cut, new connections are refused."""
        if self._task is None or self._server is None:
            return
        for st in self._streams:
            st.killed = True
            st.wake.set()
        self._server.should_exit = True
        self._server.exit.set()
        try:
            await self._task
        finally:
            self._server = self._task = None
            self._changed()

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> OllamaDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- ASGI ----------------------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        raw = await read_body(receive)
        if raw is None:
            return
        if path.startswith("/_double/"):
            return await self._control(method, path, raw, send)
        try:
            body = msgspec.json.decode(raw) if raw else None
        except msgspec.DecodeError:
            body = raw
        self.total_requests += 1
        client = scope.get("client")
        self.requests.append(RecordedRequest(method, path, body, tuple(client) if client else None))
        try:
            handler = self._routes.get((method, path))
            if handler is None:
                await _send(send, 404, b"404 page not found", [(b"content-type", b"text/plain")])
            elif method == "POST" and not isinstance(body, dict):
                await _json(send, 400, {"error": "missing request body" if body is None else "invalid JSON body"})
            else:
                await handler(body, receive, send)
        finally:
            self._changed()

    async def _root(self, body: Any, receive: Callable, send: Callable) -> None:
        await _send(send, 200, b"Ollama is running", [(b"content-type", b"text/plain; charset=utf-8")])

    async def _version(self, body: Any, receive: Callable, send: Callable) -> None:
        await _json(send, 200, {"version": self.version})

    async def _tags(self, body: Any, receive: Callable, send: Callable) -> None:
        models = [
            {"name": m.name, "model": m.name, "modified_at": self._modified_at, "size": m.size,
             "digest": m.digest, "details": m.details()}
            for m in self.models.values()
        ]
        await _json(send, 200, {"models": models})

    async def _ps(self, body: Any, receive: Callable, send: Callable) -> None:
        expires = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
        models = [
            {"name": m.name, "model": m.name, "size": m.size, "digest": m.digest, "details": m.details(),
             "expires_at": expires, "size_vram": m.size, "context_length": m.context_length}
            for m in self.models.values()
            if m.name in self.loaded
        ]
        await _json(send, 200, {"models": models})

    async def _show(self, body: dict, receive: Callable, send: Callable) -> None:
        name = body.get("model") or body.get("name") or ""
        if (model := self._resolve(name)) is None:
            return await _not_found(send, name)
        arch = model.family.replace("-", "_")
        await _json(send, 200, {
            "license": "",
            "modelfile": f"# Modelfile generated by ollama-double\nFROM {model.name}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": model.details(),
            "model_info": {
                "general.architecture": arch,
                f"{arch}.context_length": model.context_length,
                f"{arch}.embedding_length": self.embed_dim,
            },
            "capabilities": list(model.capabilities or ()),
            "modified_at": self._modified_at,
        })

    async def _embed(self, body: dict, receive: Callable, send: Callable) -> None:
        if await self._refused(send):
            return
        name = body.get("model") or ""
        if (model := self._resolve(name)) is None:
            return await _not_found(send, name)
        inputs = body.get("input", "")
        inputs = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            return await _json(send, 400, {"error": "invalid input type"})
        dim = body.get("dimensions") or self.embed_dim
        self._used(model, body)
        reply: dict[str, Any] = {"model": name, "embeddings": [embedding(t, dim) for t in inputs]}
        if self.counters:
            reply.update(total_duration=2_000_000, load_duration=1_000_000,
                         prompt_eval_count=sum(max(1, len(t.split())) for t in inputs))
        await _json(send, 200, reply)

    async def _chat(self, body: dict, receive: Callable, send: Callable) -> None:
        if await self._refused(send):
            return
        name = body.get("model") or ""
        if not name:
            return await _json(send, 400, {"error": "model is required"})
        if (model := self._resolve(name)) is None:
            return await _not_found(send, name)
        if model.embedding_only:
            return await _json(send, 400, {"error": f'"{name}" does not support chat'})
        messages = body.get("messages") or []
        caps = model.capabilities or ()
        if body.get("tools") and "tools" not in caps:
            return await _json(send, 400, {"error": f"registry.ollama.ai/library/{name} does not support tools"})
        if any(isinstance(m, dict) and m.get("images") for m in messages) and "vision" not in caps:
            return await _json(send, 400, {"error": f"registry.ollama.ai/library/{name} does not support images"})
        if not messages:  # Ollama loads the model and answers at once
            self._used(model, body)
            reply = {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": ""},
                     "done": True, "done_reason": "load"}
            return await _json(send, 200, reply)
        options = body.get("options") or {}
        prompt = "\n".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        last = messages[-1] if isinstance(messages[-1], dict) else {}
        if body.get("tools") and last.get("role") != "tool":
            return await self._tool_reply(send, model, body, prompt)
        pieces, reason = self._plan(prompt, options, body.get("format"))
        st = _Stream()
        self._streams.add(st)
        self.active_streams += 1
        self._changed()
        watcher = None
        if self.delay_ms > 0 or self.stall_after is not None:  # only a waiting stream can see a disconnect
            watcher = asyncio.create_task(self._watch(receive, st))
        try:
            fixed = (self.delay_ms / 1000.0, self.error_after, self.stall_after)
            st.logprobs = body.get("top_logprobs") or 0 if body.get("logprobs") else None
            if body.get("stream", True):
                await self._stream(send, st, name, pieces, reason, prompt, *fixed)
            else:
                await self._single(send, st, name, pieces, reason, prompt, *fixed)
            self.completed_streams += 1
        except _Gone:
            pass
        finally:
            st.finished = True
            if watcher is not None:
                watcher.cancel()
            self._streams.discard(st)
            self.active_streams -= 1
            self._used(model, body)

    # -- chat internals ------------------------------------------------------------------------

    async def _tool_reply(self, send: Callable, model: DoubleModel, body: dict, prompt: str) -> None:
        """Ollama's answer when the model calls tools: the calls in one message, then the done line."""
        name = body["model"]
        calls = [{"function": {"name": (t.get("function") or {}).get("name", ""),
                               "arguments": tool_arguments((t.get("function") or {}).get("parameters"), prompt)}}
                 for t in body["tools"][: max(self.tool_calls_per_reply, 1)] if isinstance(t, dict)]
        created = _now()
        message = {"role": "assistant", "content": "", "tool_calls": calls}
        final = self._final(name, created, "", "stop", prompt, 1)
        self._used(model, body)
        if body.get("stream", True):
            first = {"model": name, "created_at": created, "message": message, "done": False}
            payload = _enc(first) + b"\n" + _enc(final) + b"\n"
            await _send(send, 200, payload, _NDJSON)
        else:
            await _json(send, 200, {**final, "message": message})
        self.completed_streams += 1

    def _plan(self, prompt: str, options: dict, fmt: Any) -> tuple[list[str], str]:
        if self.tokens is not None:
            pieces = list(self.tokens)
        elif self.dishonest:
            pieces = list(default_tokens(secrets.token_hex(8), self.token_count))
        else:
            pieces = list(default_tokens(prompt, self.token_count))
            if fmt:  # structured output: a JSON document, still streamed piece by piece
                pieces = ['{"text": "', *pieces, '"}']
        stops = [s for s in options.get("stop") or () if isinstance(s, str) and s]
        if stops:
            pieces = _cut_at_stop(pieces, stops)
        limit = options.get("num_predict")
        if isinstance(limit, int) and 0 <= limit < len(pieces):
            return pieces[:limit], "length"
        return pieces, "stop"

    def _final(self, name: str, created: str, content: str, reason: str, prompt: str, count: int) -> dict:
        final: dict[str, Any] = {"model": name, "created_at": created,
                                 "message": {"role": "assistant", "content": content},
                                 "done": True, "done_reason": reason}
        if self.counters:
            prompt_count = max(1, len(prompt.split()))
            load, prompt_ns, eval_ns = 1_000_000, prompt_count * 100_000, count * self.eval_ns_per_token
            final.update(total_duration=load + prompt_ns + eval_ns, load_duration=load,
                         prompt_eval_count=prompt_count * self.usage_factor, prompt_eval_duration=prompt_ns,
                         eval_count=count * self.usage_factor, eval_duration=eval_ns)
        return final

    async def _stream(self, send: Callable, st: _Stream, name: str, pieces: list[str], reason: str,
                      prompt: str, delay: float, error_after: int | None, stall_after: int | None) -> None:
        created = _now()
        head = b'{"model":%b,"created_at":%b,"message":{"role":"assistant","content":' % (_enc(name), _enc(created))
        emit = pieces if error_after is None else pieces[:error_after]
        await send({"type": "http.response.start", "status": 200, "headers": _NDJSON})
        buffered: list[bytes] = []
        pacing = delay > 0 or stall_after is not None
        stall_at = None if stall_after is None else min(stall_after, len(emit))
        for i in range(len(emit) + 1):
            if i == stall_at:
                await self._flush(send, buffered)
                await self._hold(st, None)
            if i == len(emit):
                break
            if delay > 0:
                await self._hold(st, delay)
            if st.logprobs is None:
                buffered.append(head + _enc(emit[i]) + _CHUNK_TAIL)
            else:  # Ollama >= 0.12.11: each chunk carries its tokens' logprobs
                buffered.append(head + _enc(emit[i]) + b'},"logprobs":' + _enc(piece_logprobs(i, emit[i], st.logprobs))
                                + b',"done":false}\n')
            if pacing:
                await self._flush(send, buffered)
        if error_after is not None:
            last = {"error": self.error_message}
        else:
            last = self._final(name, created, "", reason, prompt, len(emit))
        st.finished = True
        buffered.append(_enc(last) + b"\n")
        await send({"type": "http.response.body", "body": b"".join(buffered), "more_body": False})

    async def _single(self, send: Callable, st: _Stream, name: str, pieces: list[str], reason: str,
                      prompt: str, delay: float, error_after: int | None, stall_after: int | None) -> None:
        if error_after is not None:
            if delay > 0:
                await self._hold(st, delay * min(error_after, len(pieces)))
            st.finished = True
            return await _json(send, 500, {"error": self.error_message})
        await send({"type": "http.response.start", "status": 200, "headers": _JSON})
        if stall_after is not None:
            await self._hold(st, None)
        if delay > 0:
            await self._hold(st, delay * len(pieces))
        final = self._final(name, _now(), "".join(pieces), reason, prompt, len(pieces))
        st.finished = True
        await send({"type": "http.response.body", "body": _enc(final), "more_body": False})

    async def _hold(self, st: _Stream, seconds: float | None) -> None:
        """Wait `seconds` (None: until released); leave early if the client goes or the double stops."""
        if not (st.disconnected or st.killed):
            if seconds is None and not st.released:
                await st.wake.wait()
            elif seconds is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        await st.wake.wait()
        st.wake.clear()
        if st.killed:
            raise _Killed("ollama double stopped")
        if st.disconnected:
            raise _Gone

    @staticmethod
    async def _flush(send: Callable, buffered: list[bytes]) -> None:
        if buffered:
            body = b"".join(buffered)
            buffered.clear()
            await send({"type": "http.response.body", "body": body, "more_body": True})

    async def _watch(self, receive: Callable, st: _Stream) -> None:
        """Notice a client that disconnects before its answer is complete."""
        while (await receive())["type"] != "http.disconnect":
            pass
        if not st.finished:
            st.disconnected = True
            st.wake.set()
            self.cancelled_streams += 1
            self.stream_cancelled.set()
            self._changed()

    async def _refused(self, send: Callable) -> bool:
        status = self.status
        if status is None and self.max_active is not None and self.active_streams >= self.max_active:
            status = 503
        if status is None:
            return False
        message = self.status_message or (BUSY_MESSAGE if status == 503 else f"ollama double status {status}")
        await _json(send, status, {"error": message})
        return True

    def _resolve(self, name: str) -> DoubleModel | None:
        model = self.models.get(name)
        if model is None and name.endswith(":latest"):
            model = self.models.get(name.removesuffix(":latest"))
        elif model is None and ":" not in name:
            model = self.models.get(f"{name}:latest")
        return model

    def _used(self, model: DoubleModel, body: dict) -> None:
        if body.get("keep_alive") in (0, "0", "0s"):
            self.loaded.discard(model.name)
        elif self.load_on_use:
            self.loaded.add(model.name)

    # -- control endpoints (for a double running as a process) ---------------------------------

    async def _control(self, method: str, path: str, raw: bytes, send: Callable) -> None:
        action = (method, path.removeprefix("/_double/"))
        try:
            if action == ("POST", "config"):
                self.configure(**(msgspec.json.decode(raw) if raw else {}))
            elif action == ("POST", "release"):
                self.release()
            elif action == ("POST", "reset"):
                self.reset()
            elif action == ("GET", "requests"):
                records = [{"method": r.method, "path": r.path, "body": r.body} for r in self.requests]
                return await _json(send, 200, {"requests": records})
            elif action != ("GET", "state"):
                return await _json(send, 404, {"error": f"no control endpoint {method} {path}"})
        except (ValueError, TypeError, msgspec.DecodeError) as exc:
            return await _json(send, 400, {"error": str(exc)})
        await _json(send, 200, self.state())


def piece_logprobs(i: int, piece: str, top: int) -> list[dict[str, Any]]:
    """The double's logprobs for the i-th piece: -0.25 * (i + 1), and `top` alternatives alt0, alt1 ..."""
    alternatives = [{"token": f"alt{k}", "logprob": -1.0 - k} for k in range(top)]
    return [{"token": piece, "logprob": -0.25 * (i + 1), "top_logprobs": alternatives}]


def tool_arguments(schema: Any, prompt: str) -> dict[str, Any]:
    """The arguments the double's model passes to a tool: each schema property filled deterministically."""
    props = (schema or {}).get("properties") or {} if isinstance(schema, dict) else {}
    words = [w.strip() for w in default_tokens(prompt, max(len(props), 1))]
    out: dict[str, Any] = {}
    for i, (key, spec) in enumerate(props.items()):
        kind = spec.get("type") if isinstance(spec, dict) else None
        if isinstance(spec, dict) and spec.get("enum"):
            out[key] = spec["enum"][0]
        elif kind in ("integer", "number"):
            out[key] = 7 + i
        elif kind == "boolean":
            out[key] = True
        elif kind == "array":
            out[key] = [words[i]]
        elif kind == "object":
            out[key] = {}
        else:
            out[key] = words[i]
    return out


def _cut_at_stop(pieces: list[str], stops: list[str]) -> list[str]:
    text = "".join(pieces)
    cut = min((text.find(s) for s in stops if s in text), default=-1)
    if cut < 0:
        return pieces
    kept, used = [], 0
    for piece in pieces:
        if used + len(piece) > cut:
            if cut > used:
                kept.append(piece[: cut - used])
            break
        kept.append(piece)
        used += len(piece)
    return kept


async def _send(send: Callable, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _json(send: Callable, status: int, obj: Any) -> None:
    await _send(send, status, _enc(obj), _JSON)


async def _not_found(send: Callable, name: str) -> None:
    await _json(send, 404, {"error": f'model "{name}" not found, try pulling it first'})


# -- command line ------------------------------------------------------------------------------


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.doubles.ollama_double", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the ready line)")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated model names")
    p.add_argument("--loaded", default=None, help="comma-separated loaded models (default: all)")
    p.add_argument("--tokens", default=None, help='fixed answer, split on spaces ("Hello big world")')
    p.add_argument("--token-count", type=int, default=16, help="length of the default generated answer")
    p.add_argument("--delay-ms", type=float, default=0.0, help="wait before each token (0 = no latency)")
    p.add_argument("--error-after", type=int, default=None, help="emit N tokens, then a mid-stream error")
    p.add_argument("--error-message", default=DEFAULT_ERROR)
    p.add_argument("--status", type=int, default=None, help="answer chat/embed with this status (503 = busy)")
    p.add_argument("--stall-after", type=int, default=None, help="emit N tokens, then wait for the client")
    p.add_argument("--max-active", type=int, default=None, help="503 when this many chats are in flight")
    p.add_argument("--embed-dim", type=int, default=16)
    p.add_argument("--eval-ns-per-token", type=int, default=10_000_000)
    p.add_argument("--no-counters", action="store_true", help="omit eval_count/eval_duration and friends")
    p.add_argument("--version", default="0.13.0", help="what /api/version reports")
    p.add_argument("--dishonest", action="store_true", help="answer random words whatever the prompt")
    p.add_argument("--usage-factor", type=int, default=1, help="multiply the token counts it reports")
    p.add_argument("--record-limit", type=int, default=10_000, help="requests kept for /_double/requests")
    return p.parse_args(argv)


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


async def _serve(args: argparse.Namespace) -> None:
    words = args.tokens.split() if args.tokens is not None else None
    double = OllamaDouble(
        _split(args.models),
        loaded=None if args.loaded is None else _split(args.loaded),
        tokens=None if words is None else [w if i == 0 else " " + w for i, w in enumerate(words)],
        token_count=args.token_count,
        delay_ms=args.delay_ms,
        error_after=args.error_after,
        error_message=args.error_message,
        status=args.status,
        stall_after=args.stall_after,
        max_active=args.max_active,
        embed_dim=args.embed_dim,
        eval_ns_per_token=args.eval_ns_per_token,
        counters=not args.no_counters,
        version=args.version,
        dishonest=args.dishonest,
        usage_factor=args.usage_factor,
        host=args.host,
        port=args.port,
        record_limit=args.record_limit,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await double.start()
    print(f"ollama-double listening on {double.url}", flush=True)
    await stop.wait()
    await double.stop()


def main(argv: Sequence[str] | None = None) -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    args = _parse_args(argv)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args))


if __name__ == "__main__":
    main()
