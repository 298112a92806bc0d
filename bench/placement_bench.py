"""Placement latency: decisions over 1,000 and 10,000 simulated nodes, interleaved with reserve/release and heartbeats.

Run:  PYTHONPATH=. python bench/placement_bench.py [--decisions 20000] [--sizes 1000,10000] [--seed 1]
Prints p50/p99/max in microseconds for placement decisions, and for the registry updates around them.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import platform
import random
import statistics
import time
from dataclasses import dataclass

from control_plane.scheduler import NodeRegistry, placement
from protocol.messages import Advertisement, ModelInfo

MODELS = ("llama3.2:3b", "qwen2.5:7b", "mistral:7b", "phi3:mini", "gemma2:9b", "nomic-embed-text")
WEIGHTS = (40, 25, 15, 10, 7, 3)


@dataclass
class SimNode:
    """What a simulated node really runs; its heartbeats report it."""

    node_id: str
    slots: int
    models: dict[str, tuple[bool, float | None]]  # name -> (loaded, tokens/sec or unknown)
    state: str = "online"
    active: int = 0

    def advertisement(self) -> Advertisement:
        return Advertisement(
            node_id=self.node_id, agent_version="0.1.0", engine="ollama",
            state=self.state,  # type: ignore[arg-type]
            slots=self.slots, active_jobs=self.active, interval_s=5.0,
            models=tuple(ModelInfo(name=n, loaded=lo, tokens_per_second=t) for n, (lo, t) in self.models.items()),
        )


def build(n: int, rng: random.Random) -> list[SimNode]:
    nodes = []
    for i in range(n):
        # Every node has the most popular model, so a decision for it faces all n nodes.
        names = [MODELS[0], *rng.sample(MODELS[1:], rng.randint(0, 3))]
        models = {m: (rng.random() < 0.7, None if rng.random() < 0.15 else round(rng.uniform(8, 120), 1))
                  for m in names}
        node = SimNode(f"node-{i:05d}", rng.choice((1, 1, 2, 4, 8)), models,
                       state="draining" if rng.random() < 0.02 else "online")
        node.active = rng.randint(0, node.slots)
        nodes.append(node)
    return nodes


def pct(samples: list[int], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000


def line(label: str, samples: list[int]) -> str:
    return (f"  {label:<22} n={len(samples):>7}  p50={pct(samples, 0.50):8.1f} us  p99={pct(samples, 0.99):8.1f} us"
            f"  max={max(samples) / 1000:9.1f} us  mean={statistics.fmean(samples) / 1000:7.1f} us")


def run(n: int, decisions: int, seed: int, load: float, limit: int) -> None:
    rng = random.Random(seed)
    sims = build(n, rng)
    by_id = {s.node_id: s for s in sims}
    clock = [0.0]
    registry = NodeRegistry(now=lambda: clock[0])
    t0 = time.perf_counter()
    for s in sims:
        registry.observe(s.advertisement())
    build_s = time.perf_counter() - t0

    # Heartbeats: every node every 5 s; at ~600 decisions/s that is n/3000 ads per decision.
    ads_per_decision = n / (5.0 * 600)
    inflight: collections.deque[tuple[str, str]] = collections.deque()  # (node id, job id)
    jobs = itertools.count()
    # This replica's jobs fill `load` of the slots the other replicas' jobs (the initial active) leave free;
    # once there, every job placed lets the oldest one finish.
    target_inflight = int(sum(max(s.slots - s.active, 0) for s in sims) * load)
    silent = {s.node_id for s in rng.sample(sims, n // 100)}  # 1 % of nodes die: their heartbeats stop
    samples: dict[str, list[int]] = {"placement decision": [], "reserve": [], "release": [], "observe (heartbeat)": []}
    misses = 0
    ad_credit = 0.0
    cursor = 0
    perf = time.perf_counter_ns

    def timed(label: str, record: bool, fn, *args):
        start = perf()
        out = fn(*args)
        took = perf() - start
        if record:
            samples[label].append(took)
        return out

    def step(record: bool) -> bool:
        nonlocal misses, ad_credit, cursor
        clock[0] += 1 / 600
        model = rng.choices(MODELS, WEIGHTS)[0]
        exclude = {sims[rng.randrange(n)].node_id} if rng.random() < 0.05 else ()
        found = timed("placement decision", record, lambda: placement.candidates(
            registry, model, exclude=exclude, limit=limit))
        if found:
            node_id, job_id = found[0].node_id, f"job{next(jobs)}"
            timed("reserve", record, registry.reserve, node_id, job_id)
            sim = by_id[node_id]
            if sim.active >= sim.slots:  # the node answers at_capacity
                registry.release(node_id, job_id)
                registry.mark_full(node_id)
            else:
                sim.active += 1
                inflight.append((node_id, job_id))
        elif record:
            misses += 1
        while len(inflight) > target_inflight:
            node_id, job_id = inflight.popleft()
            by_id[node_id].active -= 1
            timed("release", record, registry.ended, node_id, job_id)
        ad_credit += ads_per_decision
        while ad_credit >= 1:
            ad_credit -= 1
            sim = sims[cursor % n]
            cursor += 1
            if sim.node_id in silent:
                continue
            if rng.random() < 0.01:  # a model gets loaded or evicted, its tokens/sec re-measured
                name = rng.choice(list(sim.models))
                loaded, tps = sim.models[name]
                sim.models[name] = (not loaded, tps if tps is None else round(tps * rng.uniform(0.8, 1.25), 1))
            timed("observe (heartbeat)", record, registry.observe, sim.advertisement())
        if int(clock[0] * 600) % 600 == 0:
            registry.expire()  # what the sweeper does every second
        return bool(found)

    warm = 0
    while warm < 2000 or (len(inflight) < target_inflight and warm < 4 * target_inflight):
        step(False)
        warm += 1
    for _ in range(decisions):
        step(True)
    offline = sum(1 for v in registry.nodes() if v.state == "offline")
    print(f"{n:,} nodes (registry built in {build_s * 1000:.0f} ms; {warm:,} warm-up decisions; "
          f"{len(inflight):,} of this replica's jobs running; {misses:,} decisions found no free slot; "
          f"{offline} nodes offline at the end)")
    for label, taken in samples.items():
        print(line(label, taken))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=20_000)
    parser.add_argument("--sizes", default="1000,10000")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--load", type=float, default=0.8, help="target share of all slots busy")
    parser.add_argument("--limit", type=int, default=1, help="candidates asked per decision (dispatcher: 1)")
    args = parser.parse_args()
    print(f"Python {platform.python_version()} on {platform.machine()}, {args.decisions:,} decisions per size, "
          f"load {args.load:.0%}, limit {args.limit}")
    for n in (int(x) for x in args.sizes.split(",")):
        run(n, args.decisions, args.seed, args.load, args.limit)


if __name__ == "__main__":
    main()
