"""Placement: ranking rules, pinning, and hypothesis checks of the index against a brute-force scorer."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from control_plane.scheduler import placement
from control_plane.scheduler.placement import Candidate, Score, candidates
from control_plane.scheduler.registry import NodeRegistry
from protocol.messages import Advertisement, ModelInfo


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def model(name: str = "m", loaded: bool = True, tps: float | None = 50.0) -> ModelInfo:
    return ModelInfo(name=name, loaded=loaded, tokens_per_second=tps)


def ad(node_id: str, *, models: tuple[ModelInfo, ...] = (model(),), slots: int = 4, active: int = 0,
       state: str = "online", engine_ok: bool = True, interval: float = 5.0) -> Advertisement:
    return Advertisement(node_id=node_id, agent_version="0.1.0", engine="ollama",
                         state=state,  # type: ignore[arg-type]
                         slots=slots, active_jobs=active, models=models, engine_ok=engine_ok, interval_s=interval)


def ids(found: list[Candidate]) -> list[str]:
    return [c.node_id for c in found]


def registry(*ads: Advertisement) -> NodeRegistry:
    reg = NodeRegistry(now=Clock())
    for a in ads:
        reg.observe(a)
    return reg


# -- ranking rules ----------------------------------------------------------------------------------

def test_loaded_beats_on_disk_even_when_slower() -> None:
    reg = registry(ad("disk", models=(model(loaded=False, tps=500.0),)), ad("mem", models=(model(tps=5.0),)))
    assert ids(candidates(reg, "m")) == ["mem", "disk"]


def test_faster_node_first() -> None:
    reg = registry(ad("slow", models=(model(tps=20.0),)), ad("fast", models=(model(tps=100.0),)))
    assert ids(candidates(reg, "m")) == ["fast", "slow"]


def test_idle_node_beats_a_busy_one_of_the_same_speed() -> None:
    reg = registry(ad("busy", slots=4, active=3), ad("idle", slots=4, active=0))
    assert ids(candidates(reg, "m")) == ["idle", "busy"]


def test_unknown_speed_is_a_neutral_prior() -> None:
    reg = registry(ad("slow", models=(model(tps=10.0),)), ad("fast", models=(model(tps=100.0),)),
                   ad("new", models=(model(tps=None),)))
    assert ids(candidates(reg, "m")) == ["fast", "new", "slow"]  # prior 55 tok/s: between the two


def test_only_unknown_speeds_still_place() -> None:
    reg = registry(ad("a", models=(model(tps=None),)), ad("b", models=(model(tps=None),), active=2))
    assert ids(candidates(reg, "m")) == ["a", "b"]


def test_reliability_breaks_speed_ties() -> None:
    reg = registry(ad("flaky", models=(model(tps=50.0),)), ad("steady", models=(model(tps=51.0),)))
    for _ in range(3):
        reg.record_outcome("flaky", False)
    assert ids(candidates(reg, "m")) == ["steady", "flaky"]


def test_load_spreads_over_equal_nodes() -> None:
    reg = registry(*(ad(f"n{i}", slots=4) for i in range(3)))
    chosen = []
    for i in range(3):
        first = candidates(reg, "m", limit=1)[0].node_id
        reg.reserve(first, f"j{i}")
        chosen.append(first)
    assert sorted(chosen) == ["n0", "n1", "n2"]


def test_full_draining_and_engine_down_nodes_are_skipped() -> None:
    reg = registry(ad("full", slots=2, active=2), ad("draining", state="draining"), ad("down", engine_ok=False),
                   ad("marked"), ad("ok", models=(model(tps=1.0),)))
    reg.mark_full("marked")
    assert ids(candidates(reg, "m")) == ["ok"]


def test_exclude_and_limit() -> None:
    reg = registry(*(ad(f"n{i}", models=(model(tps=10.0 * 2 ** i),)) for i in range(5)))
    assert ids(candidates(reg, "m")) == ["n4", "n3", "n2"]
    assert ids(candidates(reg, "m", limit=1)) == ["n4"]
    assert ids(candidates(reg, "m", exclude={"n4", "n2"}, limit=10)) == ["n3", "n1", "n0"]
    assert candidates(reg, "m", limit=0) == []
    assert candidates(reg, "other") == []
    assert ids(candidates(reg, "m", limit=1)) == ["n4"]  # excluding did not disturb the index


def test_pinned_node_only() -> None:
    reg = registry(ad("fast", models=(model(tps=100.0),)), ad("pinned", models=(model(tps=1.0),), slots=1, active=1),
                   ad("draining", state="draining"), ad("down", engine_ok=False))
    assert ids(candidates(reg, "m", pinned="pinned")) == ["pinned"]  # full is the node's call (at_capacity)
    assert candidates(reg, "m", pinned="pinned", exclude={"pinned"}) == []
    assert candidates(reg, "other", pinned="pinned") == []
    assert candidates(reg, "m", pinned="draining") == []
    assert candidates(reg, "m", pinned="down") == []
    assert candidates(reg, "m", pinned="nobody") == []


def test_explain_is_readable() -> None:
    reg = registry(ad("a"), ad("b", models=(model(loaded=False),)))
    found = candidates(reg, "m")
    assert "a: loaded" in found[0].explain() and "on disk" in found[1].explain()
    assert placement.explain(found).count(";") == 1 and placement.explain([]) == "no candidates"


def test_same_calls_same_answers() -> None:
    def run() -> list[list[str]]:
        reg = registry(*(ad(f"n{i}", slots=1 + i % 3, models=(model(tps=None if i % 4 == 0 else 40.0),))
                         for i in range(12)))
        out = []
        for k in range(20):
            found = candidates(reg, "m")
            out.append(ids(found))
            if found:
                reg.reserve(found[0].node_id, f"j{k}")
            if k % 3 == 0:
                reg.ended(f"n{k % 12}", f"j{k - 3}")
        return out
    assert run() == run()


# -- the score itself -------------------------------------------------------------------------------

scores = st.fixed_dictionaries({
    "loaded": st.booleans(), "active": st.integers(0, 16), "slots": st.integers(1, 16),
    "tokens_per_second": st.one_of(st.none(), st.floats(0.01, 5000)), "prior_tps": st.floats(0.01, 5000),
    "success_rate": st.floats(0, 1),
})


@given(scores)
def test_score_loaded_always_beats_on_disk(kw: dict) -> None:
    assert placement.score(**{**kw, "loaded": True}) < placement.score(**{**kw, "loaded": False})


@given(scores, st.floats(1, 10))
def test_score_faster_is_never_worse(kw: dict, factor: float) -> None:
    tps = kw["tokens_per_second"] or kw["prior_tps"]
    assert placement.score(**{**kw, "tokens_per_second": tps * factor}) <= placement.score(
        **{**kw, "tokens_per_second": tps})


@given(scores, st.integers(1, 8))
def test_score_more_active_is_never_better(kw: dict, more: int) -> None:
    assert placement.score(**kw) < placement.score(**{**kw, "active": kw["active"] + more})


@given(scores, st.floats(0, 1))
def test_score_more_reliable_is_never_worse(kw: dict, better: float) -> None:
    high = max(kw["success_rate"], better)
    assert placement.score(**{**kw, "success_rate": high}) <= placement.score(**kw)


@given(scores)
def test_unknown_speed_scores_as_the_prior(kw: dict) -> None:
    assert placement.score(**{**kw, "tokens_per_second": None}) == placement.score(
        **{**kw, "tokens_per_second": kw["prior_tps"]})


# -- the index against brute force ------------------------------------------------------------------

NODES = [f"n{i}" for i in range(6)]
MODELS = ["a", "b", "c"]
JOBS = [f"j{i}" for i in range(8)]
TPS = [None, 0.0, -3.0, float("nan"), float("inf"), 5.0, 20.0, 21.0, 50.0, 100.5, 1e9]

model_infos = st.builds(ModelInfo, name=st.sampled_from(MODELS), loaded=st.booleans(),
                        tokens_per_second=st.sampled_from(TPS))


def eligible(reg: NodeRegistry, model_name: str, exclude: frozenset[str]) -> dict[str, Score]:
    """Every node a job for the model could go to, scored one by one (the reference)."""
    prior = reg.tps_prior(model_name)
    out = {}
    for view in reg.nodes():
        info = view.models.get(model_name)
        if (view.state != "online" or not view.engine_ok or view.free_slots <= 0 or view.full or info is None
                or view.node_id in exclude):
            continue
        out[view.node_id] = placement.score(
            loaded=info.loaded, active=view.estimated_active, slots=view.slots,
            tokens_per_second=info.tokens_per_second, prior_tps=prior, success_rate=view.success_rate)
    return out


class PlacementMachine(RuleBasedStateMachine):
    """Random heartbeats, clock steps, reservations and outcomes; placement is checked after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.reg = NodeRegistry(now=self.clock)

    @initialize(models=st.lists(st.lists(model_infos, min_size=1, max_size=3, unique_by=lambda m: m.name),
                                min_size=len(NODES), max_size=len(NODES)))
    def populate(self, models: list[list[ModelInfo]]) -> None:
        for node, served in zip(NODES, models):
            self.reg.observe(ad(node, models=tuple(served)))

    @rule(node=st.sampled_from(NODES), models=st.lists(model_infos, max_size=3, unique_by=lambda m: m.name),
          slots=st.sampled_from([0, 1, 2, 4, 4]), active=st.sampled_from([0, 0, 0, 1, 1, 2, 3, 5]),
          state=st.sampled_from(["online"] * 4 + ["draining"]), engine_ok=st.sampled_from([True] * 5 + [False]),
          interval=st.sampled_from([1.0, 5.0]))
    def observe(self, node: str, models: list[ModelInfo], slots: int, active: int, state: str, engine_ok: bool,
                interval: float) -> None:
        self.reg.observe(ad(node, models=tuple(models), slots=slots, active=active, state=state,
                            engine_ok=engine_ok, interval=interval))

    @rule(dt=st.sampled_from([0.5, 0.5, 1.0, 2.0, 2.0, 4.0, 16.0, 700.0]))
    def advance(self, dt: float) -> None:
        self.clock.t += dt

    @rule()
    def expire(self) -> None:
        for node_id in self.reg.expire():
            assert self.reg.get(node_id).state == "offline"  # type: ignore[union-attr]

    @rule(node=st.sampled_from(NODES), job=st.sampled_from(JOBS))
    def reserve(self, node: str, job: str) -> None:
        self.reg.reserve(node, job)

    @rule(node=st.sampled_from(NODES), job=st.sampled_from(JOBS))
    def release(self, node: str, job: str) -> None:
        self.reg.release(node, job)

    @rule(node=st.sampled_from(NODES), job=st.sampled_from(JOBS))
    def ended(self, node: str, job: str) -> None:
        self.reg.ended(node, job)

    @rule(model_name=st.sampled_from(MODELS), job=st.sampled_from(JOBS))
    def place_and_reserve(self, model_name: str, job: str) -> None:
        found = candidates(self.reg, model_name, limit=1)
        if found:
            self.reg.reserve(found[0].node_id, job)

    @rule(node=st.sampled_from(NODES))
    def mark_full(self, node: str) -> None:
        self.reg.mark_full(node)

    @rule(node=st.sampled_from(NODES))
    def set_draining(self, node: str) -> None:
        self.reg.set_draining(node)

    @rule(node=st.sampled_from(NODES), success=st.booleans())
    def record_outcome(self, node: str, success: bool) -> None:
        self.reg.record_outcome(node, success)

    @rule(node=st.sampled_from(NODES))
    def forget(self, node: str) -> None:
        self.reg.forget(node)

    @rule(model_name=st.sampled_from(MODELS), exclude=st.frozensets(st.sampled_from(NODES), max_size=3),
          limit=st.integers(1, 7))
    def place_with_exclusions(self, model_name: str, exclude: frozenset[str], limit: int) -> None:
        self.check(model_name, exclude, limit)

    @rule(model_name=st.sampled_from(MODELS), pinned=st.sampled_from(NODES),
          exclude=st.frozensets(st.sampled_from(NODES), max_size=2))
    def place_pinned(self, model_name: str, pinned: str, exclude: frozenset[str]) -> None:
        found = candidates(self.reg, model_name, pinned=pinned, exclude=exclude)
        view = self.reg.get(pinned)
        allowed = (view is not None and view.state == "online" and view.engine_ok and model_name in view.models
                   and pinned not in exclude)
        assert ids(found) == ([pinned] if allowed else [])

    @invariant()
    def placement_matches_brute_force(self) -> None:
        for model_name in MODELS:
            self.check(model_name, frozenset(), 3)

    def check(self, model_name: str, exclude: frozenset[str], limit: int) -> None:
        reference = eligible(self.reg, model_name, exclude)
        found = candidates(self.reg, model_name, exclude=exclude, limit=limit)
        assert len(set(ids(found))) == len(found) <= limit
        for c in found:
            view = self.reg.get(c.node_id)
            assert view is not None and view.state == "online" and view.engine_ok  # not offline/draining/down
            assert view.free_slots > 0 and not view.full  # not full
            assert model_name in view.models and c.node_id not in exclude
            assert c.score == reference[c.node_id]
        # The same best scores as scoring every node, in order (ties may pick different nodes).
        assert [c.score for c in found] == sorted(reference.values())[:limit]
        if any(s.unloaded == 0 for s in reference.values()):
            assert found[0].score.unloaded == 0  # a loaded node beats any on-disk one
        # Check the mean the prior comes from, over the nodes still indexed.
        assert math.isfinite(self.reg.tps_prior(model_name)) and self.reg.tps_prior(model_name) > 0


TestPlacementMachine = PlacementMachine.TestCase
TestPlacementMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_index_survives_many_rescores() -> None:
    """Scores that come and go leave emptied buckets behind; sweeping them keeps the ranking right."""
    steady = [ad(f"s{i}", models=(model(tps=2.0 ** i),)) for i in range(8)]  # worst first
    reg = registry(*steady)
    names = [a.node_id for a in steady] + ["moving"]
    most_keys = 0
    for i in range(300):
        reg.observe(ad("moving", models=(model(tps=10 ** (i * 7919 % 600 / 100)),), active=i % 3))
        most_keys = max(most_keys, len(reg._index["m"].known.keys))
        if i % 50 == 49:  # not after every change: a query also clears emptied buckets it meets
            best = sorted(s for n in names if (s := reg.score_of(n, "m")) is not None)
            assert [c.score for c in candidates(reg, "m", limit=3)] == best[:3]
    assert most_keys <= 2 * len(names) + 64  # emptied buckets were swept
