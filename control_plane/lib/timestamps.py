"""Timestamps the API reads (query parameters, body fields): exactly RFC 3339 date-times, as the OpenAPI
document says (`format: date-time` and the equivalent pattern)."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Annotated

from msgspec import Meta

from control_plane.errors import BadRequest

#: RFC 3339 `date-time` (ECMA-262 syntax, for the document): date, `T`, time with an optional fraction, `Z` or an
#: offset. Dates a calendar does not have (February 30) match it but are not date-times: they are refused too, and so
#: are leap seconds (:60).
PATTERN = (r"^([0-9]{3}[1-9]|[0-9]{2}[1-9][0-9]|[0-9][1-9][0-9]{2}|[1-9][0-9]{3})-(0[1-9]|1[0-2])-"
           r"(0[1-9]|[12][0-9]|3[01])[Tt]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]+)?"
           r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
_FIELDS = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt]([0-9]{2}):([0-9]{2}):([0-9]{2})(\.[0-9]+)?"
                     r"(?:([Zz])|([+-])([0-9]{2}):([0-9]{2}))")
_PATTERN = re.compile(PATTERN)
#: What the OpenAPI document says of a timestamp query parameter (a schema fragment).
DATE_TIME_SCHEMA = {"format": "date-time", "pattern": PATTERN}
#: A timestamp body field: a string the document describes as a date-time; read it with `parse_timestamp`.
Timestamp = Annotated[str, Meta(pattern=PATTERN, extra_json_schema={"format": "date-time"})]


def parse_timestamp(value: str | None, param: str) -> datetime | None:
    """The instant (timezone-aware), None when the parameter is absent, else 400 naming it."""
    if value is None:
        return None
    match = _FIELDS.fullmatch(value) if _PATTERN.fullmatch(value) else None
    if match is None:
        raise BadRequest(f"{param} must be an RFC 3339 timestamp with a timezone (e.g. 2026-04-30T14:23:41Z), "
                         f"got {value[:64]!r}", param=param)
    year, month, day, hour, minute, second, fraction, zulu, sign, off_h, off_m = match.groups()
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    offset = timedelta(0) if zulu else (-1 if sign == "-" else 1) * timedelta(hours=int(off_h), minutes=int(off_m))
    try:
        return datetime(int(year), int(month), int(day), int(hour), int(minute), int(second), micro, timezone(offset))
    except ValueError:  # a day the month does not have
        raise BadRequest(f"{param} names a day its month does not have: {value[:64]!r}", param=param) from None
