"""Fallback chains: parsing, the choice at submission over a live registry, and the response headers."""

from __future__ import annotations

import pytest

from control_plane.errors import ModelNotFound, NoCapacity
from control_plane.routing.fallback import choose, headers, parse_chains
from control_plane.scheduler.registry import NodeRegistry
from protocol.messages import Advertisement, ModelInfo


def ad(node_id: str, model: str, *, slots: int = 1, active: int = 0, state: str = "online") -> Advertisement:
    return Advertisement(node_id=node_id, agent_version="0", engine="ollama", state=state,  # type: ignore[arg-type]
                         slots=slots, active_jobs=active, models=(ModelInfo(model, True, tokens_per_second=50.0),))


def test_parse_chains():
    assert parse_chains("a>b>c; x > y ;;") == {"a": ["b", "c"], "b": ["c"], "x": ["y"]}
    assert parse_chains("") == {}


def test_choose_prefers_free_then_accepting_then_errors():
    reg = NodeRegistry(now=lambda: 100.0)
    reg.observe(ad("n1", "big", active=1))  # full
    reg.observe(ad("n2", "small"))
    reg.observe(ad("n3", "draining", state="draining"))
    assert choose(reg, "small", ["big"]) == ("small", 0)
    assert choose(reg, "big", ["small"]) == ("small", 1)  # big has no free slot, small has
    assert choose(reg, "missing", ["big"]) == ("big", 1)  # only busy: queue on the first that accepts
    assert choose(reg, "missing", ["draining", "small"]) == ("small", 2)
    with pytest.raises(ModelNotFound):
        choose(reg, "missing", ["also-missing"])
    with pytest.raises(NoCapacity):
        choose(reg, "draining", ["also-missing"])
    # Before warm-up, whatever is advertised at all wins, else the model asked for (it will queue).
    assert choose(reg, "missing", ["small"], warm=False) == ("small", 1)
    assert choose(reg, "missing", ["gone"], warm=False) == ("missing", 0)


def test_headers():
    assert headers({"model": "a", "request": {}}) == {"x-model-used": "a"}
    row = {"model": "b", "request": {"fallback": {"from": "a", "depth": 1, "chain": []}}}
    assert headers(row) == {"x-model-used": "b", "x-fallback-from": "a", "x-fallback-depth": "1"}
    assert headers({"model": "a", "request": {"fallback": {"from": "a", "depth": 0, "chain": ["b"]}}}) == {
        "x-model-used": "a"}
