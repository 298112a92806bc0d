"""PostgreSQL storage: a psycopg pool behind a narrow interface, named SQL, numbered migrations."""

from control_plane.store.database import Database, StoreError, StoreUnavailable

__all__ = ["Database", "StoreError", "StoreUnavailable"]
