"""Request bodies are decoded as strictly as the OpenAPI document describes them.

Litestar converts a handler's `data` with msgspec in lax mode (it must, for query strings): a JSON `0` would pass
as `false`, a number as a timestamp, `"5"` as an integer. The document (msgspec's own schema of each body type)
promises JSON types, so before the handler runs its body is converted once more in strict mode and anything the
schema does not allow is a 400 naming the field, like every other validation error.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.types import Empty

def _target(request: Request) -> Any:
    """The annotation of the handler's `data` parameter (None: the handler takes no body). Read from the handler
    each time (its parsed signature is cached on it): a cache keyed by id(handler) handed one handler's body type
    to another once an app was collected and its handlers' ids reused (tests build many apps in one process)."""
    field = request.route_handler.parsed_fn_signature.parameters.get("data")
    return None if field is None else field.annotation


async def strict_body(request: Request) -> None:
    """Litestar `before_request` hook: refuse a body that only lax conversion would accept."""
    target = _target(request)
    if target is None:
        return None
    value = await request.json()
    if value is None or value is Empty:
        return None  # no body: the handler's own validation says what is missing
    try:
        msgspec.convert(value, target, strict=True, str_keys=True)
    except msgspec.ValidationError as exc:
        # JSON Schema's `integer` includes 2.0 (and so does Litestar's conversion): only then try once more.
        integral = _integral_floats(value)
        if integral is value:
            raise ValidationException(extra=[{"key": "data", "message": str(exc), "source": "body"}]) from None
        try:
            msgspec.convert(integral, target, strict=True, str_keys=True)
        except msgspec.ValidationError as again:
            raise ValidationException(extra=[{"key": "data", "message": str(again), "source": "body"}]) from None
    except TypeError:  # an annotation msgspec cannot convert to: Litestar's own conversion decides
        return None
    return None


def _integral_floats(value: Any) -> Any:
    """`value` with every float that is a whole number as an int (the same object when there is none)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        items = [_integral_floats(v) for v in value]
        return value if all(a is b for a, b in zip(items, value)) else items
    if isinstance(value, dict):
        items = {k: _integral_floats(v) for k, v in value.items()}
        return value if all(items[k] is v for k, v in value.items()) else items
    return value
