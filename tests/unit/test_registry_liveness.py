"""The registry marks a node offline exactly when it has been silent for its offline window, whatever the mix of
intervals, repeats, interval changes and disconnects, and reports each such loss to expire() once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from control_plane.scheduler.registry import MIN_OFFLINE_WINDOW_S, OFFLINE_AFTER_INTERVALS, NodeRegistry
from protocol.messages import Advertisement, ModelInfo

NODES = [f"node_{i:02x}" for i in range(3)]
RETENTION_S = 100.0


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def ad(node_id: str, interval: float) -> Advertisement:
    # The same content every time for a given interval: a second one is a repeat (the registry's short path).
    return Advertisement(node_id=node_id, agent_version="1", engine="ollama", state="online", slots=2,
                         active_jobs=0, running=(), interval_s=interval, models=(ModelInfo(name="m"),))


operation = st.one_of(
    st.tuples(st.just("observe"), st.sampled_from(NODES), st.sampled_from([1.0, 1.0, 2.0, 5.0])),
    st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 1.0, 2.0, 4.9, 15.0, 150.0]), st.none()),
    st.tuples(st.just("disconnect"), st.sampled_from(NODES), st.none()),
    st.tuples(st.just("expire"), st.none(), st.none()),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(operation, max_size=60))
def test_a_node_is_offline_exactly_when_silent_for_its_window(ops) -> None:
    check(ops)


def test_a_repeat_puts_the_node_behind_those_heard_before_it() -> None:
    # node_00's repeat moves its deadline past node_01's: node_01's silence must still be seen first.
    check([("observe", "node_00", 1.0), ("advance", 0.5, None), ("observe", "node_01", 1.0),
           ("advance", 0.5, None), ("observe", "node_00", 1.0), ("advance", 4.9, None), ("expire", None, None)])


def test_a_node_changing_its_interval_is_checked_by_its_new_window() -> None:
    check([("observe", "node_00", 5.0), ("observe", "node_01", 1.0), ("advance", 1.0, None),
           ("observe", "node_00", 1.0), ("advance", 4.9, None), ("expire", None, None), ("advance", 1.0, None),
           ("expire", None, None), ("observe", "node_00", 5.0), ("advance", 14.9, None), ("expire", None, None)])


def check(ops) -> None:
    """Run the operations on a registry and on a model of it, comparing them after every step."""
    clock = Clock()
    reg = NodeRegistry(now=clock, retention_s=RETENTION_S)
    # The model: node -> (heard at, window, disconnected at or None); a node is offline from heard + window on.
    model: dict[str, tuple[float, float, float | None]] = {}
    noticed: dict[str, float] = {}  # node -> when the registry marked it offline (its retention counts from there)
    reported: set[str] = set()  # losses by silence expire() has returned since the node was last heard

    def offline(node: str) -> bool:
        heard, window, disconnected = model[node]
        return disconnected is not None or clock.t >= heard + window

    for kind, a, b in ops:
        if kind == "observe":
            reg.observe(ad(a, b))
            model[a] = (clock.t, max(OFFLINE_AFTER_INTERVALS * b, MIN_OFFLINE_WINDOW_S), None)
            noticed.pop(a, None)
            reported.discard(a)
        elif kind == "advance":
            clock.t += a
        elif kind == "disconnect":
            if reg.mark_offline(a):
                model[a] = (*model[a][:2], clock.t)
        else:
            due = {n for n in model if model[n][2] is None and offline(n)} - reported
            assert set(reg.expire()) == due
            reported |= due
        online = reg.online_count()  # reads settle every check that is due
        for node in list(model):
            if node in noticed and noticed[node] + RETENTION_S <= clock.t:
                assert reg.brief(node) is None, node  # forgotten a retention after it went offline
                del model[node], noticed[node]
                reported.discard(node)
                continue
            if offline(node):
                noticed.setdefault(node, clock.t)
            brief = reg.brief(node)
            assert brief is not None, node
            assert (brief.state == "offline") == offline(node), (node, clock.t, model[node])
        assert online == sum(not offline(n) for n in model)
        assert all(reg._watch.values())  # no queue of a window nobody uses is left to read on every check
