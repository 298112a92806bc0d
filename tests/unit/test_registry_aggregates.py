"""The registry's incremental figures (live count, model summaries, id pages) equal a walk over every node, always."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.scheduler.aggregates import Contribution, RegistryAggregates
from control_plane.scheduler.registry import NodeRegistry
from protocol.messages import Advertisement, ModelInfo

NODES = [f"node_{i:02x}" for i in range(4)]
MODELS = ["a", "b/c", "d"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


tps = st.one_of(st.none(), st.sampled_from([0.0, -1.0, math.nan, math.inf, 12.5, 40.0, 333.3]))
models = st.dictionaries(st.sampled_from(MODELS), st.tuples(st.booleans(), tps), max_size=3)
advertisement = st.builds(
    lambda node, served, engine_ok, draining, interval: Advertisement(
        node_id=node, agent_version="1", engine="ollama", state="draining" if draining else "online",
        slots=2, active_jobs=0, engine_ok=engine_ok, interval_s=interval,
        models=tuple(ModelInfo(name=n, loaded=lo, tokens_per_second=t) for n, (lo, t) in served.items())),
    st.sampled_from(NODES), models, st.booleans(), st.booleans(), st.sampled_from([1.0, 5.0]))
operation = st.one_of(
    st.tuples(st.just("observe"), advertisement),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 2.0, 4.0, 16.0, 700.0])),
    st.tuples(st.just("expire"), st.none()),
    st.tuples(st.just("forget"), st.sampled_from(NODES)),
    st.tuples(st.just("drain"), st.sampled_from(NODES)),
)


def walked_summary(reg: NodeRegistry) -> list[tuple[str, int, float | None]]:
    """What models_summary means, computed the slow way from the node views."""
    counts: dict[str, list] = {}
    for view in reg.nodes():
        if view.state != "online" or not view.engine_ok:
            continue
        for name, info in view.models.items():
            entry = counts.setdefault(name, [0, []])
            entry[0] += 1
            t = info.tokens_per_second
            if t is not None and t > 0 and math.isfinite(t):
                entry[1].append(t)
    return [(name, n, math.fsum(known) / len(known) if known else None)
            for name, (n, known) in sorted(counts.items())]


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_incremental_figures_equal_a_full_walk(ops) -> None:
    clock = Clock()
    reg = NodeRegistry(now=clock, retention_s=600.0)
    for kind, arg in ops:
        if kind == "observe":
            reg.observe(arg)
        elif kind == "advance":
            clock.t += arg
        elif kind == "expire":
            reg.expire()
        elif kind == "forget":
            reg.forget(arg)
        else:
            reg.set_draining(arg)
        views = reg.nodes()
        assert reg.online_count() == sum(1 for v in views if v.state != "offline")
        got = [(s.name, s.nodes, s.tokens_per_second) for s in reg.models_summary()]
        want = walked_summary(reg)
        assert [(n, c) for n, c, _ in got] == [(n, c) for n, c, _ in want]
        for (_, _, a), (_, _, b) in zip(got, want):
            assert (a is None) == (b is None) and (a is None or abs(a - b) < 1e-3)
        ids = sorted(v.node_id for v in reg.nodes())
        assert reg.page_ids(None, 100) == ids
        for model in MODELS:
            serving = sorted(v.node_id for v in reg.nodes() if v.state != "offline" and v.engine_ok and model in v.models)
            assert reg.page_ids(None, 100, model) == serving


@given(st.lists(st.sampled_from(NODES), unique=True), st.integers(1, 4), st.sampled_from([None, *NODES]))
def test_pages_walk_every_id_once_in_order(ids, limit, start) -> None:
    agg = RegistryAggregates()
    for node_id in ids:
        agg.added(node_id)
    seen, cursor = [], start
    while True:
        page = agg.page(cursor, limit)
        assert len(page) <= limit
        seen += page
        if len(page) < limit:
            break
        cursor = page[-1]
    assert seen == sorted(i for i in ids if start is None or i > start)


def test_expire_reports_a_node_once_even_when_a_read_marked_it_offline() -> None:
    clock = Clock()
    reg = NodeRegistry(now=clock)
    reg.observe(Advertisement(node_id="node_01", agent_version="1", engine="e", state="online", slots=1,
                              active_jobs=0, interval_s=2.0, models=(ModelInfo("a"),)))
    clock.t += 6.5
    assert reg.online_count() == 0  # a read applies the due offline check...
    assert reg.expire() == ["node_01"]  # ...and the sweeper still learns of the loss, once
    assert reg.expire() == []


def test_a_node_back_before_the_sweep_is_not_reported_lost() -> None:
    clock = Clock()
    reg = NodeRegistry(now=clock)
    one = Advertisement(node_id="node_01", agent_version="1", engine="e", state="online", slots=1,
                        active_jobs=0, interval_s=2.0, models=(ModelInfo("a"),))
    reg.observe(one)
    clock.t += 6.5
    assert reg.models_summary() == []
    reg.observe(one)
    assert reg.expire() == [] and reg.online_count() == 1


def test_contribution_changes_move_the_sums_by_difference() -> None:
    agg = RegistryAggregates()
    agg.added("n1")
    agg.apply("n1", Contribution(False, False, ()), Contribution(True, True, (("m", 10_000), ("x", None))))
    agg.apply("n1", Contribution(True, True, (("m", 10_000), ("x", None))), Contribution(True, False, (("m", 20_000),)))
    assert agg.live == 1 and agg.summary() == [] and agg.page(None, 5, "m") == ["n1"] and agg.page(None, 5, "x") == []
