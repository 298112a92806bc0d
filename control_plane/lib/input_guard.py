"""Refuses input no handler can use before it reaches one: invalid UTF-8, JSON nested too deep, NUL characters
(PostgreSQL cannot store them) in a body, query or path parameter, and oversized request headers.

Each is a 400 (431 for headers) whose message names the field, instead of an exception deep in a decoder, a
validator or the database. The checks cost nothing on ordinary requests: each starts with a byte search.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

from litestar import Request

from control_plane.errors import BadRequest, InfernetError

#: Deepest nesting of arrays and objects a JSON body may have (JSON Schemas and routing options need a few).
MAX_JSON_DEPTH = 64
#: Total size of the request line's headers (names and values) the API reads; more is 431.
MAX_HEADER_BYTES = 32 * 1024


class HeadersTooLarge(InfernetError):
    """The request's headers together exceed MAX_HEADER_BYTES."""

    code = "headers_too_large"
    status = 431


def _depth_and_path(value: Any) -> tuple[int, str]:
    """The deepest nesting in a decoded JSON value and where it is (iterative: no recursion on hostile input)."""
    deepest, where = 0, ""
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    while stack:
        node, depth, path = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        if depth > deepest:
            deepest, where = depth, path
        if depth > MAX_JSON_DEPTH:
            break
        if isinstance(node, dict):
            stack.extend((v, depth + 1, f"{path}.{k}" if path else str(k)) for k, v in node.items())
        else:
            stack.extend((v, depth + 1, f"{path}[{i}]") for i, v in enumerate(node))
    return deepest, where


def _nul_path(value: Any) -> str | None:
    """Where the first string (key or value) holding a NUL character is, or None."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return path or "body"
        elif isinstance(node, dict):
            for k, v in node.items():
                here = f"{path}.{k}" if path else str(k)
                if "\x00" in k:
                    return here
                stack.append((v, here))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]") for i, v in enumerate(node))
    return None


def _top(path: str) -> str:
    return path.split(".", 1)[0].split("[", 1)[0] or "body"


class GuardedRequest(Request):
    """A Request whose JSON body is refused (400) when it is not UTF-8, nests too deep or holds a NUL."""

    async def json(self) -> Any:
        body = await self.body()
        try:
            value = await super().json()
        except UnicodeDecodeError as exc:
            raise BadRequest(f"request body is not valid UTF-8 (byte {exc.start}); send JSON encoded as UTF-8",
                             param="body") from None
        except RecursionError:
            raise BadRequest(f"request body nests arrays or objects deeper than {MAX_JSON_DEPTH} levels",
                             param="body") from None
        if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
            depth, path = _depth_and_path(value)
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"{_top(path)} nests arrays or objects deeper than {MAX_JSON_DEPTH} levels "
                                 f"(at {path or 'the top'})", param=_top(path))
        if b"\\u0000" in body:
            path = _nul_path(value)
            if path is not None:
                raise BadRequest(f"{path} contains a NUL character (\\u0000), which no field accepts",
                                 param=_top(path))
        return value


async def _options(scope, send) -> None:
    """204 with the path's real methods in Allow (Litestar's own OPTIONS answer lists only one handler's)."""
    methods: set[str] = set()
    handler_map = scope["litestar_app"].route_handler_method_map
    for path in getattr(scope.get("route_handler"), "paths", ()):
        methods |= set(handler_map.get(path, ()))
    allow = ", ".join(sorted(methods | {"OPTIONS"})).encode()
    await send({"type": "http.response.start", "status": 204, "headers": [(b"allow", allow)]})
    await send({"type": "http.response.body", "body": b""})


def input_guard_middleware(app):
    """431 for oversized headers; 400 naming the parameter for a NUL in the query string or a path parameter;
    OPTIONS answered with every method of the path."""

    async def middleware(scope, receive, send):
        if scope["type"] == "http":
            if sum(len(n) + len(v) for n, v in scope["headers"]) > MAX_HEADER_BYTES:
                raise HeadersTooLarge(f"request headers exceed {MAX_HEADER_BYTES // 1024} KiB in total")
            query = scope.get("query_string") or b""
            if b"%00" in query:
                for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                    if "\x00" in name or "\x00" in value:
                        raise BadRequest(f"query parameter {name.replace(chr(0), '')!s} contains a NUL character "
                                         "(%00), which no parameter accepts", param=name.replace("\x00", ""))
            for name, value in (scope.get("path_params") or {}).items():
                if isinstance(value, str) and "\x00" in value:
                    raise BadRequest(f"path parameter {name} contains a NUL character (%00)", param=name)
            if scope["method"] == "OPTIONS":
                await _options(scope, send)
                return
        await app(scope, receive, send)

    return middleware
