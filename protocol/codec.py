"""Bytes in, typed messages out: strict msgspec JSON encode/decode with one typed error."""

from __future__ import annotations

from functools import lru_cache
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

#: NATS's default max payload; messages must stay below it.
MAX_MESSAGE_BYTES = 1024 * 1024

_encoder = msgspec.json.Encoder()


class DecodeError(ValueError):
    """Bytes that are not a valid message of the expected type (malformed, wrong shape, too big)."""


def encode(message: Any) -> bytes:
    """Serialise a message Struct to JSON bytes."""
    return _encoder.encode(message)


@lru_cache(maxsize=None)
def _decoder(kind: Any) -> msgspec.json.Decoder:
    return msgspec.json.Decoder(kind)


def decode(data: bytes, kind: type[T] | Any) -> T:
    """Decode bytes as `kind` (a Struct or a Union of tagged Structs); raise DecodeError on anything else."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        return _decoder(kind).decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(str(exc)) from exc
    except UnicodeDecodeError as exc:  # msgspec checks UTF-8 only when it builds a str
        raise DecodeError(f"invalid UTF-8 at byte {exc.start}") from exc
    except RecursionError:  # nesting deeper than msgspec's limit
        raise DecodeError("message nests arrays or objects too deeply") from None
