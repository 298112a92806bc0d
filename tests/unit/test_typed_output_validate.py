"""Typed output validation (jsonschema) without a stack."""

from __future__ import annotations

import pytest

from control_plane.errors import BadRequest
from control_plane.jobs.typed_output import check_schema, validate

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


def test_valid_invalid_and_fenced():
    assert validate(SCHEMA, '{"n": 3}') == ({"n": 3}, None)
    assert validate(SCHEMA, '```json\n{"n": 3}\n```') == ({"n": 3}, None)
    value, problem = validate(SCHEMA, '{"n": "3"}')
    assert value is None and "at n" in problem and "integer" in problem
    value, problem = validate(SCHEMA, "{}")
    assert value is None and "(root)" in problem and "'n' is a required property" in problem
    value, problem = validate(SCHEMA, "n = 3")
    assert value is None and "not JSON" in problem
    assert validate({"type": "array"}, "[1, 2]") == ([1, 2], None)


def test_schema_checks():
    assert check_schema(SCHEMA) is SCHEMA
    for bad in ({"type": 7}, {"minimum": "x"}, [1], "object", {"$schema": "https://json-schema.org/draft/2020-12/schema",
                                                                "properties": {"a": {"type": "nope"}}}):
        with pytest.raises(BadRequest):
            check_schema(bad)
    with pytest.raises(BadRequest):
        check_schema({"description": "x" * 70_000})
