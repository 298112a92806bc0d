"""NodeRegistry: liveness on a fake clock, slot accounting, model index, summaries and health."""

from __future__ import annotations

import dataclasses

import pytest

from control_plane.scheduler import placement
from control_plane.scheduler.placement import DEFAULT_PRIOR_TPS
from control_plane.scheduler.registry import MIN_OFFLINE_WINDOW_S, RETENTION_S, Change, ModelSummary, NodeRegistry
from protocol.messages import Advertisement, ModelInfo


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def model(name: str = "llama3", loaded: bool = True, tps: float | None = 50.0) -> ModelInfo:
    return ModelInfo(name=name, loaded=loaded, tokens_per_second=tps)


def ad(node_id: str = "n1", *, models: tuple[ModelInfo, ...] = (model(),), slots: int = 4, active: int = 0,
       state: str = "online", engine_ok: bool = True, interval: float = 5.0,
       running: tuple[str, ...] | None = None) -> Advertisement:
    return Advertisement(node_id=node_id, agent_version="0.1.0", engine="ollama",
                         state=state,  # type: ignore[arg-type]
                         slots=slots, active_jobs=len(running) if running is not None else active, models=models,
                         engine_ok=engine_ok, interval_s=interval, running=running)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def reg(clock: Clock) -> NodeRegistry:
    return NodeRegistry(now=clock)


def free(reg: NodeRegistry, node_id: str = "n1") -> int:
    view = reg.get(node_id)
    assert view is not None
    return view.free_slots


# -- observe ----------------------------------------------------------------------------------------

def test_new_node_is_reported_and_listed(reg: NodeRegistry) -> None:
    change = reg.observe(ad(slots=2, active=1))
    assert change & Change.NEW and change & Change.CAPACITY and change & Change.MODELS
    view = reg.get("n1")
    assert view is not None
    assert (view.state, view.slots, view.active_jobs, view.free_slots, view.engine) == ("online", 2, 1, 1, "ollama")
    assert "llama3" in view.models and view.models["llama3"].loaded
    assert [v.node_id for v in reg.nodes()] == ["n1"] and len(reg) == 1 and "n1" in reg


def test_unchanged_heartbeat_reports_nothing(reg: NodeRegistry) -> None:
    reg.observe(ad())
    assert not reg.observe(ad())
    assert reg.observe(ad()) == Change.NONE


def test_observe_reports_freed_capacity(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=2, active=2))
    assert free(reg) == 0
    assert reg.observe(ad(slots=2, active=1)) == Change.CAPACITY
    assert not reg.observe(ad(slots=2, active=2))


def test_observe_reports_new_or_newly_loaded_models(reg: NodeRegistry) -> None:
    reg.observe(ad(models=(model("a", loaded=False),)))
    assert reg.observe(ad(models=(model("a", loaded=True),))) == Change.MODELS
    assert reg.observe(ad(models=(model("a"), model("b", loaded=False)))) == Change.MODELS
    assert not reg.observe(ad(models=(model("a"),)))  # losing a model wakes nothing


def test_model_index_follows_advertisements(reg: NodeRegistry) -> None:
    reg.observe(ad("n1", models=(model("a"), model("b"))))
    reg.observe(ad("n2", models=(model("b"),)))
    assert reg.model_names() == ["a", "b"]
    reg.observe(ad("n1", models=(model("c"),)))
    assert reg.model_names() == ["b", "c"]
    assert not reg.has_model("a")
    assert placement.candidates(reg, "a") == []
    reg.observe(ad("n2", models=()))
    assert reg.model_names() == ["c"]


def test_engine_down_serves_nothing(reg: NodeRegistry) -> None:
    reg.observe(ad(engine_ok=False))
    assert not reg.has_model("llama3") and not reg.accepting("llama3")
    assert reg.model_names() == [] and reg.models_summary() == []
    assert reg.model_health("llama3") == "unavailable"
    assert placement.candidates(reg, "llama3") == [] and placement.candidates(reg, "llama3", pinned="n1") == []
    view = reg.get("n1")
    assert view is not None and not view.engine_ok and "llama3" in view.models  # still shown as advertised
    assert reg.observe(ad(engine_ok=True)) & Change.ONLINE
    assert reg.has_model("llama3")


def test_malformed_numbers_are_clamped(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad(slots=-1, active=-5, interval=float("nan")))
    view = reg.get("n1")
    assert view is not None
    assert (view.slots, view.active_jobs, view.estimated_active, view.free_slots) == (0, 0, 0, 0)
    assert view.interval_s == 5.0
    assert placement.candidates(reg, "llama3") == []
    reg.observe(ad("n2", interval=0.0))
    clock.t += 15.0
    assert sorted(reg.expire()) == ["n1", "n2"]


# -- liveness ---------------------------------------------------------------------------------------

def test_offline_after_three_intervals(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad(interval=5.0))
    clock.t += 14.9
    assert reg.expire() == []
    assert reg.get("n1").state == "online"  # type: ignore[union-attr]
    clock.t += 0.1
    assert reg.expire() == ["n1"]
    assert reg.expire() == []
    view = reg.get("n1")
    assert view is not None and view.state == "offline"  # still visible, as offline
    assert [v.state for v in reg.nodes()] == ["offline"]
    assert not reg.has_model("llama3") and not reg.accepting("llama3")
    assert reg.model_names() == [] and reg.models_summary() == []
    assert placement.candidates(reg, "llama3") == []


def test_offline_uses_the_advertised_interval(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad("fast", interval=2.0))
    reg.observe(ad("slow", interval=10.0))
    clock.t += 6.0
    assert reg.expire() == ["fast"]
    clock.t += 24.0
    assert reg.expire() == ["slow"]


def test_a_silent_node_stays_online_for_the_minimum_window(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad("quick", interval=0.5))  # three intervals would be 1.5 s: one CPU-starved second too few
    clock.t += 4.9
    assert reg.expire() == [] and reg.online_count() == 1
    clock.t += MIN_OFFLINE_WINDOW_S - 4.9
    assert reg.expire() == ["quick"]


def test_heartbeats_keep_a_node_online(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad())
    for _ in range(10):
        clock.t += 12.0
        reg.observe(ad())
        assert reg.expire() == []
    clock.t += 15.0
    assert reg.expire() == ["n1"]


def test_silent_node_is_not_placed_even_before_expire_runs(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad())
    clock.t += 15.0
    assert reg.get("n1").state == "offline"  # type: ignore[union-attr]
    assert placement.candidates(reg, "llama3") == []
    assert not reg.has_model("llama3")
    reg.observe(ad())  # same advertisement as before: must be placeable again
    assert [c.node_id for c in placement.candidates(reg, "llama3")] == ["n1"]


def test_back_online(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad())
    clock.t += 20.0
    assert reg.expire() == ["n1"]
    change = reg.observe(ad())
    assert change & Change.ONLINE and not change & Change.NEW
    assert reg.get("n1").state == "online"  # type: ignore[union-attr]
    assert reg.has_model("llama3") and reg.accepting("llama3")
    assert [c.node_id for c in placement.candidates(reg, "llama3")] == ["n1"]


def test_offline_nodes_are_forgotten_after_retention(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad())
    clock.t += 15.0
    assert reg.expire() == ["n1"]
    clock.t += RETENTION_S - 1
    reg.expire()
    assert reg.get("n1") is not None
    clock.t += 1
    reg.expire()
    assert reg.get("n1") is None and len(reg) == 0
    assert reg.observe(ad()) & Change.NEW


def test_a_node_back_before_retention_is_kept(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad())
    clock.t += 15.0
    reg.expire()
    clock.t += 100.0
    reg.observe(ad())
    for _ in range(100):
        clock.t += 10.0
        reg.observe(ad())
        assert reg.expire() == []
    assert reg.get("n1").state == "online"  # type: ignore[union-attr]


def test_forget(reg: NodeRegistry) -> None:
    reg.observe(ad())
    reg.forget("n1")
    assert reg.get("n1") is None and not reg.has_model("llama3") and placement.candidates(reg, "llama3") == []
    reg.forget("n1")  # twice is fine


# -- slot accounting --------------------------------------------------------------------------------

def test_reservations_count_until_the_next_advertisement(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=4, running=("j0",)))
    assert free(reg) == 3
    assert reg.reserve("n1", "j1") and reg.reserve("n1", "j2")
    assert free(reg) == 1 and reg.get("n1").inflight == 2  # type: ignore[union-attr]
    reg.observe(ad(slots=4, running=("j0", "j1", "j2")))  # the node now lists both
    assert free(reg) == 1
    reg.ended("n1", "j1")
    assert free(reg) == 2
    reg.ended("n1", "j2")
    assert free(reg) == 3 and reg.get("n1").inflight == 0  # type: ignore[union-attr]


def test_an_end_seen_before_the_advertisement_that_still_lists_the_job(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=1, running=()))
    reg.reserve("n1", "j1")
    reg.ended("n1", "j1")  # the outcome arrived before the offer's reply, before any advertisement
    assert free(reg) == 1
    reg.observe(ad(slots=1, running=("j1",)))  # sent while the node was still storing the outcome
    assert free(reg) == 1
    reg.observe(ad(slots=1, running=()))
    reg.observe(ad(slots=1, running=("j1",)))  # listed again after it was gone: a new run of it, busy
    assert free(reg) == 0


def test_ends_of_other_replicas_jobs_free_their_slots(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=2, running=("theirs",)))
    reg.reserve("n1", "mine")
    assert free(reg) == 0
    reg.ended("n1", "theirs")
    assert free(reg) == 1
    reg.ended("n1", "theirs")  # seen twice (recorded, then observed): counted once
    assert free(reg) == 1


def test_a_stale_attempts_end_keeps_the_new_attempts_slot(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=1, running=()))
    reg.reserve("n1", "j1", 2)
    reg.ended("n1", "j1", 1)
    assert free(reg) == 0
    reg.ended("n1", "j1", 2)
    assert free(reg) == 1


def test_accounting_never_goes_negative_nor_past_slots(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=1, running=()))
    for i in range(3):
        reg.reserve("n1", f"j{i}")
    view = reg.get("n1")
    assert view is not None and view.free_slots == 0 and view.estimated_active == 3
    assert placement.candidates(reg, "llama3") == []
    for _ in range(2):
        for i in range(3):
            reg.ended("n1", f"j{i}")
            reg.release("n1", f"j{i}")
    view = reg.get("n1")
    assert view is not None and view.estimated_active == 0 and view.free_slots == 1 and view.inflight == 0


def test_nodes_that_do_not_list_their_jobs_are_counted_by_number(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=4, active=2))
    for i in range(10):
        reg.ended("n1", f"other{i}")
    assert free(reg) == 4  # at most the advertised jobs can end
    reg.reserve("n1", "j1")
    assert free(reg) == 3  # so the next reservation still counts
    reg.observe(ad(slots=4, active=3))  # counts j1
    assert free(reg) == 1
    reg.ended("n1", "j1")
    assert free(reg) == 2
    reg.observe(ad(slots=4, active=2))
    assert free(reg) == 2


def test_release_says_whether_a_slot_is_free(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=1, running=()))
    reg.reserve("n1", "j1")
    reg.reserve("n1", "j2")
    assert reg.release("n1", "j1") is False
    assert reg.release("n1", "j2") is True


def test_mark_full_until_next_advertisement_or_release(reg: NodeRegistry) -> None:
    reg.observe(ad(slots=4, running=()))
    reg.mark_full("n1")
    view = reg.get("n1")
    assert view is not None and view.full and view.free_slots == 0
    assert placement.candidates(reg, "llama3") == []
    assert reg.observe(ad(slots=4, running=("a",))) & Change.CAPACITY
    assert free(reg) == 3
    reg.reserve("n1", "j1")
    reg.mark_full("n1")
    assert free(reg) == 0
    reg.release("n1", "j1")
    assert free(reg) == 3


def test_unknown_nodes_are_harmless(reg: NodeRegistry) -> None:
    assert reg.reserve("nope", "j") is False and reg.release("nope", "j") is False
    assert reg.ended("nope", "j") is False and reg.ended(None, "j") is False
    reg.mark_full("nope")
    reg.set_draining("nope")
    reg.record_outcome("nope", False)
    assert reg.get("nope") is None and reg.nodes() == []


# -- draining, reliability --------------------------------------------------------------------------

def test_draining_node_has_the_model_but_does_not_accept(reg: NodeRegistry) -> None:
    reg.observe(ad(state="draining"))
    assert reg.has_model("llama3") and not reg.accepting("llama3")
    assert reg.model_names() == ["llama3"]
    assert reg.model_health("llama3") == "unavailable"
    assert placement.candidates(reg, "llama3") == []
    assert reg.observe(ad(state="online")) & Change.ONLINE
    assert reg.accepting("llama3")


def test_set_draining_holds_until_the_node_acknowledges(reg: NodeRegistry) -> None:
    reg.observe(ad())
    reg.set_draining("n1")
    assert reg.get("n1").state == "draining" and not reg.accepting("llama3")  # type: ignore[union-attr]
    reg.observe(ad(state="online"))  # sent before the node heard the drain
    assert reg.get("n1").state == "draining"  # type: ignore[union-attr]
    reg.observe(ad(state="draining"))
    reg.observe(ad(state="online"))  # the operator resumed it
    assert reg.get("n1").state == "online"  # type: ignore[union-attr]


def test_record_outcome_moves_the_success_rate(reg: NodeRegistry) -> None:
    reg.observe(ad())
    assert reg.get("n1").success_rate == 1.0  # type: ignore[union-attr]
    rates = []
    for _ in range(30):
        reg.record_outcome("n1", False)
        rates.append(reg.get("n1").success_rate)  # type: ignore[union-attr]
    assert rates == sorted(rates, reverse=True) and 0.0 <= rates[-1] < 0.01
    reg.record_outcome("n1", True)
    assert reg.get("n1").success_rate > rates[-1]  # type: ignore[union-attr]


# -- summaries --------------------------------------------------------------------------------------

def test_models_summary_averages_known_tokens_per_second(reg: NodeRegistry, clock: Clock) -> None:
    reg.observe(ad("n1", models=(model("m", tps=10.0), model("only-unknown", tps=None))))
    reg.observe(ad("n2", models=(model("m", tps=30.0, loaded=False),)))
    reg.observe(ad("n3", models=(model("m", tps=None),)))
    reg.observe(ad("n4", models=(model("m", tps=1000.0), model("drain-only")), state="draining"))
    reg.observe(ad("n5", models=(model("m", tps=1000.0),), interval=2.0))
    reg.observe(ad("n6", models=(model("m", tps=1000.0),), engine_ok=False))
    clock.t += 6.0  # n5 goes silent
    summary = reg.models_summary()
    assert summary == [ModelSummary("m", 3, 20.0), ModelSummary("only-unknown", 1, None)]
    assert [tuple(s) for s in summary] == [("m", 3, 20.0), ("only-unknown", 1, None)]


def test_model_health(reg: NodeRegistry, clock: Clock) -> None:
    assert reg.model_health("x") == "unavailable"
    reg.observe(ad("n1", models=(model("x", loaded=False),)))
    assert reg.model_health("x") == "loading"
    reg.observe(ad("n2", models=(model("x", loaded=True),), state="draining"))
    assert reg.model_health("x") == "loading"  # a draining node takes no jobs
    reg.observe(ad("n3", models=(model("x", loaded=True),), interval=2.0))
    assert reg.model_health("x") == "ready"
    clock.t += 6.0  # n3 silent
    assert reg.model_health("x") == "loading"
    clock.t += 9.0  # n1 silent too
    assert reg.model_health("x") == "unavailable"


def test_tps_prior_is_the_mean_of_measured_figures(reg: NodeRegistry) -> None:
    assert reg.tps_prior("m") == DEFAULT_PRIOR_TPS
    reg.observe(ad("n1", models=(model("m", tps=None),)))
    assert reg.tps_prior("m") == DEFAULT_PRIOR_TPS
    reg.observe(ad("n2", models=(model("m", tps=10.0),)))
    reg.observe(ad("n3", models=(model("m", tps=40.0),)))
    assert reg.tps_prior("m") == pytest.approx(25.0)
    reg.observe(ad("n3", models=(model("m", tps=0.0),)))  # zero means unknown, never 0
    assert reg.tps_prior("m") == pytest.approx(10.0)


def test_views_are_read_only(reg: NodeRegistry) -> None:
    reg.observe(ad())
    view = reg.get("n1")
    assert view is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.state = "offline"  # type: ignore[misc]
    with pytest.raises(TypeError):
        view.models["other"] = model("other")  # type: ignore[index]
    assert view.accepting
