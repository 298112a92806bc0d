"""Function calling on /v1: validate `tools`, `tool_choice`, `parallel_tool_calls` (and the legacy `functions` /
`function_call`) into the job's generation parameters, and render the calls a model made in OpenAI's shape."""

from __future__ import annotations

import re
from typing import Any

from control_plane.errors import BadRequest

MAX_TOOLS = 128
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

# What these rules say, as JSON Schema for the OpenAPI document (bodies that take tools use them). Two rules have
# no JSON Schema: tool names are unique, and a named tool_choice names one of the tools.
_FUNCTION = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": "^" + _NAME.pattern + "$"},
    "description": {"type": ["string", "null"]}, "parameters": {"type": ["object", "null"]}}}
#: The Responses API's flat function tools ({"type": "function", "name", ...}).
FLAT_TOOLS_SCHEMA = {"type": ["array", "null"], "maxItems": MAX_TOOLS, "items": {
    **_FUNCTION, "required": ["type", "name"], "properties": {**_FUNCTION["properties"], "type": {"const": "function"}}}}
FUNCTIONS_SCHEMA = {"type": ["array", "null"], "maxItems": MAX_TOOLS, "items": _FUNCTION}
TOOLS_SCHEMA = {"type": ["array", "null"], "maxItems": MAX_TOOLS, "items": {
    "type": "object", "required": ["function"],
    "properties": {"type": {"const": "function"}, "function": _FUNCTION}}}
TOOL_CHOICE_SCHEMA = {"anyOf": [
    {"enum": ["auto", "none", "required"]},
    {"type": "object", "required": ["function"], "properties": {
        "type": {"const": "function"},
        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}},
    {"type": "null"}]}
#: Object-level: a tool_choice needs at least one tool.
CHOICE_NEEDS_TOOLS = {"anyOf": [{"properties": {"tool_choice": {"type": "null"}}},  # absent or null
                                {"required": ["tools"], "properties": {"tools": {"type": "array", "minItems": 1}}}]}
#: An assistant message's calls.
TOOL_CALLS_SCHEMA = {"type": ["array", "null"], "maxItems": MAX_TOOLS, "items": {
    "type": "object", "required": ["id", "function"], "properties": {
        "id": {"type": "string"},
        "function": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}}}}}}
#: Object-level, on a message: only assistant messages carry tool_calls.
CALLS_ONLY_FROM_ASSISTANT = {"anyOf": [{"properties": {"role": {"const": "assistant"}}},
                                       {"properties": {"tool_calls": {"anyOf": [{"type": "null"},
                                                                                {"type": "array", "maxItems": 0}]}}}]}


def _function(spec: Any, where: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise BadRequest(f"{where} must be an object", param="tools")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise BadRequest(f"{where}.name must be 1-64 letters, digits, '_', '-', '.' or ':'", param="tools")
    out: dict[str, Any] = {"name": name}
    if spec.get("description") is not None:
        if not isinstance(spec["description"], str):
            raise BadRequest(f"{where}.description must be a string", param="tools")
        out["description"] = spec["description"]
    params = spec.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadRequest(f"{where}.parameters must be a JSON Schema object", param="tools")
    out["parameters"] = params if params is not None else {"type": "object", "properties": {}}
    if spec.get("strict") is not None:
        out["strict"] = bool(spec["strict"])
    return out


def normalize_tools(tools: list[Any] | None, functions: list[Any] | None) -> list[dict[str, Any]]:
    """OpenAI's function tools, checked; legacy `functions` become tools. Other tool types are a 400."""
    if tools and functions:
        raise BadRequest("send tools or the legacy functions, not both", param="functions")
    out = []
    if functions:
        for i, spec in enumerate(functions):
            out.append({"type": "function", "function": _function(spec, f"functions[{i}]")})
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise BadRequest(f"tools[{i}] is of type {kind!r}; only function tools are supported", param="tools")
        out.append({"type": "function", "function": _function(tool.get("function"), f"tools[{i}].function")})
    if len(out) > MAX_TOOLS:
        raise BadRequest(f"at most {MAX_TOOLS} tools", param="tools")
    names = [t["function"]["name"] for t in out]
    if len(set(names)) != len(names):
        raise BadRequest("tool names must be unique", param="tools")
    return out


def normalize_choice(choice: Any, function_call: Any, tools: list[dict[str, Any]]) -> str | dict | None:
    """`tool_choice` (or the legacy `function_call`) checked against the tools; None = not given."""
    param = "tool_choice"
    if choice is None and function_call is not None:
        param = "function_call"
        choice = function_call if isinstance(function_call, str) else {"type": "function", "function": function_call}
    if choice is None:
        return None
    if not tools:
        raise BadRequest(f"{param} needs tools", param=param)
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type", "function") == "function":
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if name in {t["function"]["name"] for t in tools}:
            return {"type": "function", "function": {"name": name}}
        raise BadRequest(f"{param} names function {name!r}, which is not among the tools", param=param)
    raise BadRequest(f'{param} must be "auto", "none", "required" or {{"type": "function", "function": '
                     '{"name": ...}}', param=param)


def message_calls(calls: Any, index: int) -> list[dict[str, str]]:
    """An assistant message's `tool_calls` as the job payload keeps them: id, name, arguments (JSON text)."""
    if not isinstance(calls, list):
        raise BadRequest(f"messages[{index}].tool_calls must be a list", param=f"messages[{index}].tool_calls")
    out = []
    for j, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) \
                or not isinstance(call.get("id"), str):
            raise BadRequest(f"messages[{index}].tool_calls[{j}] needs an id and function.name",
                             param=f"messages[{index}].tool_calls")
        arguments = function.get("arguments", "{}")
        out.append({"id": call["id"], "name": function["name"],
                    "arguments": arguments if isinstance(arguments, str) else "{}"})
    return out


def openai_calls(stored: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """A result's tool calls in OpenAI's message shape (None when there are none)."""
    return [{"id": c["id"], "type": "function", "function": dict(c["function"])} for c in stored] if stored else None
