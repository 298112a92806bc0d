"""A repeated `make up` reuses the dev stack's admin key and node: no second admin key, no second `dev-node`."""

from __future__ import annotations

import psycopg

from control_plane.dev_identity import dev_identity


async def test_a_second_start_reuses_the_key_and_the_node(database_url, tmp_path):
    first = await dev_identity(database_url, tmp_path, credits=1000)
    second = await dev_identity(database_url, tmp_path, credits=1000)
    assert first == second
    assert (tmp_path / "dev-identity.json").stat().st_mode & 0o777 == 0o600
    with psycopg.connect(database_url) as conn:
        keys = conn.execute("SELECT count(*) FROM api_keys k JOIN accounts a ON a.id = k.account_id "
                            "WHERE a.name = 'dev' AND k.is_admin").fetchone()[0]
        nodes = conn.execute("SELECT count(*) FROM nodes WHERE name = 'dev-node'").fetchone()[0]
    assert (keys, nodes) == (1, 1)
    # A revoked key (or a database that no longer knows them) gets new ones.
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE api_keys SET revoked_at = now()")
    third = await dev_identity(database_url, tmp_path, credits=1000)
    assert third[0] != first[0] and third[1] != first[1]
