"""The usage trigger in PostgreSQL (migrations 0080, 0082): which bound a completed job's counts are capped at."""

from __future__ import annotations

import psycopg
from psycopg.types.json import Jsonb

MODEL = "smollm2:135m"


def complete(url: str, *, model: str = MODEL, request: dict, content: str, claimed: tuple[int, int],
             bounds: dict | None) -> tuple[int, int]:
    """A processing job recorded by the recorder's own statement (complete_job); the charged (prompt, completion)."""
    from control_plane.store.queries import queries

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts (id, name) VALUES ('acct_t', 't') ON CONFLICT DO NOTHING")
        job_id = f"job_{abs(hash((model, content, claimed, str(bounds), str(request)))):x}"
        conn.execute("INSERT INTO jobs (id, account_id, model, request, status, attempt, lease, node_id, deadline) "
                     "VALUES (%s, 'acct_t', %s, %s, 'processing', 1, 'l1', 'n1', now() + interval '1 minute')",
                     (job_id, model, Jsonb(request)))
        row = conn.execute(queries()["complete_job"], {
            "id": job_id, "attempt": 1, "lease": "l1", "node_id": "n1", "first_token_at": None,
            "result": Jsonb({"content": content, "usage": {"prompt_tokens": claimed[0],
                                                           "completion_tokens": claimed[1]}}),
            "prompt_tokens": claimed[0], "completion_tokens": claimed[1],
            "completion_bounds": Jsonb(bounds) if bounds is not None else None}).fetchone()
        charged = conn.execute("SELECT prompt_tokens, completion_tokens, result -> 'usage' FROM jobs WHERE id = %s",
                               (job_id,)).fetchone()
    assert row is not None
    assert charged[2] == {"prompt_tokens": charged[0], "completion_tokens": charged[1]}  # the answer shows it too
    return charged[0], charged[1]


def request(max_tokens: int = 200, stop: list[str] | None = None, usage_bound: dict | None = None) -> dict:
    r = {"messages": [{"role": "user", "content": "Hello there"}], "params": {"max_tokens": max_tokens}}
    if stop is not None:
        r["params"]["stop"] = stop
    if usage_bound is not None:
        r["usage_bound"] = usage_bound
    return r


def test_the_tokenizer_bounds_replace_the_byte_bounds_for_the_jobs_own_model_only(database_url):
    text = "Hello big world, how are you today?"  # 35 bytes: the byte bound allows 36
    # Without tokenizer bounds: the byte bounds of 0080.
    assert complete(database_url, request=request(), content=text, claimed=(30, 36), bounds=None) == (30, 36)
    assert complete(database_url, request=request(), content=text, claimed=(30, 37), bounds=None) == (30, 36)
    # With them: completion at the bound for the job's model, prompt at the submission's bound.
    bounded = request(usage_bound={"model": MODEL, "prompt": 40})
    assert complete(database_url, request=bounded, content=text, claimed=(40, 12), bounds={MODEL: 12}) == (40, 12)
    assert complete(database_url, request=bounded, content=text, claimed=(41, 13), bounds={MODEL: 12}) == (40, 12)
    # max_tokens still bounds first.
    assert complete(database_url, request=request(max_tokens=5, usage_bound={"model": MODEL, "prompt": 40}),
                    content=text, claimed=(1, 9), bounds={MODEL: 12}) == (1, 5)
    # The tokens that made a stop string are counted but cut from the text: the longest stop's bytes are added.
    stopped = request(stop=["\n\n", "END!"], usage_bound={"model": MODEL, "prompt": 40})
    assert complete(database_url, request=stopped, content=text, claimed=(1, 16), bounds={MODEL: 12}) == (1, 16)
    assert complete(database_url, request=stopped, content=text, claimed=(1, 17), bounds={MODEL: 12}) == (1, 16)
    # Bounds made for another model (a fallback moved the job, or the recorder counted for the node's other
    # models) are not this job's: the byte bounds apply.
    other = request(usage_bound={"model": "llama3:8b", "prompt": 40})
    assert complete(database_url, request=other, content=text, claimed=(50, 30), bounds={"llama3:8b": 12}) == (50, 30)
    assert complete(database_url, request=other, content=text, claimed=(50, 37),
                    bounds={"llama3:8b": 12, "x": 1}) == (50, 36)
