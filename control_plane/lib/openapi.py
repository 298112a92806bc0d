"""Completes the generated OpenAPI document so it says exactly what the app does.

Litestar documents a generic 400 body and nothing else. Here every operation gets the error bodies this app
really sends (the native envelope or RFC 9457 problem+json under /api/v1, OpenAI's under /v1, Ollama's under
/api), the statuses any operation can answer (400, 401/403 with a key, 404 with a path parameter, 413 with a
body, 429, 431, 500, 503) plus a `default` for the operation-specific ones, no security requirement on the
operations that take no key, and request bodies described by msgspec's own schemas (the constraints decoding
enforces, `additionalProperties: false` where unknown fields are refused).
"""

from __future__ import annotations

from typing import Any

import msgspec
import msgspec.inspect
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin

NATIVE = {"type": "object", "required": ["error", "error_message"], "properties": {
    "error": {"type": "string", "description": "the error code, e.g. bad_request"},
    "error_message": {"type": "string", "description": "what went wrong, naming the field"}}}
PROBLEM = {"type": "object", "required": ["type", "title", "status", "detail", "code"], "properties": {
    "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
    "detail": {"type": "string"}, "code": {"type": "string"}, "param": {"type": "string"}},
    "description": "RFC 9457 problem details (with X-API-Version: 2)"}
OPENAI = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["string", "null"]},
        "param": {"type": ["string", "null"]}}}}}
OLLAMA = {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}}

_REASONS = {
    400: "a missing, malformed or out-of-range field (the message names it)",
    401: "no key, a malformed Authorization header, or an unknown key",
    403: "a key that may not be used (revoked, expired, deactivated account) or lacks the scope",
    404: "no such resource for this caller",
    413: "a request body over 10 MB",
    429: "rate limited; see Retry-After",
    431: "request headers over 32 KiB",
    500: "an error on our side; quote the x-request-id",
    503: "PostgreSQL or NATS unreachable right now, or no capacity for the model",
}


def _error_content(path: str) -> dict[str, Any]:
    if path.startswith("/v1/"):
        return {"application/json": {"schema": OPENAI}}
    if path.startswith("/api/") and not path.startswith("/api/v1/"):
        return {"application/json": {"schema": OLLAMA}}
    return {"application/json": {"schema": NATIVE}, "application/problem+json": {"schema": PROBLEM}}


def _handlers(app: Litestar) -> dict[tuple[str, str], Any]:
    """(path, method) -> route handler, for every route in the document."""
    out = {}
    for route in app.routes:
        for method, handler in getattr(route, "route_handler_map", {}).items():
            out[(route.path_format, method.upper())] = handler[0] if isinstance(handler, tuple) else handler
    return out


def _body_types(app: Litestar) -> list[Any]:
    """The annotations of every handler's request body (`data`)."""
    types = []
    for route in app.routes:
        for handler in getattr(route, "route_handlers", ()):
            field = handler.parsed_fn_signature.parameters.get("data")
            if field is not None:
                types.append(field.annotation)
    return types


def _body_components(app: Litestar) -> dict[str, Any]:
    """msgspec's own JSON Schemas of the request bodies: every constraint (item lengths, patterns, unknown
    fields refused) exactly as decoding enforces it, which Litestar's generator partly drops; then what each body
    Struct says of the rules its handler checks itself (its `__openapi__`)."""
    types = _body_types(app)
    try:
        _, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    except Exception:  # an annotation msgspec cannot describe: keep Litestar's schemas
        return {}
    for cls in _structs(types):
        extra = getattr(cls, "__openapi__", None)
        schema = components.get(cls.__name__)
        if extra and schema is not None:
            for field, fragment in extra.items():
                if field == "":  # a rule about the whole object (one field depending on another)
                    schema.setdefault("allOf", []).append(fragment)
                else:
                    schema["properties"][field] = {**fragment, **({"default": schema["properties"][field]["default"]}
                                                                  if "default" in schema["properties"][field] else {})}
    return components


def _structs(types: list[Any]) -> list[type]:
    """Every Struct class the types use, nested ones included."""
    seen: dict[type, None] = {}
    stack = list(msgspec.inspect.multi_type_info(types))
    while stack:
        info = stack.pop()
        if isinstance(info, msgspec.inspect.StructType):
            if info.cls in seen:
                continue
            seen[info.cls] = None
            stack.extend(f.type for f in info.fields)
        elif isinstance(info, msgspec.inspect.UnionType):
            stack.extend(info.types)
        elif isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.SetType, msgspec.inspect.FrozenSetType,
                               msgspec.inspect.VarTupleType)):
            stack.append(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            stack.append(info.value_type)
        elif isinstance(info, msgspec.inspect.Metadata):
            stack.append(info.type)
    return list(seen)


def _no_null_string(parameter: dict[str, Any]) -> None:
    """An optional string parameter is absent or a string: Litestar documents `str | None` as string-or-null,
    and a client following that sends the text `null` (which the parameter's pattern or format then refuses)."""
    schema = parameter.get("schema") or {}
    if schema.get("oneOf") == [{"type": "string"}, {"type": "null"}]:
        parameter["schema"] = {"type": "string", **{k: v for k, v in schema.items() if k != "oneOf"}}


def complete(app: Litestar, doc: dict[str, Any]) -> dict[str, Any]:
    """Complete the document (a dict, as served) in place."""
    handlers = _handlers(app)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(_body_components(app))
    for path, item in (doc.get("paths") or {}).items():
        for method in ("get", "put", "post", "delete", "patch"):
            operation = item.get(method)
            if operation is None:
                continue
            handler = handlers.get((path, method.upper()))
            params = handler.parsed_fn_signature.parameters if handler is not None else {}
            for parameter in operation.get("parameters") or ():
                _no_null_string(parameter)
            keyed = "principal" in params
            if not keyed:
                operation["security"] = []
            statuses = [400, 431, 500, 503]
            if keyed:
                statuses += [401, 403, 429]
            if "{" in path:
                statuses.append(404)
            if "data" in params:
                statuses.append(413)
            responses = operation.setdefault("responses", {})
            content = _error_content(path)
            for status in sorted(statuses):
                responses[str(status)] = {"description": _REASONS[status], "content": content}
            responses["default"] = {"description": "another error of this operation (see docs/api.md), in the "
                                                   "same envelope", "content": content}
    return doc


def install(app: Litestar) -> None:
    """Complete the app's OpenAPI document (built once here, then served as it is)."""
    complete(app, app.plugins.get(OpenAPIPlugin).provide_openapi_schema())
