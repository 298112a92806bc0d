"""Typed output: a job's `response_schema` goes to the engine as its structured-output format; the result is
validated against it (jsonschema) and returned as `typed`, or the job fails with `schema_validation_failed`.

Jobs with a schema are never completed by the recorder's plain `complete_job` (it skips them); `complete`
below validates first and then writes `completed` (with `typed`) or `failed` in one statement, so the job
goes processing -> completed|failed exactly once and credit settlement sees the final status.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from typing import Any

import jsonschema
import msgspec
import structlog
from jsonschema.exceptions import SchemaError

import protocol
from control_plane.errors import BadRequest
from control_plane.store import Database
from control_plane.store.database import jsonb

log = structlog.get_logger("control_plane.typed_output")

#: Largest schema accepted (encoded JSON bytes); it travels in every assignment of the job.
MAX_SCHEMA_BYTES = 64 * 1024
SCHEMA_FAILED = "schema_validation_failed"
_FENCE = re.compile(r"^\s*```(?:json)?\s*\n?(.*?)\n?```\s*$", re.DOTALL)


def check_schema(schema: Any) -> dict[str, Any]:
    """A request's `response_schema`, checked against its JSON Schema meta-schema (400 when it is not one)."""
    if not isinstance(schema, dict):
        raise BadRequest("response_schema must be a JSON Schema object", param="response_schema")
    if len(msgspec.json.encode(schema)) > MAX_SCHEMA_BYTES:
        raise BadRequest(f"response_schema is larger than {MAX_SCHEMA_BYTES // 1024} KiB", param="response_schema")
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except SchemaError as exc:
        raise BadRequest(f"response_schema is not a valid JSON Schema: {exc.message}", param="response_schema") from None
    return schema


@lru_cache(maxsize=256)
def _validator(encoded: str):
    schema = json.loads(encoded)
    return jsonschema.validators.validator_for(schema)(schema)


def validate(schema: dict[str, Any], content: str) -> tuple[Any, str | None]:
    """(the parsed value, None) when `content` is JSON matching `schema`, else (None, what is wrong)."""
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"the model's output is not JSON ({exc.msg} at position {exc.pos})"
    errors = sorted(_validator(json.dumps(schema, sort_keys=True)).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        first = errors[0]
        where = "/".join(str(p) for p in first.absolute_path) or "(root)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return None, f"the model's output does not match response_schema at {where}: {first.message}{more}"
    return value, None


async def complete(db: Database, outcome: protocol.JobResult, result: dict[str, Any], *,
                   completion_bounds: dict[str, int] | None = None) -> dict | None:
    """Record a result of a job that has a response_schema: completed with `typed`, or failed; None when the job
    has no schema or the outcome is stale (the recorder then treats it as stale). `completion_bounds`: as the
    recorder's (model -> most completion tokens the text can hold)."""
    row = await db.fetchone("get_job_any", {"id": outcome.job_id})
    schema = ((row or {}).get("request") or {}).get("response_schema")
    if row is None or schema is None or row["status"] != "processing":
        return None
    typed, problem = validate(schema, outcome.content)
    params = {"id": outcome.job_id, "attempt": outcome.attempt, "lease": outcome.lease, "node_id": outcome.node_id,
              "prompt_tokens": outcome.usage.prompt_tokens, "completion_tokens": outcome.usage.completion_tokens}
    if problem is None:
        done = await db.fetchone("complete_typed_job", {**params, "result": jsonb(result | {"typed": typed}),
                                                        "completion_bounds": jsonb(completion_bounds)
                                                        if completion_bounds else None})
    else:
        done = await db.fetchone("fail_typed_job", {**params, "result": jsonb(result), "error": SCHEMA_FAILED,
                                                    "error_message": problem + "; the job's credits are refunded"})
        if done is not None:
            log.warning("typed_output_invalid", job_id=outcome.job_id, detail=problem)
    return done
