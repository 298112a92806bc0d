"""A repeated advertisement (only its send time differs) takes the registry's short path: it must leave the registry
exactly as the full path would, refresh the node's liveness, and never hide a change."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.scheduler.registry import Change, NodeRegistry
from protocol.messages import Advertisement, ModelInfo

NODES = ["node_a", "node_b"]
JOBS = ["job_1", "job_2", "job_3"]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FullPathRegistry(NodeRegistry):
    """The registry with the short path switched off: every advertisement is observed in full."""

    @staticmethod
    def _repeats(node, ad, now) -> bool:
        return False


def ad(node: str, *, sent_at: float = 1.0, running=(), active: int = 0, loaded: bool = True, state="online",
       engine_ok: bool = True, slots: int = 2, model: str = "m") -> Advertisement:
    return Advertisement(node_id=node, agent_version="1", engine="ollama", state=state, slots=slots,
                         active_jobs=active, engine_ok=engine_ok, running=running, admitted=1, boot_id="b",
                         models=(ModelInfo(name=model, loaded=loaded, tokens_per_second=20.0),),
                         interval_s=5.0, sent_at=sent_at)


# Few distinct advertisements, so most are repeats of the node's previous one with a new send time.
advertisement = st.builds(
    lambda node, running, loaded, state, anon, sent: ad(
        node, sent_at=sent, running=None if anon else running, active=len(running) if not anon else 1,
        loaded=loaded, state=state),
    st.sampled_from(NODES), st.sampled_from([(), ("job_1",), ("job_1", "job_2")]), st.booleans(),
    st.sampled_from(["online", "online", "draining"]), st.booleans(), st.floats(0, 1e6))
operation = st.one_of(
    st.tuples(st.just("observe"), advertisement),
    st.tuples(st.just("repeat"), st.tuples(st.sampled_from(NODES), st.floats(0, 1e6))),
    st.tuples(st.just("accepted"), st.tuples(st.sampled_from(NODES), st.sampled_from(JOBS))),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 4.0, 16.0])),
    st.tuples(st.just("expire"), st.none()),
    st.tuples(st.just("reserve"), st.tuples(st.sampled_from(NODES), st.sampled_from(JOBS))),
    st.tuples(st.just("ended"), st.tuples(st.sampled_from(NODES), st.sampled_from(JOBS))),
    st.tuples(st.just("release"), st.tuples(st.sampled_from(NODES), st.sampled_from(JOBS))),
    st.tuples(st.just("full"), st.sampled_from(NODES)),
    st.tuples(st.just("unreachable"), st.sampled_from(NODES)),
    st.tuples(st.just("drain"), st.sampled_from(NODES)),
    st.tuples(st.just("offline"), st.sampled_from(NODES)),
    st.tuples(st.just("outcome"), st.tuples(st.sampled_from(NODES), st.booleans())),
)


def apply(reg: NodeRegistry, kind: str, arg):
    if kind == "observe":
        return reg.observe(arg)
    if kind == "expire":
        return reg.expire()
    if kind == "accepted":
        return reg.accepted(arg[0], arg[1], 1, 1)
    if kind == "reserve":
        return reg.reserve(arg[0], arg[1])
    if kind == "ended":
        return reg.ended(arg[0], arg[1])
    if kind == "release":
        return reg.release(arg[0], arg[1])
    if kind == "full":
        return reg.mark_full(arg)
    if kind == "unreachable":
        return reg.mark_unreachable(arg)
    if kind == "drain":
        return reg.set_draining(arg)
    if kind == "offline":
        return reg.mark_offline(arg)
    return reg.record_outcome(*arg)


@settings(max_examples=400, deadline=None)
@given(st.lists(operation, max_size=40))
def test_a_repeated_advertisement_leaves_the_registry_as_the_full_path_would(ops) -> None:
    clock = Clock()
    fast, full = NodeRegistry(now=clock), FullPathRegistry(now=clock)
    last: dict[str, Advertisement] = {}
    for kind, arg in ops:
        if kind == "advance":
            clock.t += arg
            continue
        if kind == "repeat":  # the node's previous advertisement again, sent later
            if arg[0] not in last:
                continue
            kind, arg = "observe", msgspec.structs.replace(last[arg[0]], sent_at=arg[1])
        if kind == "observe":
            last[arg.node_id] = arg
        assert apply(fast, kind, arg) == apply(full, kind, arg), (kind, arg)
        assert fast.nodes() == full.nodes()
        assert fast.ranked("m", 10) == full.ranked("m", 10)
        assert fast.online_count() == full.online_count()
        assert fast.models_summary() == full.models_summary()
        assert fast.page_ids(None, 10, "m") == full.page_ids(None, 10, "m")


def test_a_repeated_advertisement_keeps_the_node_alive_and_takes_the_short_path(monkeypatch) -> None:
    clock = Clock()
    reg = NodeRegistry(now=clock)
    assert reg.observe(ad("node_a", sent_at=1.0)) & Change.NEW
    short = []
    repeats = NodeRegistry._repeats
    monkeypatch.setattr(NodeRegistry, "_repeats", staticmethod(lambda *a: short.append(repeats(*a)) or short[-1]))
    for i in range(2, 8):  # 6 intervals of 5 s: without the refreshes the node is offline after 3
        clock.t += 5.0
        assert reg.observe(ad("node_a", sent_at=float(i))) == Change.NONE
        assert reg.expire() == []
    assert short == [True] * 6
    view = reg.get("node_a")
    assert view.state == "online" and view.last_seen == clock.t
    assert reg.ranked("m", 1)[0][1] == "node_a"


def test_an_advertisement_that_changes_the_models_is_seen() -> None:
    clock = Clock()
    reg = NodeRegistry(now=clock)
    reg.observe(ad("node_a", sent_at=1.0, loaded=False))
    clock.t += 5.0
    assert reg.observe(ad("node_a", sent_at=2.0, loaded=True)) & Change.MODELS
    assert reg.get("node_a").models["m"].loaded
    clock.t += 5.0
    assert reg.observe(ad("node_a", sent_at=3.0, model="other")) & Change.MODELS
    assert list(reg.get("node_a").models) == ["other"]
    assert reg.ranked("m", 1) == [] and reg.ranked("other", 1)[0][1] == "node_a"


def test_a_repeat_after_the_node_went_offline_brings_it_back() -> None:
    clock = Clock()
    reg = NodeRegistry(now=clock)
    reg.observe(ad("node_a", sent_at=1.0))
    clock.t += 60.0
    assert reg.expire() == ["node_a"]
    assert reg.observe(ad("node_a", sent_at=2.0)) & Change.ONLINE
    assert reg.get("node_a").state == "online"
