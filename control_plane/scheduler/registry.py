"""In-memory registry of nodes fed by advertisements: liveness, free-slot estimates, model and placement indexes."""

from __future__ import annotations

import enum
import heapq
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, NamedTuple

import msgspec

from control_plane.scheduler.aggregates import NOTHING, Contribution, RegistryAggregates
from control_plane.scheduler import capabilities
from control_plane.scheduler.placement import (
    DEFAULT_PRIOR_TPS,
    Score,
    known_tps,
    load_band,
    reliability_rank,
    tps_band,
)
from protocol.messages import Advertisement, GpuInfo, ModelInfo

NodeStatus = Literal["online", "draining", "offline"]
ModelHealth = Literal["ready", "loading", "unavailable"]

OFFLINE_AFTER_INTERVALS = 3
#: A silent node stays online at least this long. A dropped connection is caught at once by the server's
#: disconnect events; heartbeats only catch a node that is connected but hung, so a short interval must not turn
#: a control plane (or node) starved of CPU for a second into a node declared offline with its jobs re-placed.
MIN_OFFLINE_WINDOW_S = 5.0
RETENTION_S = 600.0
SUCCESS_ALPHA = 0.2  # weight of the newest outcome in the success-rate moving average
_DEFAULT_INTERVAL_S, _MIN_INTERVAL_S, _MAX_INTERVAL_S = 5.0, 0.1, 3600.0
#: Speed bands one trust tier down costs a node in placement (1.1 ** 8: it must be about 2.1x faster to win).
TIER_BANDS = 8

_Bucket = dict[str, None]  # node ids with one same score, in the order they got it (ties go to the first)


class Change(enum.IntFlag):
    """What an advertisement changed; truthy when queued jobs may now be placeable."""

    NONE = 0
    NEW = 1  # first advertisement from this node (or first since it was forgotten)
    ONLINE = 2  # an existing node started accepting jobs again (back from offline, draining or engine down)
    CAPACITY = 4  # more free slots than this replica estimated before
    MODELS = 8  # a model appeared or became loaded


class ModelSummary(NamedTuple):
    name: str
    nodes: int  # online nodes advertising it
    tokens_per_second: float | None  # mean over those with a measured figure; None when none has one


@dataclass(frozen=True, slots=True)
class NodeView:
    """A read-only snapshot of one node as this replica sees it."""

    node_id: str
    state: NodeStatus
    agent_version: str
    engine: str
    engine_version: str | None
    engine_ok: bool
    slots: int
    active_jobs: int  # as last advertised
    estimated_active: int  # advertised jobs not seen ending, plus this replica's offers not yet advertised
    free_slots: int  # estimated; 0 while marked full after an at_capacity rejection
    full: bool
    inflight: int  # jobs this replica has reserved on the node and not yet released
    models: Mapping[str, ModelInfo]
    gpus: tuple[GpuInfo, ...]
    labels: Mapping[str, str]
    interval_s: float
    last_seen: float  # on the registry's clock
    success_rate: float

    @property
    def accepting(self) -> bool:
        return self.state == "online" and self.engine_ok


def repeats(ad: Advertisement, before: Advertisement) -> bool:
    """`ad` is `before` again: equal in everything but its send time."""
    return msgspec.structs.replace(ad, sent_at=before.sent_at) == before


def _window(interval_s: float) -> float:
    """How long a node that advertises every `interval_s` may be silent before it counts as offline."""
    return max(OFFLINE_AFTER_INTERVALS * interval_s, MIN_OFFLINE_WINDOW_S)


class NodeBrief(NamedTuple):
    """What a list of nodes shows of one node, without NodeView's copies (see NodeRegistry.brief)."""

    state: NodeStatus
    ad: Advertisement  # as accepted (bounded by the registration); never modify it
    slots: int
    estimated_active: int
    last_seen: float  # on the registry's clock


@dataclass(slots=True, eq=False)
class _Node:
    node_id: str
    ad: Advertisement
    interval_s: float
    last_seen: float
    deadline: float  # silent until then -> offline
    indexed: dict[str, ModelInfo]  # what this node contributes to the model index (empty: serves nothing)
    models_sig: tuple[tuple[str, bool, int | None], ...]  # (model, loaded, tokens/sec band or None) of `indexed`
    offline: bool = False
    offline_since: float = 0.0
    drain_requested: bool = False
    full: bool = False
    unreachable: bool = False  # an offer found no agent listening: no offers until the next advertisement
    # Slot accounting by job id, exact whatever order reservations, ends and advertisements arrive in:
    # busy = (advertised jobs not seen ending) + (this replica's reservations the advertisement does not list).
    held: frozenset[str] = frozenset()  # the jobs the last advertisement listed (`running`)
    ended: set[str] = field(default_factory=set)  # jobs seen ending, kept while advertisements still list them
    # job id -> (attempt, admission number or 0 until the node's reply says, boot id, lease or "") of this
    # replica's offers not yet ended; an advertisement built after the admission that does not list the job ends it (an outcome
    # missed on core NATS, e.g. across a NATS restart, cannot hold the slot forever).
    mine: dict[str, tuple[int, int, str, str]] = field(default_factory=dict)
    held_live: int = 0  # |held - ended|
    extra: int = 0  # |mine - held|
    anon: int = 0  # a node that does not list its jobs: its advertised count beyond `mine`, less ends seen since
    success_rate: float = 1.0
    sig: tuple | None = None  # what the placement index holds for this node; None: not placed
    placed: list[_Bucket] = field(default_factory=list)  # the buckets holding it, one per model
    window: float | None = None  # the offline window whose watch queue holds it (None: in none, e.g. offline)
    contrib: Contribution = NOTHING  # what it adds to the registry's aggregates (see _account)

    @property
    def slots(self) -> int:
        return max(self.ad.slots, 0)

    @property
    def est_active(self) -> int:
        return self.held_live + self.extra + self.anon

    @property
    def inflight(self) -> int:
        return len(self.mine)

    @property
    def free(self) -> int:
        return 0 if self.full or self.unreachable else max(self.slots - self.est_active, 0)

    @property
    def draining(self) -> bool:
        return self.ad.state == "draining" or self.drain_requested

    def alive(self, now: float) -> bool:
        return not self.offline and now < self.deadline

    def accepting(self, now: float) -> bool:
        return self.alive(now) and self.ad.engine_ok and not self.draining


class _Ranking:
    """Placeable nodes grouped by score: a bucket per score and a heap of the scores that have a bucket."""

    __slots__ = ("keys", "buckets")

    def __init__(self) -> None:
        self.keys: list[Score] = []  # heap; a score is in it exactly when it has a bucket (maybe emptied)
        self.buckets: dict[Score, _Bucket] = {}

    def add(self, key: Score, node_id: str, live: int) -> _Bucket:
        bucket = self.buckets.get(key)
        if bucket is None:
            bucket = self.buckets[key] = {}
            heapq.heappush(self.keys, key)
        bucket[node_id] = None
        if len(self.keys) > 2 * live + 64:  # emptied buckets deep in the heap: sweep them
            self.buckets = {k: b for k, b in self.buckets.items() if b}
            self.keys = list(self.buckets)
            heapq.heapify(self.keys)
        return bucket


class _ModelIndex:
    """Per model: the nodes serving it, their placement rankings and the sum of measured tokens/sec."""

    __slots__ = ("nodes", "known", "unknown", "tps_milli", "tps_n")

    def __init__(self) -> None:
        self.nodes: set[str] = set()
        self.known = _Ranking()  # nodes with a measured tokens/sec: full score
        self.unknown = _Ranking()  # nodes without: score before the model's prior is applied
        self.tps_milli = 0
        self.tps_n = 0


def _milli(tps: float) -> int:
    return int(round(tps * 1000))


class NodeRegistry:
    """Every node this replica has heard from; pure and in memory (the caller feeds it and reads it)."""

    def __init__(self, *, now: Callable[[], float] = time.monotonic, retention_s: float = RETENTION_S) -> None:
        self._now = now
        self._retention_s = retention_s
        self._nodes: dict[str, _Node] = {}
        self._index: dict[str, _ModelIndex] = {}
        # Offline checks: per offline window, the live nodes in the order they were last heard, so in deadline
        # order; hearing a node moves it to the end (O(1)) and a check reads only the nodes now due. (A heap of
        # deadlines re-armed as nodes advertise costs about a microsecond per node per window, and those re-arms
        # bunch up: at 10,000 nodes, 2-5 ms sweeps for seconds on end, each a stall of every request.)
        self._watch: dict[float, OrderedDict[str, None]] = {}  # never an empty queue: at most one per live node
        self._forget_at: list[tuple[float, str]] = []  # (when, node id): checks of offline nodes to forget
        self._agg = RegistryAggregates()
        self._gone: dict[str, None] = {}  # marked offline for silence since the last expire(), and still offline
        self._trust: dict[str, tuple[int, bool]] = {}  # node id -> (trust tier, quarantined), from control_plane.trust
        self._measured: dict[str, dict[str, float]] = {}  # node id -> model -> tokens/sec the control plane measured
        self._claims: dict[str, dict[str, ModelInfo]] = {}  # node id -> models it claims, unverified: probes only

    # -- feeding ---------------------------------------------------------------------------------
    def observe(self, ad: Advertisement) -> Change:
        """Insert or update a node from its advertisement; the result says what became possible."""
        now = self._now()
        node = self._nodes.get(ad.node_id)
        if node is not None and self._repeats(node, ad, now):
            # The same advertisement again (only its send time differs) from a live node with nothing of this
            # replica's pending on it: only liveness moves (the full path below would change nothing else). The
            # node keeps its equal earlier advertisement object, so this one is freed once handled.
            node.last_seen = now
            # A live node is in the watch queue of its window, which a repeat (same interval) leaves unchanged.
            window = node.window
            node.deadline = now + window
            self._watch[window].move_to_end(ad.node_id)
            return Change.NONE
        interval = ad.interval_s if math.isfinite(ad.interval_s) and ad.interval_s > 0 else _DEFAULT_INTERVAL_S
        interval = min(max(interval, _MIN_INTERVAL_S), _MAX_INTERVAL_S)
        served = self._served(ad)
        change = Change.NONE
        if node is None:
            node = _Node(ad.node_id, ad, interval, now, now, {}, ())
            self._nodes[ad.node_id] = node
            self._agg.added(ad.node_id)
            change |= Change.NEW
            was_accepting, free_before, before = False, 0, {}
        else:
            was_accepting = node.accepting(now)
            free_before = node.free if was_accepting else 0
            before = node.indexed
            if node.offline:
                node.offline, node.drain_requested = False, False
                self._gone.pop(ad.node_id, None)  # back before the sweeper heard of the loss: no loss to report
        node.ad, node.interval_s, node.last_seen = ad, interval, now
        node.deadline = now + _window(interval)
        self._count_advertised(node, ad)
        node.full = node.unreachable = False
        if ad.state == "draining":
            node.drain_requested = False  # acknowledged: from now on the advertisement says
        self._set_served(node, served)
        self._heard(node)
        self._rerank(node)
        self._account(node)
        if node.accepting(now):
            if not was_accepting and not change & Change.NEW:
                change |= Change.ONLINE
            if node.free > free_before:
                change |= Change.CAPACITY
            if any(name not in before or (m.loaded and not before[name].loaded) for name, m in served.items()):
                change |= Change.MODELS
        return change

    @staticmethod
    def _repeats(node: _Node, ad: Advertisement, now: float) -> bool:
        """The advertisement equals the node's previous one apart from `sent_at`, and observing it fully could
        change nothing but liveness: the node is live (not offline, not past its deadline), not marked full or
        unreachable, no drain of ours awaits its acknowledgement, no offer or end of ours awaits an
        advertisement (`mine`, `ended` empty), and for a node that does not list its jobs no end was counted
        against its advertised count since."""
        before = node.ad
        return (not node.offline and now < node.deadline and not node.full and not node.unreachable
                and not node.drain_requested and not node.mine and not node.ended
                and (ad.running is not None or node.anon == max(ad.active_jobs, 0))
                and repeats(ad, before))

    def expire(self) -> list[str]:
        """Mark nodes silent for 3 of their intervals offline and return them (every node marked since the
        last call, also those a read marked); forget long-offline ones."""
        self._settle(self._now())
        gone, self._gone = self._gone, {}
        return list(gone)

    def _settle(self, now: float) -> None:
        """Apply the offline and forget checks that are due, so counts read now are exact (cheap when none is)."""
        nodes = self._nodes
        for queue in list(self._watch.values()):  # _unwatch drops a queue it empties
            while queue:
                node = nodes[next(iter(queue))]
                if node.deadline > now:
                    break  # the queue is in deadline order: nothing after it is due either
                self._unwatch(node)
                node_id = node.node_id
                node.offline, node.offline_since = True, now
                self._set_served(node, {})
                self._rerank(node)
                self._account(node)
                heapq.heappush(self._forget_at, (now + self._retention_s, node_id))
                self._gone[node_id] = None
        forget_at = self._forget_at
        while forget_at and forget_at[0][0] <= now:
            _, node_id = heapq.heappop(forget_at)
            node = nodes.get(node_id)
            if node is not None and node.offline and node.offline_since + self._retention_s <= now:
                self.forget(node_id)

    def mark_offline(self, node_id: str) -> bool:
        """The bus says the node's connection is gone: offline now, as if it had missed its heartbeats.
        False when the node is unknown or already offline. Its next advertisement brings it back."""
        node = self._nodes.get(node_id)
        if node is None or node.offline:
            return False
        now = self._now()
        node.offline, node.offline_since = True, now
        self._unwatch(node)
        self._set_served(node, {})
        self._rerank(node)
        self._account(node)
        heapq.heappush(self._forget_at, (now + self._retention_s, node_id))
        return True

    def forget(self, node_id: str) -> None:
        """Drop a node entirely (a forget check still queued for it finds it gone and is skipped)."""
        node = self._nodes.pop(node_id, None)
        self._gone.pop(node_id, None)
        if node is not None:
            self._unwatch(node)
            self._unplace(node)
            self._set_served(node, {})
            self._agg.apply(node_id, node.contrib, NOTHING)
            node.contrib = NOTHING
            self._agg.removed(node_id)
        self._claims.pop(node_id, None)

    def reserve(self, node_id: str, job_id: str, attempt: int = 1, lease: str = "") -> bool:
        """Count a job this replica is offering to the node until it is refused or seen ending. `lease` names the
        offer, so the end of another offer of the same attempt (one the node did not answer in time) is told apart."""
        node = self._nodes.get(node_id)
        if node is None:
            return False
        if job_id not in node.mine and job_id not in node.held:
            node.extra += 1
        node.mine[job_id] = (attempt, 0, node.ad.boot_id, lease)
        self._rerank(node)
        return True

    def accepted(self, node_id: str, job_id: str, attempt: int, admitted: int, boot_id: str | None = None) -> None:
        """The node accepted this replica's offer as its admission number `admitted` (from its reply)."""
        node = self._nodes.get(node_id)
        mine = node.mine.get(job_id) if node is not None else None
        if mine is not None and mine[0] == attempt and admitted > 0:
            node.mine[job_id] = (attempt, admitted, node.ad.boot_id if boot_id is None else boot_id, mine[3])

    def release(self, node_id: str, job_id: str, attempt: int | None = None, lease: str = "") -> bool:
        """An offer of this replica was not taken (refused, unanswered, never sent): drop its reservation.
        True when the node now has a free slot."""
        node = self._nodes.get(node_id)
        if node is None:
            return False
        self._unreserve(node, job_id, attempt, lease)
        node.full = False
        self._rerank(node)
        return node.accepting(self._now()) and node.free > 0

    def ended(self, node_id: str | None, job_id: str, attempt: int | None = None, lease: str = "") -> bool:
        """A job on the node ended (its outcome was seen, or it was lost), whoever placed it: its slot is free.
        Idempotent; True when the node now has a free slot. `attempt` and `lease` (when known) name the run."""
        node = self._nodes.get(node_id) if node_id else None
        if node is None:
            return False
        mine = node.mine.get(job_id)
        if mine is not None and not _same_run(mine, attempt, lease):
            return False  # another run's outcome (older attempt or offer): the job's id holds this node's slot again
        ours = self._unreserve(node, job_id, attempt, lease)
        if job_id in node.held:
            if job_id not in node.ended:
                node.ended.add(job_id)
                node.held_live -= 1
        elif node.ad.running is not None:
            node.ended.add(job_id)  # a later advertisement may still list it (outcome being stored): not busy
        elif not ours and node.anon > 0:
            node.anon -= 1
        node.full = False
        self._rerank(node)
        return node.accepting(self._now()) and node.free > 0

    def _unreserve(self, node: _Node, job_id: str, attempt: int | None, lease: str = "") -> bool:
        mine = node.mine.get(job_id)
        if mine is None or not _same_run(mine, attempt, lease):
            return False
        del node.mine[job_id]
        if job_id not in node.held:
            node.extra -= 1
        return True

    def _count_advertised(self, node: _Node, ad: Advertisement) -> None:
        """Start counting from what the node says it holds (ends seen before it still count as ended)."""
        if node.mine and ad.running is not None:
            listed = set(ad.running)
            for job_id, (_, admitted, boot_id, _) in list(node.mine.items()):
                if admitted and job_id not in listed and (boot_id != ad.boot_id or ad.admitted >= admitted):
                    del node.mine[job_id]  # accepted, then ended (or lost in a restart) before this advertisement
        if ad.running is None:  # assume it counts every offer made so far, like the jobs it lists would
            node.held = frozenset(node.mine)
            node.anon = max(ad.active_jobs - len(node.held), 0)
            node.ended.clear()
        else:
            node.held, node.anon = frozenset(ad.running), 0
            node.ended &= node.held
        node.held_live = len(node.held) - len(node.ended)
        node.extra = sum(1 for job_id in node.mine if job_id not in node.held)

    def mark_unreachable(self, node_id: str) -> None:
        """No agent listens for the node's assignments (no responders): no offers to it until it advertises again."""
        node = self._nodes.get(node_id)
        if node is not None and not node.unreachable:
            node.unreachable = True
            self._rerank(node)

    def mark_full(self, node_id: str) -> None:
        """The node refused a job at_capacity: give it no more until its next advertisement or a release."""
        node = self._nodes.get(node_id)
        if node is not None and not node.full:
            node.full = True
            self._rerank(node)

    def set_draining(self, node_id: str) -> None:
        """Stop placing on the node now (a drain was requested), before its advertisement says so."""
        node = self._nodes.get(node_id)
        if node is not None and not node.drain_requested:
            node.drain_requested = True
            self._rerank(node)
            self._account(node)

    def record_outcome(self, node_id: str, success: bool) -> None:
        """Fold one job outcome into the node's success rate (exponentially weighted)."""
        node = self._nodes.get(node_id)
        if node is not None:
            node.success_rate += SUCCESS_ALPHA * ((1.0 if success else 0.0) - node.success_rate)
            self._rerank(node)

    def set_trust(self, node_id: str, tier: int, quarantined: bool) -> None:
        """The node's standing from control_plane.trust: a tier down costs TIER_BANDS speed bands; a
        quarantined node is left out of placement (a job pinned to it waits)."""
        if self._trust.get(node_id, (0, False)) == (tier, quarantined):
            return
        self._trust[node_id] = (tier, quarantined)
        node = self._nodes.get(node_id)
        if node is not None:
            self._rerank(node)

    def set_claims(self, node_id: str, claims: Mapping[str, ModelInfo]) -> None:
        """Models the node advertises whose claim is not verified yet (control_plane/trust/claims.py): no user job
        may run them on it, only the probe that measures the claim (score_of with probe=True)."""
        if claims:
            self._claims[node_id] = dict(claims)
        else:
            self._claims.pop(node_id, None)

    def set_measured_tps(self, node_id: str, model: str, tps: float) -> None:
        """Tokens/sec the control plane measured on the node's finished jobs: placement uses it instead of
        the advertised figure (which is only a prior until the node has served the model)."""
        self._measured.setdefault(node_id, {})[model] = tps
        node = self._nodes.get(node_id)
        if node is not None and not node.offline and model in node.indexed:
            self._set_served(node, self._served(node.ad))
            self._rerank(node)
            self._account(node)

    def _served(self, ad: Advertisement) -> dict[str, ModelInfo]:
        """The models placement sees for an advertisement: measured speeds replace the advertised ones."""
        if not ad.engine_ok:
            return {}
        measured = self._measured.get(ad.node_id)
        if not measured:
            return {m.name: m for m in ad.models}
        return {m.name: m if (tps := measured.get(m.name)) is None else msgspec.structs.replace(m, tokens_per_second=tps)
                for m in ad.models}

    # -- reading ---------------------------------------------------------------------------------
    def get(self, node_id: str) -> NodeView | None:
        node = self._nodes.get(node_id)
        return None if node is None else self._view(node, self._now())

    def brief(self, node_id: str) -> NodeBrief | None:
        """The node's state, advertisement and figures for a list of nodes; cheaper than get()."""
        node = self._nodes.get(node_id)
        if node is None:
            return None
        state: NodeStatus = ("offline" if not node.alive(self._now()) else "draining" if node.draining
                             else "online")
        return NodeBrief(state, node.ad, node.slots, node.est_active, node.last_seen)

    def nodes(self) -> list[NodeView]:
        now = self._now()
        return [self._view(n, now) for n in self._nodes.values()]

    def __len__(self) -> int:
        return len(self._nodes)

    def online_count(self) -> int:
        """Nodes heard within their offline window (draining included); O(1) (kept by _account)."""
        self._settle(self._now())
        return self._agg.live

    def page_ids(self, after: str | None, limit: int, model: str | None = None) -> list[str]:
        """Up to `limit` node ids after `after` in id order (with `model`: live nodes serving it); no walk."""
        self._settle(self._now())
        return self._agg.page(after, limit, model)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def model_names(self) -> list[str]:
        """Models some live node (draining included) serves."""
        return sorted(name for name in self._index if self.has_model(name))

    def has_model(self, model: str) -> bool:
        """Some live node (online or draining, engine up) advertises the model."""
        idx = self._index.get(model)
        if idx is None:
            return False
        now, nodes = self._now(), self._nodes
        return any(nodes[n].alive(now) for n in idx.nodes)

    def accepting(self, model: str) -> bool:
        """Some live, non-draining node with its engine up advertises the model."""
        idx = self._index.get(model)
        if idx is None:
            return False
        now, nodes = self._now(), self._nodes
        return any(nodes[n].accepting(now) for n in idx.nodes)

    def capable(self, model: str, needs: Collection[str]) -> bool:
        """Some live, non-draining node with its engine up has the model with every capability in `needs`."""
        idx = self._index.get(model)
        if idx is None:
            return False
        now, nodes = self._now(), self._nodes
        return any(nodes[n].accepting(now) and capabilities.has(nodes[n].indexed[model], needs) for n in idx.nodes)

    def model_info(self, model: str) -> ModelInfo | None:
        """What an accepting node advertises for the model (a node with it loaded first); None when none serves it."""
        idx = self._index.get(model)
        if idx is None:
            return None
        now, nodes, found = self._now(), self._nodes, None
        for n in idx.nodes:
            if nodes[n].accepting(now):
                found = nodes[n].indexed[model]
                if found.loaded:
                    break
        return found

    def largest_context_below(self, model: str, tokens: int) -> int | None:
        """None when some accepting node's copy of the model may take `tokens` of prompt (context unknown or large
        enough); else the largest context any of them advertises. Stops at the first node that fits."""
        idx = self._index.get(model)
        if idx is None:
            return None
        now, nodes, largest = self._now(), self._nodes, None
        for n in idx.nodes:
            if nodes[n].accepting(now):
                context = nodes[n].indexed[model].context_length
                if context is None or context <= 0 or context >= tokens:
                    return None
                largest = context if largest is None else max(largest, context)
        return largest

    def capabilities_of(self, model: str) -> frozenset[str]:
        """Every capability some accepting node has for the model (empty when none serves it)."""
        idx = self._index.get(model)
        if idx is None:
            return frozenset()
        now, nodes, found = self._now(), self._nodes, set()
        for n in idx.nodes:
            if nodes[n].accepting(now):
                found |= capabilities.of(nodes[n].indexed[model])
        return frozenset(found)

    def model_health(self, model: str) -> ModelHealth:
        """ready: an accepting node has it loaded; loading: only on disk; else unavailable."""
        idx = self._index.get(model)
        if idx is None:
            return "unavailable"
        now, on_disk = self._now(), False
        for node_id in idx.nodes:
            node = self._nodes[node_id]
            if node.accepting(now):
                if node.indexed[model].loaded:
                    return "ready"
                on_disk = True
        return "loading" if on_disk else "unavailable"

    def models_summary(self) -> list[ModelSummary]:
        """Per model some online node serves: how many online nodes, and their mean measured tokens/sec.

        Kept up to date by every change (_account), so a read costs O(models), not O(nodes)."""
        self._settle(self._now())
        return [ModelSummary(name, count, tps) for name, count, tps in self._agg.summary()]

    def tps_prior(self, model: str) -> float:
        """Tokens/sec assumed for a node that has not measured the model: the mean of those that have."""
        idx = self._index.get(model)
        if idx is None or not idx.tps_n:
            return DEFAULT_PRIOR_TPS
        return idx.tps_milli / idx.tps_n / 1000

    # -- placement support (see placement.candidates) --------------------------------------------
    def score_of(self, node_id: str, model: str, *, probe: bool = False) -> Score | None:
        """The node's score for the model if it is alive, accepting and serves it (free slot not required);
        a quarantined node has none, except for a probe, which may also run a model the node claims unverified."""
        node = self._nodes.get(node_id)
        if node is None or not node.accepting(self._now()):
            return None
        info = node.indexed.get(model)
        if info is None and probe:  # a claim being measured: the probe is the measurement
            info = self._claims.get(node_id, {}).get(model)
        if info is None:
            return None
        tier, quarantined = self._trust.get(node_id, (0, False))
        if quarantined and not probe:
            return None
        tps = known_tps(info.tokens_per_second) or self.tps_prior(model)
        return Score(0 if info.loaded else 1,
                     load_band(node.est_active, node.slots) - tps_band(tps) + tier * TIER_BANDS,
                     reliability_rank(node.success_rate), node.est_active)

    def ranked(self, model: str, limit: int, exclude: Collection[str] = (),
               needs: Collection[str] = ()) -> list[tuple[Score, str]]:
        """The best `limit` placeable nodes for the model with their scores, best first, from the index;
        with `needs`, only nodes whose model has those capabilities."""
        idx = self._index.get(model)
        if idx is None or limit <= 0:
            return []
        now = self._now()
        best = self._top(idx.known, limit, exclude, now, model, needs)
        if idx.unknown.keys:
            shift = tps_band(self.tps_prior(model))
            best += [(s._replace(cost_band=s.cost_band - shift), n)
                     for s, n in self._top(idx.unknown, limit, exclude, now, model, needs)]
            best.sort(key=lambda found: found[0])
        return best[:limit]

    # -- internals -------------------------------------------------------------------------------
    def _top(self, ranking: _Ranking, limit: int, exclude: Collection[str], now: float, model: str = "",
             needs: Collection[str] = ()) -> list[tuple[Score, str]]:
        """The first `limit` live, not excluded nodes in score order; silent ones met on the way are unplaced."""
        keys, buckets, nodes = ranking.keys, ranking.buckets, self._nodes
        got: list[tuple[Score, str]] = []
        seen: list[Score] = []
        dead: list[_Node] = []
        while keys and len(got) < limit:
            key = heapq.heappop(keys)
            seen.append(key)
            for node_id in buckets[key]:
                node = nodes[node_id]
                if now >= node.deadline:
                    dead.append(node)  # silent past its deadline: its next advertisement places it again
                elif node_id not in exclude and (not needs or capabilities.has(node.indexed[model], needs)):
                    got.append((key, node_id))
                    if len(got) == limit:
                        break
        for node in dead:
            self._unplace(node)
        for key in seen:
            if buckets[key]:
                heapq.heappush(keys, key)
            else:
                del buckets[key]
        return got

    def _set_served(self, node: _Node, served: dict[str, ModelInfo]) -> None:
        """Move the node's contribution to the model index from what it served to `served`."""
        for name, info in node.indexed.items():
            idx = self._index[name]
            tps = known_tps(info.tokens_per_second)
            if tps is not None:
                idx.tps_milli -= _milli(tps)
                idx.tps_n -= 1
            if name not in served:
                idx.nodes.discard(node.node_id)
                if not idx.nodes:
                    del self._index[name]
        for name, info in served.items():
            idx = self._index.get(name)
            if idx is None:
                idx = self._index[name] = _ModelIndex()
            idx.nodes.add(node.node_id)
            tps = known_tps(info.tokens_per_second)
            if tps is not None:
                idx.tps_milli += _milli(tps)
                idx.tps_n += 1
        node.indexed = served
        node.models_sig = tuple((n, m.loaded, None if (t := known_tps(m.tokens_per_second)) is None else tps_band(t))
                                for n, m in served.items())

    def _rerank(self, node: _Node) -> None:
        """Move the node to the buckets matching its current score if what placement sees of it changed."""
        slots, active = node.slots, node.est_active
        tier, quarantined = self._trust.get(node.node_id, (0, False))
        placeable = (not node.offline and node.ad.engine_ok and not node.draining and not node.full
                     and not node.unreachable and active < slots and bool(node.indexed) and not quarantined)
        sig = (load_band(active, slots) + tier * TIER_BANDS, reliability_rank(node.success_rate), active,
               node.models_sig) if placeable else None
        if sig == node.sig:
            return
        self._unplace(node)
        if sig is None:
            return
        node.sig = sig
        lb, rel, _, models = sig
        node_id, placed = node.node_id, node.placed
        for name, loaded, band in models:
            idx = self._index[name]
            if band is None:
                placed.append(idx.unknown.add(Score(0 if loaded else 1, lb, rel, active), node_id, len(idx.nodes)))
            else:
                placed.append(idx.known.add(Score(0 if loaded else 1, lb - band, rel, active), node_id,
                                            len(idx.nodes)))

    def _unplace(self, node: _Node) -> None:
        for bucket in node.placed:
            bucket.pop(node.node_id, None)
        node.placed = []
        node.sig = None

    def _account(self, node: _Node) -> None:
        """Bring the node's share of the aggregates in line with its state (after any change to it)."""
        live = not node.offline  # after _settle, a node past its deadline is always marked offline
        accepting = live and node.ad.engine_ok and not node.draining
        indexed = node.indexed
        # Summaries show what nodes advertise; only placement swaps in the control plane's measurements.
        advertised = {m.name: m.tokens_per_second for m in node.ad.models if m.name in indexed} if indexed else {}
        models = tuple((name, _milli(tps) if tps is not None and tps > 0 and math.isfinite(tps) else None)
                       for name, tps in advertised.items())
        contrib = Contribution(live, accepting, models)
        if contrib != node.contrib:
            self._agg.apply(node.node_id, node.contrib, contrib)
            node.contrib = contrib

    def _heard(self, node: _Node) -> None:
        """Queue the node's offline check: last in its window's queue (its deadline is the latest there)."""
        window = _window(node.interval_s)
        if node.window != window:
            self._unwatch(node)
            node.window = window
            self._watch.setdefault(window, OrderedDict())[node.node_id] = None
        else:
            self._watch[window].move_to_end(node.node_id)

    def _unwatch(self, node: _Node) -> None:
        if node.window is not None:
            queue = self._watch[node.window]
            queue.pop(node.node_id, None)
            if not queue:
                # A node may advertise any interval: queues of windows nobody uses any more must not pile up
                # (each check reads every queue).
                del self._watch[node.window]
            node.window = None

    def _view(self, node: _Node, now: float) -> NodeView:
        ad = node.ad
        state: NodeStatus = "offline" if not node.alive(now) else "draining" if node.draining else "online"
        return NodeView(
            node_id=node.node_id, state=state, agent_version=ad.agent_version, engine=ad.engine,
            engine_version=ad.engine_version, engine_ok=ad.engine_ok, slots=node.slots,
            active_jobs=max(ad.active_jobs, 0), estimated_active=node.est_active, free_slots=node.free,
            full=node.full, inflight=node.inflight, models=MappingProxyType({m.name: m for m in ad.models}),
            gpus=ad.gpus, labels=MappingProxyType(dict(ad.labels)), interval_s=node.interval_s,
            last_seen=node.last_seen, success_rate=node.success_rate,
        )


def _same_run(mine: tuple[int, int, str, str], attempt: int | None, lease: str) -> bool:
    """A reservation (attempt, admitted, boot, lease) is the run named by attempt and lease (each when known)."""
    return (attempt is None or mine[0] == attempt) and (not lease or not mine[3] or mine[3] == lease)
