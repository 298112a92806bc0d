"""The one gateway to PostgreSQL: a psycopg async pool running named queries; driver errors wrapped here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from control_plane.errors import InfernetError
from control_plane.store.queries import query


class StoreError(InfernetError):
    """A database operation failed; the driver's text is logged, never shown to the caller."""

    code = "internal_error"
    status = 500
    public = False


class StoreUnavailable(StoreError):
    """PostgreSQL could not be reached or the pool is exhausted: the caller may retry (503)."""

    code = "service_unavailable"
    status = 503


_json_encode = msgspec.json.Encoder().encode
_json_decode = msgspec.json.Decoder().decode


def _dumps(obj: Any) -> bytes:
    return _json_encode(obj)


# jsonb parameters and results go through msgspec (several times faster than the stdlib json psycopg uses).
set_json_dumps(_dumps)
set_json_loads(_json_decode)


def jsonb(value: Any) -> Jsonb:
    """Wrap a Python value for a jsonb parameter."""
    return Jsonb(value)


class _Runner:
    """Runs named queries on one connection (the pool's or a transaction's)."""

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        self._conn = conn

    async def fetchone(self, name: str, params: Mapping[str, Any] | None = None) -> dict | None:
        async with self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query(name), params)
            return await cur.fetchone()

    async def fetchall(self, name: str, params: Mapping[str, Any] | None = None) -> list[dict]:
        async with self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query(name), params)
            return await cur.fetchall()

    async def execute(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        async with self._conn.cursor() as cur:
            await cur.execute(query(name), params)
            return cur.rowcount


class Database:
    """Named-query access to PostgreSQL through an async connection pool."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self._pool = pool

    @classmethod
    async def open(cls, conninfo: str, *, min_size: int = 2, max_size: int = 16, timeout: float = 10.0) -> Database:
        pool = AsyncConnectionPool(
            conninfo, min_size=min_size, max_size=max_size, timeout=timeout, open=False,
            kwargs={"autocommit": True},
        )
        try:
            await pool.open(wait=True, timeout=timeout)
        except (psycopg.Error, PoolTimeout) as exc:
            await pool.close()
            raise StoreUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
        return cls(pool)

    async def close(self) -> None:
        await self._pool.close()

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator[psycopg.AsyncConnection]:
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise StoreUnavailable(f"no PostgreSQL connection available: {exc}") from exc
        except psycopg.OperationalError as exc:
            raise StoreUnavailable(f"PostgreSQL unavailable: {exc}") from exc
        except psycopg.Error as exc:
            raise StoreError(f"database error: {exc}") from exc

    async def fetchone(self, name: str, params: Mapping[str, Any] | None = None) -> dict | None:
        async with self._conn() as conn:
            return await _Runner(conn).fetchone(name, params)

    async def fetchall(self, name: str, params: Mapping[str, Any] | None = None) -> list[dict]:
        async with self._conn() as conn:
            return await _Runner(conn).fetchall(name, params)

    async def execute(self, name: str, params: Mapping[str, Any] | None = None) -> int:
        async with self._conn() as conn:
            return await _Runner(conn).execute(name, params)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Runner]:
        """Run several named queries atomically."""
        async with self._conn() as conn, conn.transaction():
            yield _Runner(conn)

    async def ping(self) -> bool:
        try:
            return (await self.fetchone("ping")) is not None
        except StoreError:
            return False
