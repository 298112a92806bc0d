"""The strict body check reads each handler's own body type, even when handlers come and go (many apps in one
process) and a new handler gets a freed one's id."""

from __future__ import annotations

import gc
from types import SimpleNamespace

from control_plane.lib.strict_body import _target


def _request(annotation: object) -> SimpleNamespace:
    """A request whose handler takes a `data` body of type `annotation` (only what `_target` reads)."""
    params = {"data": SimpleNamespace(annotation=annotation)}
    handler = SimpleNamespace(parsed_fn_signature=SimpleNamespace(parameters=params))
    return SimpleNamespace(route_handler=handler)


def test_each_handler_is_checked_against_its_own_body_type() -> None:
    for i in range(10):
        first = _request(dict)
        assert _target(first) is dict
        del first
        gc.collect()  # the next handler may now be allocated where the first one was
        second = _request(list)
        assert _target(second) is list, f"round {i}: a freed handler's body type was used"
