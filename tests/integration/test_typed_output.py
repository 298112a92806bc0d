"""response_schema: passed to the engine as its format, output validated and returned as `typed`, and a job
whose output does not match fails with schema_validation_failed and is refunded in the ledger."""

from __future__ import annotations

import psycopg

from tests.doubles.ollama_double import OllamaDouble

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
          "required": ["name", "age"], "additionalProperties": False}


def ledger_kinds(database_url: str, job_id: str) -> list[str]:
    with psycopg.connect(database_url) as conn:
        return [r[0] for r in conn.execute("SELECT kind FROM credit_ledger WHERE job_id = %s ORDER BY id",
                                           (job_id,)).fetchall()]


async def test_valid_output_is_typed_and_charged(stack, database_url):
    async with OllamaDouble(models=["qwen2.5:7b"], tokens=['{"name": ', '"Ada", ', '"age": 36}']) as d:
        key = await stack.ready(d, "qwen2.5:7b")
        r = await stack.submit(key, model="qwen2.5:7b", response_schema=PERSON)
        assert r.status_code == 200, r.text
        job = await stack.wait_job(key, r.json()["id"])
        assert job["status"] == "completed", job
        assert job["typed"] == {"name": "Ada", "age": 36}
        assert job["result"]["content"] == '{"name": "Ada", "age": 36}'
        assert d.requests_to("/api/chat")[-1].body["format"] == PERSON  # the engine was asked for the schema
        assert ledger_kinds(database_url, job["id"])[0] == "reserve" and "charge" in ledger_kinds(database_url, job["id"])

        # A fenced JSON answer is still JSON.
        d.configure(tokens=["```json\n", '{"name": "Bo", "age": 2}', "\n```"])
        job = await stack.wait_job(key, (await stack.submit(key, model="qwen2.5:7b", response_schema=PERSON)).json()["id"])
        assert (job["status"], job["typed"]) == ("completed", {"name": "Bo", "age": 2})

        # Jobs without a schema have no `typed` at all.
        job = await stack.wait_job(key, (await stack.submit(key, model="qwen2.5:7b")).json()["id"])
        assert "typed" not in job


async def test_invalid_output_fails_and_is_refunded(stack, database_url):
    async with OllamaDouble(models=["qwen2.5:7b"], tokens=['{"name": "Ada", "age": -3}']) as d:
        key = await stack.ready(d, "qwen2.5:7b")
        job = await stack.wait_job(key, (await stack.submit(key, model="qwen2.5:7b", response_schema=PERSON)).json()["id"])
        assert (job["status"], job["error"]) == ("failed", "schema_validation_failed"), job
        assert job["typed"] is None and "age" in job["error_message"] and "refunded" in job["error_message"]
        assert ledger_kinds(database_url, job["id"]) == ["reserve", "refund"]
        assert job.get("credits_charged", 0) == 0

        d.configure(tokens=["Sure! Here is the person: Ada, 36."])
        job = await stack.wait_job(key, (await stack.submit(key, model="qwen2.5:7b", response_schema=PERSON)).json()["id"])
        assert (job["status"], job["error"]) == ("failed", "schema_validation_failed")
        assert "not JSON" in job["error_message"]
        assert ledger_kinds(database_url, job["id"]) == ["reserve", "refund"]


async def test_schemas_are_checked_at_submission(stack, double):
    key = await stack.ready(double, "qwen2.5:7b")
    for bad in ({"type": "not-a-type"}, {"properties": 5}, {"required": "name"}):
        r = await stack.submit(key, model="qwen2.5:7b", response_schema=bad)
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), bad
        assert "response_schema" in r.json()["error_message"]
    r = await stack.submit(key, model="qwen2.5:7b", response_schema=[1, 2])
    assert r.status_code == 400
