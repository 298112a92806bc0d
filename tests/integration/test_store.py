"""The store: migrations apply from zero, once, concurrently; every named query is valid against the schema."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import psycopg

from control_plane.store.migrate import apply_migrations, migration_files
from control_plane.store.queries import queries

PARAM = re.compile(r"%\((\w+)\)s")


def test_migrations_are_numbered_without_gaps_or_duplicates():
    versions = [v for v, _, _ in migration_files()]
    assert versions == sorted(set(versions))
    assert versions[0] == 1


def test_migrating_from_zero_applies_everything_once_even_concurrently(pg_server):
    url = pg_server.create_database(template=None)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: apply_migrations(url), range(3)))
    applied = sorted(name for r in results for name in r)
    assert applied == [f"{v:04d}_{n}" for v, n, _ in migration_files()]
    assert apply_migrations(url) == []
    with psycopg.connect(url) as conn:
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"accounts", "api_keys", "nodes", "jobs", "schema_migrations"} <= tables


def test_template_schema_equals_a_fresh_migration(pg_server, database_url):
    fresh = pg_server.create_database(template=None)
    apply_migrations(fresh)

    def columns(url):
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT table_name, column_name, data_type, is_nullable, column_default FROM information_schema.columns"
                " WHERE table_schema = 'public' ORDER BY 1, 2").fetchall()
    assert columns(fresh) == columns(database_url)


def test_every_named_query_is_valid_sql_for_the_schema(database_url):
    errors, checked = {}, 0
    with psycopg.connect(database_url) as conn:
        for name, sql in sorted(queries().items()):
            params = {p: None for p in PARAM.findall(sql)}
            try:
                with conn.transaction(force_rollback=True):
                    conn.execute("EXPLAIN " + sql, params)
                checked += 1
            except psycopg.Error as exc:
                errors[name] = str(exc).splitlines()[0]
    assert errors == {}
    assert checked == len(queries())  # every query's parameter types are inferred from the SQL itself
