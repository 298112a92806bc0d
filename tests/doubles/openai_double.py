"""A small OpenAI-compatible HTTP server for tests: /v1/models and streamed /v1/chat/completions, with faults.

In-process::

    async with OpenAIDouble(models=["qwen2.5-7b-instruct"]) as double:
        engine = OpenAICompatEngine(double.url)   # double.url ends with /v1
        double.status = 503                       # settings are plain attributes, changeable at runtime

As a process::

    python -m tests.doubles.openai_double --port 0 --models a,b
    # prints "openai-double listening on http://127.0.0.1:<port>/v1" once ready

Generated text is `len(tokens)` pieces (default: "tok0 tok1 ..."); `max_tokens` caps it (finish_reason
"length"); `usage` is sent only when the request asks for it with stream_options.include_usage and
`usage` is True. Faults: `status` answers every chat with that HTTP status; `error_after` streams N
pieces then an `{"error": ...}` event; `stall_after` streams N pieces then waits for the client to leave.

Tools as OpenAI streams them: a chat with `tools` (tool_choice not "none") whose last message is not a
tool result calls the named tool, or the first `tool_calls_per_reply` tools (one when
parallel_tool_calls is false): per call a delta with index, id, type and name, then the arguments JSON
in three fragments; finish_reason "tool_calls". `logprobs: true` adds choice.logprobs per piece (logprob
-0.25 * (i + 1), `top_logprobs` alternatives). `capabilities` (model -> list) adds that field to
/v1/models entries, as llama.cpp's server does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import uvicorn

from tests.doubles.asgi import read_body
from tests.doubles.ollama_double import tool_arguments

_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


class OpenAIDouble:
    """An ASGI app on uvicorn pretending to be an OpenAI-compatible inference server."""

    def __init__(self, models: Iterable[str] = ("double-chat",), *, tokens: Sequence[str] | None = None,
                 token_count: int = 12, usage: bool = True, delay_ms: float = 0.0, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.models = list(models)
        self.tokens = tokens
        self.token_count = token_count
        #: Honour stream_options.include_usage (False: a server that never reports usage).
        self.usage = usage
        self.delay_ms = delay_ms
        self.status: int | None = None
        self.error_after: int | None = None
        self.stall_after: int | None = None
        self.version: str | None = "0.9.9-double"
        self.tool_calls_per_reply = 1
        self.capabilities: dict[str, list[str]] = {}
        self.host = host
        self.requests: list[dict[str, Any]] = []
        self.active_streams = 0
        self.cancelled_streams = 0
        self._port = port
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self._killed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._port}/v1"

    def pieces(self) -> list[str]:
        if self.tokens is not None:
            return list(self.tokens)
        return [f"tok{i}" if i == 0 else f" tok{i}" for i in range(self.token_count)]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._killed = asyncio.Event()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._port = sock.getsockname()[1]
        config = uvicorn.Config(self._app, log_level="warning", lifespan="off", loop="none", interface="asgi3")
        self._server = uvicorn.Server(config)
        self._server.capture_signals = contextlib.nullcontext  # the test process owns signals
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.005)

    async def stop(self) -> None:
        """Stop listening and drop every open stream (connection refused from now on)."""
        if self._task is None:
            return
        self._killed.set()
        self._server.should_exit = True
        self._server.force_exit = True
        await asyncio.gather(self._task, return_exceptions=True)
        self._task = self._server = None

    async def __aenter__(self) -> OpenAIDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- the app ---------------------------------------------------------------------------------

    async def _app(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        raw = await read_body(receive)
        if raw is None:
            return
        body = json.loads(raw) if raw else None
        self.requests.append({"method": method, "path": path, "body": body})
        if (method, path) == ("GET", "/v1/models"):
            data = [{"id": m, "object": "model", "owned_by": "double", "max_model_len": 8192,
                     **({"capabilities": self.capabilities[m]} if m in self.capabilities else {})}
                    for m in self.models]
            return await _json(send, 200, {"object": "list", "data": data})
        if (method, path) == ("GET", "/version") and self.version:
            return await _json(send, 200, {"version": self.version})
        if (method, path) == ("POST", "/v1/chat/completions"):
            return await self._chat(body or {}, receive, send)
        await _json(send, 404, {"error": {"message": f"no route {method} {path}", "type": "not_found"}})

    async def _chat(self, body: dict, receive: Callable, send: Callable) -> None:
        if self.status is not None:
            return await _json(send, self.status, {"error": {"message": f"double status {self.status}",
                                                             "type": "server_error"}})
        model = body.get("model")
        if model not in self.models:
            return await _json(send, 404, {"error": {"message": f"The model `{model}` does not exist.",
                                                     "type": "NotFoundError", "code": 404}})
        pieces = self.pieces()
        finish = "stop"
        limit = body.get("max_tokens")
        if isinstance(limit, int) and limit < len(pieces):
            pieces, finish = pieces[:limit], "length"
        gone = asyncio.Event()
        done = False

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not done:
                self.cancelled_streams += 1
            gone.set()

        watcher = asyncio.create_task(watch())
        self.active_streams += 1
        try:
            await send({"type": "http.response.start", "status": 200, "headers": _SSE})
            base = {"id": "chatcmpl-double", "object": "chat.completion.chunk", "created": int(time.time()),
                    "model": model}
            await _event(send, {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
            calls = self._calls(body)
            if calls:
                pieces, finish = [], "tool_calls"
                for index, (name, arguments) in enumerate(calls):
                    head = {"index": index, "id": f"call_double{index}", "type": "function",
                            "function": {"name": name, "arguments": ""}}
                    await _event(send, {**base, "choices": [{"index": 0, "delta": {"tool_calls": [head]}}]})
                    third = max(len(arguments) // 3, 1)
                    for part in (arguments[:third], arguments[third:2 * third], arguments[2 * third:]):
                        delta = {"tool_calls": [{"index": index, "function": {"arguments": part}}]}
                        await _event(send, {**base, "choices": [{"index": 0, "delta": delta}]})
            for i, piece in enumerate(pieces):
                if i == self.error_after:
                    await _event(send, {"error": {"message": "double: generation crashed", "type": "server_error"}})
                    done = True
                    return await send({"type": "http.response.body", "body": b"", "more_body": False})
                if i == self.stall_after or self.delay_ms:
                    waiters = [asyncio.ensure_future(gone.wait()), asyncio.ensure_future(self._killed.wait())]
                    timeout = None if i == self.stall_after else self.delay_ms / 1000
                    _, pending = await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                    for w in pending:
                        w.cancel()
                    if gone.is_set() or self._killed.is_set():
                        return
                choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}}
                if body.get("logprobs"):
                    top = [{"token": f"alt{k}", "logprob": -1.0 - k} for k in range(body.get("top_logprobs") or 0)]
                    choice["logprobs"] = {"content": [{"token": piece, "logprob": -0.25 * (i + 1),
                                                       "bytes": list(piece.encode()), "top_logprobs": top}]}
                await _event(send, {**base, "choices": [choice]})
            await _event(send, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
            if self.usage and (body.get("stream_options") or {}).get("include_usage"):
                prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
                await _event(send, {**base, "choices": [], "usage": {
                    "prompt_tokens": prompt, "completion_tokens": len(pieces), "total_tokens": prompt + len(pieces)}})
            done = True
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        finally:
            self.active_streams -= 1
            watcher.cancel()

    def _calls(self, body: dict) -> list[tuple[str, str]]:
        """The (name, arguments JSON) of the calls this request gets; [] when it gets text."""
        tools = [t.get("function") or {} for t in body.get("tools") or () if isinstance(t, dict)]
        messages = body.get("messages") or [{}]
        choice = body.get("tool_choice", "auto")
        if not tools or choice == "none" or messages[-1].get("role") == "tool":
            return []
        if isinstance(choice, dict):
            tools = [t for t in tools if t.get("name") == (choice.get("function") or {}).get("name")]
        count = 1 if body.get("parallel_tool_calls") is False else max(self.tool_calls_per_reply, 1)
        prompt = "\n".join(str(m.get("content") or "") for m in messages)
        return [(t.get("name", ""), json.dumps(tool_arguments(t.get("parameters"), prompt))) for t in tools[:count]]


async def _event(send: Callable, obj: dict) -> None:
    await send({"type": "http.response.body", "body": b"data: " + json.dumps(obj).encode() + b"\n\n",
                "more_body": True})


async def _json(send: Callable, status: int, obj: Any) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [*_JSON, (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _serve(args: argparse.Namespace) -> None:
    double = OpenAIDouble([m for m in args.models.split(",") if m], token_count=args.token_count,
                          delay_ms=args.delay_ms, host=args.host, port=args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await double.start()
    print(f"openai-double listening on {double.url}", flush=True)
    await stop.wait()
    await double.stop()


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tests.doubles.openai_double", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--models", default="double-chat")
    p.add_argument("--token-count", type=int, default=12)
    p.add_argument("--delay-ms", type=float, default=0.0)
    asyncio.run(_serve(p.parse_args(argv)))


if __name__ == "__main__":
    main()
