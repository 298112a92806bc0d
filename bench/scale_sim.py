"""A network of K simulated nodes in one process, and the benchmark that measures a control plane against it.

The simulator speaks only `protocol/` over real NATS and JetStream, as K distinct nodes: each advertises at
the real interval (spread evenly over it), answers its own assignment subject, streams token chunks and
publishes its outcome to JetStream like the node agent. The driver starts embedded NATS and PostgreSQL,
registers K nodes, runs one control plane (pinned to its own core when `taskset` exists) and the simulator
(on the other), and measures:

- job latency at concurrency 1 (`POST /v1/chat/completions`, non-streamed: one request per job);
- control-plane CPU while idle (K nodes advertising, no jobs), as a share of one core;
- after a control-plane restart, seconds until all K nodes are visible (`/readyz` nodes_online == K);
- `GET /api/v1/nodes?limit=100` latency.

Run:
    .venv/bin/python -m bench.scale_sim --nodes 1,1000,10000 --repeat 3 [--profile-dir /tmp/scale-prof]

The simulator alone (against any control plane; tokens file: one node token per line):
    .venv/bin/python -m bench.scale_sim sim --tokens-file tokens.txt --nats nats://... [--interval 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import protocol
from protocol import subjects
from protocol.identity import node_id_from_token

PY = sys.executable
MODEL = "sim:1b"


# -- the simulator ---------------------------------------------------------------------------------

def connect_options(nats_url: str, name: str) -> dict:
    """Every option of the simulator's NATS connection, from one place (credentials from the environment:
    INFERNET_SIM_NATS_CREDS, a creds file; INFERNET_SIM_NATS_USER/PASSWORD; INFERNET_SIM_NATS_TOKEN)."""
    options: dict = {"servers": [u.strip() for u in nats_url.split(",") if u.strip()], "name": name,
                     "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5,
                     "pending_size": 64 * 1024 * 1024}
    if creds := os.environ.get("INFERNET_SIM_NATS_CREDS"):
        options["user_credentials"] = creds
    if user := os.environ.get("INFERNET_SIM_NATS_USER"):
        options["user"], options["password"] = user, os.environ.get("INFERNET_SIM_NATS_PASSWORD", "")
    if token := os.environ.get("INFERNET_SIM_NATS_TOKEN"):
        options["token"] = token
    return options


@dataclass(slots=True)
class SimNode:
    node_id: str
    token: str
    slots: int
    tps: float
    boot_id: str = field(default_factory=lambda: secrets.token_hex(6))
    running: set = field(default_factory=set)  # job ids accepted whose outcome is not stored yet

    def advertisement(self, interval: float) -> protocol.Advertisement:
        return protocol.Advertisement(
            node_id=self.node_id, agent_version="0.1.0-sim", engine="ollama", engine_version="sim",
            state="online", slots=self.slots, active_jobs=len(self.running),
            models=(protocol.ModelInfo(name=MODEL, loaded=True, size_bytes=1 << 30, context_length=8192,
                                       tokens_per_second=self.tps),),
            labels={"sim": "1"}, boot_id=self.boot_id, running=tuple(self.running), interval_s=interval,
            sent_at=time.time())


class Simulator:
    """K nodes on one connection: advertisements spread over the interval, assignments answered per node."""

    def __init__(self, tokens: list[str], nats_url: str, *, interval: float, slots: int, tokens_per_job: int,
                 chunk_tokens: int, engine_ms: float = 1.0) -> None:
        self.nodes = [SimNode(node_id_from_token(t), t, slots, 30.0 + (i % 50)) for i, t in enumerate(tokens)]
        self.by_id = {n.node_id: n for n in self.nodes}
        self.nats_url = nats_url
        self.interval = interval
        self.tokens_per_job = tokens_per_job
        self.chunk_tokens = chunk_tokens
        self.engine_s = engine_ms / 1000
        self.sent = 0
        self.jobs = 0
        self._tasks: set[asyncio.Task] = set()

    async def run(self, ready: asyncio.Event | None = None) -> None:
        import nats

        self.nc = await nats.connect(**connect_options(self.nats_url, f"infernet-scale-sim x{len(self.nodes)}"))
        self.js = self.nc.jetstream()
        for node in self.nodes:
            await self.nc.subscribe(subjects.node_assign(node.node_id), cb=self._on_assign)
        await self.nc.flush()
        if ready is not None:
            ready.set()
        print(f"sim ready: {len(self.nodes)} nodes", flush=True)
        await self._advertise_forever()

    async def _advertise_forever(self) -> None:
        """Node i advertises at start + i * interval / K, then every interval: an even stream of messages."""
        k, start = len(self.nodes), time.monotonic()
        publish, encode = self.nc.publish, protocol.encode
        while True:
            due = int((time.monotonic() - start) / self.interval * k) + 1
            while self.sent < due:
                node = self.nodes[self.sent % k]
                await publish(subjects.node_advertise(node.node_id), encode(node.advertisement(self.interval)))
                self.sent += 1
            await asyncio.sleep(0.01)

    async def _on_assign(self, msg) -> None:
        try:
            a = protocol.decode(msg.data, protocol.Assignment)
        except protocol.DecodeError:
            return
        node = self.by_id.get(msg.subject.split(".")[3])
        accepted = node is not None and len(node.running) < node.slots and a.model == MODEL
        reply = protocol.AssignmentReply(job_id=a.job_id, attempt=a.attempt, accepted=accepted,
                                         node_id=node.node_id if node else "", reason=None if accepted else "at_capacity")
        if accepted:
            node.running.add(a.job_id)
            task = asyncio.create_task(self._run(node, a))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        await msg.respond(protocol.encode(reply))

    async def _run(self, node: SimNode, a: protocol.Assignment) -> None:
        """Stream the job's tokens (zero-latency engine) and store its result on JetStream."""
        started = time.monotonic()
        await asyncio.sleep(self.engine_s)  # the engine's time to the first token (a local double: about 1 ms)
        words = [f"w{i} " for i in range(min(self.tokens_per_job, a.params.max_tokens))]
        chunks = [("".join(words[i:i + self.chunk_tokens])) for i in range(0, len(words), self.chunk_tokens)]
        subject = subjects.node_job_tokens(node.node_id, a.job_id)
        for seq, text in enumerate(chunks, 1):
            await self.nc.publish(subject, protocol.encode(protocol.TokenChunk(a.job_id, a.attempt, seq, text,
                                                                               node.node_id, a.lease)))
        result = protocol.JobResult(
            job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=node.node_id, content="".join(words),
            usage=protocol.Usage(10, len(words), 10 + len(words)), chunks=len(chunks),
            timings=protocol.Timings(ttft_ms=0.1, duration_ms=(time.monotonic() - started) * 1000,
                                     tokens_per_second=node.tps))
        headers = {"Nats-Msg-Id": f"{a.job_id}:{a.attempt}:{a.lease}"}
        try:
            for _ in range(50):
                try:
                    await self.js.publish(subjects.node_job_result(node.node_id, a.job_id), protocol.encode(result),
                                          headers=headers,
                                          timeout=5)
                    break
                except Exception:
                    await asyncio.sleep(0.2)
        finally:
            node.running.discard(a.job_id)
            self.jobs += 1


def sim_main(args: argparse.Namespace) -> None:
    tokens = [t.strip() for t in Path(args.tokens_file).read_text().splitlines() if t.strip()]
    sim = Simulator(tokens, args.nats, interval=args.interval, slots=args.slots, tokens_per_job=args.tokens,
                    chunk_tokens=args.chunk_tokens, engine_ms=args.engine_ms)
    try:
        asyncio.run(sim.run())
    except KeyboardInterrupt:
        pass


# -- the driver ------------------------------------------------------------------------------------

def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))] if ordered else float("nan")


def register_nodes(db_url: str, k: int) -> list[str]:
    """K node registrations in one statement (the CLI does them one by one); returns their raw tokens."""
    import psycopg

    from control_plane.lib.ids import new_id, new_node_token, secret_hash

    ids = [new_id("node", 6) for _ in range(k)]
    tokens = [new_node_token(i) for i in ids]
    with psycopg.connect(db_url, autocommit=True) as conn:
        # models '{*}': the admin vouches for every model the simulated nodes claim (no probes to run)
        conn.execute("INSERT INTO nodes (id, name, token_hash, models) "
                     "SELECT *, '{*}'::text[] FROM unnest(%s::text[], %s::text[], %s::bytea[])",
                     (ids, [f"sim-{n}" for n in range(k)], [secret_hash(t) for t in tokens]))
    return tokens


def pin(core: int | None) -> list[str]:
    return ["taskset", "-c", str(core)] if core is not None and shutil.which("taskset") else []


class Stack:
    """Embedded NATS + PostgreSQL, K registered nodes, one control plane and the simulator, as processes."""

    def __init__(self, k: int, args: argparse.Namespace) -> None:
        self.k, self.args = k, args
        self.root = Path(tempfile.mkdtemp(prefix="infernet-scale-"))
        os.chmod(self.root, 0o755)
        self.procs: list[subprocess.Popen] = []
        self.logs = open(self.root / "processes.log", "ab")
        self.pg = None
        self.cp: subprocess.Popen | None = None

    def start(self) -> None:
        from bench.stack import _cli
        from control_plane.embedded import bus_env, free_port, start_nats, start_postgres

        nats_proc, self.nats_url = start_nats(self.root)
        self.procs.append(nats_proc)
        self.pg, self.db_url = start_postgres(self.root)
        # The simulator is K nodes on one connection, which no node identity may be: it logs in with the
        # control plane's identity (the bus is secured; see docs/architecture.md).
        bus = bus_env(self.root)
        self.env = dict(os.environ, **bus, INFERNET_SIM_NATS_USER=bus["INFERNET_NATS_USER"],
                        INFERNET_SIM_NATS_PASSWORD=bus["INFERNET_NATS_PASSWORD"],
                        INFERNET_DATABASE_URL=self.db_url, INFERNET_NATS_URL=self.nats_url,
                        INFERNET_LOG_LEVEL=os.environ.get("SCALE_SIM_LOG_LEVEL", "warning"), PYTHONUNBUFFERED="1", INFERNET_WARMUP_S="0",
                        INFERNET_RATE_LIMIT_RPM="0", INFERNET_RATE_LIMIT_TPM="0")
        _cli(self.env, "migrate")
        self.key = _cli(self.env, "keys", "create", "--account", "bench")
        tokens_file = self.root / "tokens.txt"
        tokens_file.write_text("\n".join(register_nodes(self.db_url, self.k)) + "\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.start_cp()
        sim = subprocess.Popen(
            [*pin(self.args.sim_core), PY, "-m", "bench.scale_sim", "sim", "--tokens-file", str(tokens_file),
             "--nats", self.nats_url, "--interval", str(self.args.interval), "--tokens", str(self.args.tokens)],
            env=self.env, stdout=self.logs, stderr=self.logs)
        self.procs.append(sim)

    def start_cp(self) -> None:
        from control_plane.embedded import wait_for_port

        self.cp = subprocess.Popen([*pin(self.args.cp_core), PY, "-m", "control_plane.cli", "serve"],
                                   env=dict(self.env, INFERNET_HTTP_PORT=str(self.port)),
                                   stdout=self.logs, stderr=self.logs)
        self.cp_started = time.monotonic()
        wait_for_port(self.port, proc=self.cp, timeout=120)

    def stop_cp(self) -> None:
        self.cp.send_signal(signal.SIGTERM)
        try:
            self.cp.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.cp.kill()
            self.cp.wait()

    def close(self) -> None:
        for p in [self.cp, *reversed(self.procs)]:
            if p is not None and p.poll() is None:
                p.terminate()
        for p in [self.cp, *self.procs]:
            if p is None:
                continue
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        if self.pg is not None:
            self.pg.cleanup()
        self.logs.close()
        if os.environ.get("SCALE_SIM_KEEP"):
            print(f"kept {self.root}")
        else:
            shutil.rmtree(self.root, ignore_errors=True)


async def online(client, stack: Stack) -> int:
    try:
        r = await client.get(f"{stack.url}/readyz")
        return int(r.json().get("nodes_online", 0)) if r.status_code == 200 else -1
    except Exception:
        return -1


async def wait_visible(client, stack: Stack, timeout: float) -> float | None:
    """Seconds from now until the control plane sees all K nodes (None: not within timeout)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if await online(client, stack) >= stack.k:
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    return None


def cpu_seconds(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def measure(stack: Stack, args: argparse.Namespace, run: int) -> dict:
    import httpx

    out: dict = {}
    auth = {"Authorization": f"Bearer {stack.key}"}
    async with httpx.AsyncClient(timeout=60) as client:
        if await wait_visible(client, stack, timeout=max(120, 4 * args.interval)) is None:
            raise RuntimeError(f"the control plane never saw all {stack.k} nodes")
        await asyncio.sleep(2 * args.interval)  # past the first node-row writes of a fresh start

        # Idle: K nodes advertising, no job.
        c0, t0 = cpu_seconds(stack.cp.pid), time.monotonic()
        spy = profile(stack, args, f"idle-{stack.k}", args.idle_secs) if run == 0 else None
        await asyncio.sleep(args.idle_secs)
        out["idle_cpu_pct"] = 100 * (cpu_seconds(stack.cp.pid) - c0) / (time.monotonic() - t0)
        if spy is not None:
            spy.wait(timeout=60)

        # GET /api/v1/nodes?limit=100, sequentially (the first call of a fresh process included).
        spy = profile(stack, args, f"list-{stack.k}", None, rate=1000) if run == 0 else None
        lat = []
        for _ in range(args.list_calls):
            t = time.perf_counter()
            r = await client.get(f"{stack.url}/api/v1/nodes", params={"limit": 100}, headers=auth)
            lat.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and len(r.json()["nodes"]) == min(100, stack.k), r.text[:300]
        if spy is not None:
            spy.send_signal(signal.SIGINT)  # py-spy writes what it sampled and exits
            spy.wait(timeout=60)
        out["nodes_list_ms"] = (pct(lat, 50), pct(lat, 99))
        out["nodes_list_slowest"] = [(round(ms, 2), i) for ms, i in sorted((ms, i) for i, ms in enumerate(lat))[-3:]]
        lat = []
        for _ in range(args.list_calls):  # the floor of an authenticated GET on the same machine, for scale
            t = time.perf_counter()
            r = await client.get(f"{stack.url}/api/v1/models", headers=auth)
            lat.append((time.perf_counter() - t) * 1000)
            assert r.status_code == 200 and r.json()["models"][0]["nodes"] == stack.k, r.text[:300]
        out["models_list_ms"] = (pct(lat, 50), pct(lat, 99))

        # Jobs at concurrency 1.
        body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 32}
        lat = []
        for i in range(args.warm_jobs + args.jobs):
            t = time.perf_counter()
            r = await client.post(f"{stack.url}/v1/chat/completions", json=body, headers=auth)
            took = (time.perf_counter() - t) * 1000
            assert r.status_code == 200, r.text[:300]
            if i >= args.warm_jobs:
                lat.append(took)
        out["job_ms"] = (pct(lat, 50), pct(lat, 99))
        out["job_slowest_ms"] = sorted(lat)[-3:]
        if os.environ.get("SCALE_SIM_DEBUG"):
            import psycopg
            with psycopg.connect(stack.db_url) as conn:
                for row in conn.execute("SELECT id, attempt, created_at, started_at, assigned_at, first_token_at, "
                                        "completed_at FROM jobs WHERE completed_at - created_at > interval '1 s'"):
                    print("slow job", row, flush=True)

        # Restart: stop the control plane, start it again; time until every node is visible.
        stack.stop_cp()
        stack.start_cp()
        spy = profile(stack, args, f"restart-{stack.k}", 2 * args.interval) if run == 0 else None
        seconds = await wait_visible(client, stack, timeout=max(120, 10 * args.interval))
        if spy is not None:
            spy.wait(timeout=60)
        out["restart_visible_s"] = seconds  # from the HTTP port answering
        out["restart_visible_from_spawn_s"] = None if seconds is None else time.monotonic() - stack.cp_started
    return out


def profile(stack: Stack, args: argparse.Namespace, name: str, seconds: float | None,
            rate: int = 100) -> subprocess.Popen | None:
    """py-spy on the control plane for `seconds` (None: until sent SIGINT), `rate` samples a second, as collapsed
    stacks (feed them to flamegraph.pl or speedscope)."""
    if not args.profile_dir:
        return None
    out = Path(args.profile_dir) / f"{name}.txt"
    duration = [] if seconds is None else ["-d", str(max(int(seconds), 1))]
    spy = subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "-p", str(stack.cp.pid), "-r", str(rate),
                            *duration, "--nonblocking", "-f", "raw", "-o", str(out)],
                           stdout=stack.logs, stderr=stack.logs)
    if seconds is None:
        time.sleep(1.0)  # py-spy attaches before the measured calls start
    return spy


def top_frames(path: Path, n: int = 14) -> list[tuple[str, float]]:
    """Infernet, NATS and PostgreSQL client functions with the largest inclusive share of a collapsed-stacks
    profile (the share of all samples, idle waiting in epoll included)."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        for frame in set(stack.split(";")):
            if any(part in frame for part in ("control_plane/", "nats/", "psycopg/", "litestar/", "selectors.py")) \
                    and "cli.py" not in frame:
                inclusive[frame] = inclusive.get(frame, 0) + int(count)
    ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])[:n]
    return [(frame, 100 * c / total) for frame, c in ranked] if total else []


def fmt(values: list[float], unit: str = "", digits: int = 1) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    med = statistics.median(values)
    return f"{med:.{digits}f}{unit} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def driver_main(args: argparse.Namespace) -> None:
    if args.profile_dir:
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    results = {}
    for k in (int(x) for x in args.nodes.split(",")):
        stack = Stack(k, args)
        runs = []
        try:
            stack.start()
            for run in range(args.repeat):
                runs.append(asyncio.run(measure(stack, args, run)))
                print(f"K={k} run {run + 1}: {json.dumps(runs[-1])}", flush=True)
        finally:
            stack.close()
        results[k] = runs
    if args.profile_dir:
        for path in sorted(Path(args.profile_dir).glob("*.txt")):
            print(f"\n{path.name}: functions by inclusive share of samples")
            for frame, share in top_frames(path):
                print(f"  {share:5.1f}%  {frame}")
    print(f"\nload average at the end: {os.getloadavg()}; median (min-max) over {args.repeat} runs")
    print("| nodes | job p50 c=1 | job p99 c=1 | CP idle CPU (% of a core) | all visible after restart | "
          "nodes?limit=100 p50 | p99 | models p50 |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for k, runs in results.items():
        print(f"| {k:,} | {fmt([r['job_ms'][0] for r in runs], ' ms')} | {fmt([r['job_ms'][1] for r in runs], ' ms')} "
              f"| {fmt([r['idle_cpu_pct'] for r in runs], '%')} | {fmt([r['restart_visible_s'] for r in runs], ' s', 2)} "
              f"| {fmt([r['nodes_list_ms'][0] for r in runs], ' ms', 2)} | {fmt([r['nodes_list_ms'][1] for r in runs], ' ms', 2)} "
              f"| {fmt([r['models_list_ms'][0] for r in runs], ' ms', 2)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd")
    sim = sub.add_parser("sim", help="run the simulated nodes only")
    sim.add_argument("--tokens-file", required=True)
    sim.add_argument("--nats", required=True)
    for p in (parser, sim):
        p.add_argument("--interval", type=float, default=5.0, help="advertisement interval (the default 5 s)")
        p.add_argument("--tokens", type=int, default=16, help="tokens per job")
    sim.add_argument("--slots", type=int, default=4)
    sim.add_argument("--chunk-tokens", type=int, default=4)
    sim.add_argument("--engine-ms", type=float, default=1.0, help="engine time before the first token")
    parser.add_argument("--nodes", default="1,1000,10000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2000,
                        help="measured jobs per run: the p99 of 2,000 is the 20th-slowest, of 300 the 3rd (noisy)")
    parser.add_argument("--warm-jobs", type=int, default=50)
    parser.add_argument("--list-calls", type=int, default=200)
    parser.add_argument("--idle-secs", type=float, default=30.0)
    parser.add_argument("--cp-core", type=int, default=0, help="core the control plane is pinned to (-1: none)")
    parser.add_argument("--sim-core", type=int, default=1, help="core of the simulator (-1: none)")
    parser.add_argument("--profile-dir", help="write py-spy flame graphs of the idle control plane here")
    args = parser.parse_args()
    if args.cmd == "sim":
        sim_main(args)
        return
    args.cp_core = None if args.cp_core < 0 else args.cp_core
    args.sim_core = None if args.sim_core < 0 else args.sim_core
    driver_main(args)


if __name__ == "__main__":
    main()
