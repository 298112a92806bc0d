"""The usage list's cursor: the last record's creation instant and job id, so any well-formed cursor is a position."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from control_plane.errors import BadRequest

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICRO = timedelta(microseconds=1)

#: Microseconds since 1970 (at most 17 digits: before the year 5000) `_` the job id.
PATTERN = r"^[0-9]{1,17}_job_[0-9a-f]{16}$"


def encode(row: dict) -> str:
    return f"{(row['created_at'] - _EPOCH) // _MICRO}_{row['id']}"


def decode(cursor: str) -> dict:
    """{created_at, id} of the record the next page starts after."""
    if not re.fullmatch(PATTERN, cursor):
        raise BadRequest("cursor must be the next_cursor of a previous page", param="cursor")
    micros, job_id = cursor.split("_", 1)
    return {"created_at": _EPOCH + int(micros) * _MICRO, "id": job_id}
