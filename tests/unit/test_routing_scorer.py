"""Model profiles, scoring on fit/cost/latency per optimize mode, and the router over a live NodeRegistry."""

from __future__ import annotations

import pytest

from control_plane.errors import ModelNotFound
from control_plane.routing.classifier import Classification
from control_plane.routing.network import ModelLive, live
from control_plane.routing.pricing import ModelPrice, default_price, resolve
from control_plane.routing.profiles import parse_params_b, profile
from control_plane.routing.router import Router
from control_plane.routing.schemas import RoutingOptions
from control_plane.routing.scorer import score_pool
from control_plane.scheduler.registry import NodeRegistry
from protocol.messages import Advertisement, ModelInfo

SMALL, MID, LARGE = "qwen2.5:7b", "qwen2.5:14b", "qwen2.5:72b"
CODE_SIMPLE = Classification("code_generation", "simple", 0.9)
CODE_COMPLEX = Classification("code_generation", "complex", 0.9)


class Clock:
    t = 1000.0

    def __call__(self) -> float:
        return self.t


def ad(node_id: str, *models: ModelInfo, slots: int = 2, active: int = 0, labels=None) -> Advertisement:
    return Advertisement(node_id=node_id, agent_version="0.1.0", engine="ollama", state="online",
                         slots=slots, active_jobs=active, models=models, labels=labels or {})


def m(name: str, tps: float | None = None, loaded: bool = True) -> ModelInfo:
    return ModelInfo(name=name, loaded=loaded, tokens_per_second=tps)


def lives(*specs: tuple[str, float]) -> list[ModelLive]:
    return [ModelLive(name, "ready", tps) for name, tps in specs]


def prices(*names: str) -> dict[str, ModelPrice]:
    return {n: default_price(n) for n in names}


@pytest.mark.parametrize("name, params", [
    ("qwen2.5:14b", 14), ("Qwen/Qwen3-32B", 32), ("llama3.2:3b", 3), ("mixtral:8x7b", 56),
    ("smollm2:135m", 0.135), ("qwen2.5-coder:1.5b-instruct", 1.5), ("mistral", None), ("gpt-oss:20b", 20),
])
def test_parameter_count_from_names(name, params):
    assert parse_params_b(name) == params


def test_profiles_capability_and_specialities():
    assert profile(SMALL).capability < profile(MID).capability < profile(LARGE).capability
    assert profile("qwen2.5-coder:7b").capability_for("code_generation") > profile(SMALL).capability_for(
        "code_generation")
    assert profile("qwen2.5-coder:7b").capability_for("chat") == profile(SMALL).capability_for("chat")
    assert not profile("nomic-embed-text:latest").chat and profile("llama3.2:3b").chat
    assert profile("Qwen3-30B-A3B").capability < profile("Qwen3-32B").capability  # 3B active


def test_balanced_takes_the_cheap_fast_model_that_is_good_enough():
    pool = lives((SMALL, 95), (MID, 78), (LARGE, 48))
    simple = score_pool(CODE_SIMPLE, pool, prices(SMALL, MID, LARGE), optimize="balanced", prompt_tokens=30,
                        max_tokens=512)
    assert simple[0].model == SMALL
    complex_ = score_pool(CODE_COMPLEX, pool, prices(SMALL, MID, LARGE), optimize="balanced", prompt_tokens=30,
                          max_tokens=512)
    assert complex_[0].model == LARGE  # the small ones fall short of what a complex task needs


def test_modes_move_the_choice():
    pool = lives((SMALL, 95), (MID, 78), (LARGE, 48))
    pick = {mode: score_pool(Classification("analysis", "moderate", 0.8), pool, prices(SMALL, MID, LARGE),
                             optimize=mode, prompt_tokens=50, max_tokens=512)[0].model
            for mode in ("quality", "cost", "latency")}
    assert pick == {"quality": LARGE, "cost": SMALL, "latency": SMALL}
    # Latency follows measured speed, not size: make the large model the fastest by far.
    fast_large = lives((SMALL, 20), (MID, 20), (LARGE, 400))
    assert score_pool(CODE_SIMPLE, fast_large, prices(SMALL, MID, LARGE), optimize="latency", prompt_tokens=30,
                      max_tokens=512)[0].model == LARGE
    # Cost follows the price lookup, not size: make the large model free-ish.
    cheap_large = prices(SMALL, MID) | {LARGE: ModelPrice(0.001, 0.001)}
    assert score_pool(CODE_SIMPLE, lives((SMALL, 95), (MID, 78), (LARGE, 48)), cheap_large, optimize="cost",
                      prompt_tokens=30, max_tokens=512)[0].model == LARGE


def test_components_are_bounded_and_busy_or_unavailable_models_rank_lower():
    pool = [ModelLive(SMALL, "busy", 95, queued=3), ModelLive(MID, "ready", 78), ModelLive(LARGE, "unavailable", 48)]
    scored = score_pool(CODE_SIMPLE, pool, prices(SMALL, MID), optimize="latency", prompt_tokens=30, max_tokens=512)
    assert [s.model for s in scored] == [MID, SMALL, LARGE]
    assert scored[-1].status == "unavailable" and scored[-1].score is None
    for s in scored[:2]:
        assert 0 < s.fit <= 1 and 0 < s.cost <= 1 and 0 < s.latency <= 1 and 0 < s.score <= 1
        assert s.expected_latency_ms > 0 and s.expected_cost > 0
    assert scored[1].expected_latency_ms > scored[0].expected_latency_ms  # waiting behind 3 queued jobs


def test_a_model_on_disk_only_pays_a_cold_load():
    warm, cold = ModelLive(SMALL, "ready", 95), ModelLive("qwen2.5:7b-alt", "ready", 95, loaded=False)
    scored = score_pool(CODE_SIMPLE, [cold, warm], prices(SMALL, "qwen2.5:7b-alt"), optimize="latency",
                        prompt_tokens=30, max_tokens=512)
    assert scored[0].model == SMALL


def test_price_resolution_order():
    lookup = {"a:7b": ModelPrice(1, 2)}.get
    assert resolve(lookup, "a:7b", 9.0) == ModelPrice(1, 2)
    assert resolve(lookup, "b:7b", 9.0) == ModelPrice(9.0, 9.0)  # a node's advertised price_per_mtok
    assert resolve(None, "b:7b") == default_price("b:7b")
    assert default_price(LARGE).output_per_mtok > default_price(SMALL).output_per_mtok


# -- the router over a real registry ------------------------------------------------------------------

@pytest.fixture
def reg() -> NodeRegistry:
    r = NodeRegistry(now=Clock())
    r.observe(ad("n1", m(SMALL, 95), m("nomic-embed-text:latest")))
    r.observe(ad("n2", m(LARGE, 48)))
    r.observe(ad("n3", m(MID, 78), slots=1, active=1))  # full
    return r


def test_live_view_from_the_registry(reg):
    assert live(reg, SMALL).status == "ready" and live(reg, SMALL).tokens_per_second == 95
    assert live(reg, MID).status == "busy"
    assert live(reg, "missing:1b").status == "unavailable"
    reg.observe(ad("n4", m("priced:7b", 50), labels={"price_per_mtok": "0.25"}))
    assert live(reg, "priced:7b").advertised_price == 0.25


def test_router_decides_and_records_why(reg):
    router = Router(reg, queue_depth=lambda model: 0)
    msgs = [{"role": "user", "content": "Write a Python function to sort a list"}]
    d = router.route(msgs)
    assert d.model == SMALL and d.task == "code_generation" and d.complexity == "simple"
    assert d.optimize == "balanced" and d.task_source == "classifier" and d.routing_time_ms >= 0
    assert set(d.pool) == {SMALL, MID, LARGE}  # every chat model the network serves; embeddings left out
    assert [c.model for c in d.candidates][0] == SMALL
    assert d.event() == {"object": "routing", "task": "code_generation", "complexity": "simple",
                         "confidence": d.confidence, "model": SMALL, "routing_time_ms": d.routing_time_ms}
    assert d.fallbacks(2) == [c.model for c in d.candidates[1:3]]


def test_router_honours_request_then_key_then_defaults(reg):
    router = Router(reg, default_pool=[SMALL, MID], default_optimize="latency")
    msgs = [{"role": "user", "content": "hello"}]
    assert set(router.route(msgs).pool) == {SMALL, MID}
    assert router.route(msgs).optimize == "latency"
    d = router.route(msgs, key_pool=[LARGE, SMALL], key_optimize="quality")
    assert (d.model, d.optimize) == (LARGE, "quality")
    d = router.route(msgs, options=RoutingOptions(model_pool=[SMALL], optimize="cost", task="math"),
                     key_pool=[LARGE], key_optimize="quality")
    assert (d.model, d.optimize, d.task, d.task_source, d.confidence) == (SMALL, "cost", "math", "request", 1.0)


def test_router_refuses_a_pool_nobody_serves(reg):
    router = Router(reg)
    with pytest.raises(ModelNotFound):
        router.route([{"role": "user", "content": "hi"}], options=RoutingOptions(model_pool=["gone:1b"]))
    with pytest.raises(ModelNotFound):
        Router(NodeRegistry(now=Clock())).route([{"role": "user", "content": "hi"}])
