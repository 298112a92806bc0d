"""Infernet vs. a LiteLLM proxy, side by side in one run, over the same Ollama double and load generator.

Run: .venv/bin/python -m bench.vs_litellm [--rounds 3] [--seconds 4] [--ttft 100] [--slots 1]

What it starts (all on this machine, loopback only): the Ollama double (tests/doubles/ollama_double.py, zero
delay, 16-token answers); Infernet as real processes (embedded NATS and PostgreSQL, one control plane, one
node agent on the double); and LiteLLM 1.80.0 as a proxy (1 worker, no database) on the same double. LiteLLM
is installed into its own throwaway virtualenv under the user's cache directory (reused on later runs; never a
dependency of Infernet). Both are driven by the same load generator: wrk when it is on PATH (Debian: `apt-get
install wrk`), else this module's own keep-alive HTTP client, used identically for every target.

Each round measures, for the double itself, LiteLLM and Infernet, non-streamed `/v1/chat/completions`
(`/api/chat` for the double) at concurrency 1 and 32, the CPU each process used during the c=32 run, and time
to first token of a streamed request (interleaved, httpx). The summary gives the median of the rounds and
their spread, and the ratios against the goals in docs/benchmarks.md. Every Infernet request is a persisted
job: at the end the run checks that PostgreSQL holds each one completed and charged exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.stack import bench_stack, percentile
from control_plane.embedded import free_port, wait_for_port

LITELLM_VERSION = "1.80.0"
MODEL = "bench:1b"
MESSAGES = [{"role": "user", "content": "Say hello"}]
TOKENS = 16
V1_BODY = {"model": MODEL, "messages": MESSAGES, "max_tokens": TOKENS}
DIRECT_BODY = {"model": MODEL, "messages": MESSAGES, "stream": False, "options": {"num_predict": TOKENS}}
TICK = os.sysconf("SC_CLK_TCK")

# Goals (docs/benchmarks.md, "Infernet vs. LiteLLM"): Infernet's figure against LiteLLM's in the same run.
GOALS = {
    "added_c1": ("c=1 p50 added over the engine", "<=", 0.4),
    "rate_c32": ("c=32 throughput, whole stack", ">=", 2.0),
    "cpu_per_req": ("CPU per request (proxy process vs control plane)", "<=", 1 / 3),
}


# -- LiteLLM in its own virtualenv ------------------------------------------------------------------------
def litellm_venv(path: Path | None) -> Path:
    """A virtualenv with litellm[proxy]==LITELLM_VERSION, created once and reused (marker file inside)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    venv = path or cache / "infernet-bench" / f"litellm-{LITELLM_VERSION}"
    marker = venv / ".infernet-bench-installed"
    if marker.exists():
        return venv
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {venv} (once; a few minutes)...", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    base = getattr(sys, "_base_executable", None) or shutil.which("python3") or sys.executable
    for step in ([base, "-m", "venv", str(venv)],
                 [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"]):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"cannot install LiteLLM ({' '.join(step)}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    marker.write_text(LITELLM_VERSION + "\n")
    return venv


LITELLM_CONFIG = """\
model_list:
  - model_name: {model}
    litellm_params:
      model: ollama_chat/{model}
      api_base: {api_base}
litellm_settings:
  telemetry: false
  drop_params: true
  set_verbose: false
general_settings:
  disable_spend_logs: true
"""


def start_litellm(venv: Path, api_base: str, root: Path, logs) -> tuple[subprocess.Popen, str]:
    config = root / "litellm.yaml"
    config.write_text(LITELLM_CONFIG.format(model=MODEL, api_base=api_base))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INFERNET_", "VIRTUAL_ENV", "PYTHON"))}
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False",
               DISABLE_ADMIN_UI="True", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([str(venv / "bin" / "litellm"), "--config", str(config), "--host", "127.0.0.1",
                             "--port", str(port), "--num_workers", "1", "--telemetry", "False"],
                            env=env, stdout=logs, stderr=logs, cwd=root, start_new_session=True)
    wait_for_port(port, timeout=180, proc=proc)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:  # the port opens before the router is ready: wait for one real completion
        try:
            r = httpx.post(f"{url}/v1/chat/completions", json=V1_BODY, timeout=30)
            if r.status_code == 200:
                return proc, url
            detail = f"{r.status_code} {r.text[:300]}"
        except httpx.HTTPError as exc:
            detail = str(exc)
        if time.monotonic() > deadline:
            raise RuntimeError(f"LiteLLM proxy never answered a completion: {detail}")
        time.sleep(0.5)


# -- process CPU -------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, utime + stime ticks) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[11]) + int(fields[12])


def tree_cpu_s(pid: int) -> float:
    """CPU seconds used so far by a process and all its live descendants."""
    parents: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                parents.setdefault(st[0], []).append(int(entry))
                ticks[int(entry)] = st[1]
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += ticks.get(p, 0)
        todo.extend(parents.get(p, ()))
    return total / TICK


def postmaster_pid(root: Path) -> int | None:
    for found in root.rglob("postmaster.pid"):
        return int(found.read_text().split()[0])
    return None


# -- load generators ----------------------------------------------------------------------------------------
@dataclass
class Load:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    errors: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


WRK_SCRIPT = """\
wrk.method = "POST"
wrk.body = [[{body}]]
wrk.headers["Content-Type"] = "application/json"
{auth}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {{\\"requests\\":%d,\\"duration_us\\":%d,\\"p50\\":%d,\\"p99\\":%d,\\"errors\\":%d}}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
"""


def wrk(url: str, path: str, body: dict, key: str | None, concurrency: int, seconds: float, root: Path) -> Load:
    script = root / f"wrk-{abs(hash((url, path)))}.lua"
    auth = f'wrk.headers["Authorization"] = "Bearer {key}"' if key else ""
    script.write_text(WRK_SCRIPT.format(body=json.dumps(body), auth=auth))
    threads = min(concurrency, 2)
    out = subprocess.run(["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--timeout", "30s",
                          "-s", str(script), url + path], capture_output=True, text=True, check=True).stdout
    data = json.loads(re.search(r"WRKJSON (\{.*\})", out).group(1))
    return Load(data["requests"], data["duration_us"] / 1e6, data["p50"] / 1000, data["p99"] / 1000, data["errors"])


async def _pyload(url: str, path: str, body: dict, key: str | None, concurrency: int, seconds: float) -> Load:
    """Keep-alive HTTP/1.1 POSTs over raw sockets (the fallback when wrk is not installed)."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n" + (f"Authorization: Bearer {key}\r\n" if key else "") + "\r\n")
    request = head.encode() + payload
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                writer.write(request)
                status = int((await reader.readline()).split()[1])
                length, chunked = 0, False
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode("latin-1").partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
                        chunked = True
                if chunked:
                    while (size := int((await reader.readline()).strip(), 16)):
                        await reader.readexactly(size + 2)
                    await reader.readline()
                else:
                    await reader.readexactly(length)
                latencies.append((time.perf_counter() - t0) * 1000)
                if status != 200:
                    errors += 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return Load(len(latencies), elapsed, percentile(latencies, 50), percentile(latencies, 99), errors)


def load(url: str, path: str, body: dict, key: str | None, concurrency: int, seconds: float, root: Path) -> Load:
    if shutil.which("wrk"):
        return wrk(url, path, body, key, concurrency, seconds, root)
    return asyncio.run(_pyload(url, path, body, key, concurrency, seconds))


# -- time to first token ---------------------------------------------------------------------------------
async def _first(client: httpx.AsyncClient, path: str, body: dict, marker: Callable[[str], bool]) -> float:
    t0 = time.perf_counter()
    first = None
    async with client.stream("POST", path, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"{path} answered {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if first is None and marker(line):
                first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError(f"{path}: no content in the stream")
    return first * 1000


def _ndjson_content(line: str) -> bool:
    return '"content":"' in line and '"content":""' not in line


def _sse_content(line: str) -> bool:
    return line.startswith("data: {") and re.search(r'"delta":\{[^}]*"content":"[^"]', line) is not None


async def ttft(targets: dict[str, tuple[str, str | None]], double_url: str, requests: int) -> dict[str, float]:
    """p50 time to the first content token per target (interleaved, concurrency 1, streamed)."""
    stream_v1 = dict(V1_BODY, stream=True)
    stream_direct = dict(DIRECT_BODY, stream=True)
    clients = {"engine": (httpx.AsyncClient(base_url=double_url, timeout=60), "/api/chat", stream_direct, _ndjson_content)}
    for name, (url, key) in targets.items():
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        clients[name] = (httpx.AsyncClient(base_url=url, headers=headers, timeout=60), "/v1/chat/completions",
                         stream_v1, _sse_content)
    results: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for i in range(requests + 10):
            for name, (client, path, body, marker) in clients.items():
                value = await _first(client, path, body, marker)
                if i >= 10:  # the first ones warm connections and caches
                    results[name].append(value)
    finally:
        for client, *_ in clients.values():
            await client.aclose()
    return {name: percentile(values, 50) for name, values in results.items()}


# -- one round ---------------------------------------------------------------------------------------------
@dataclass
class Round:
    figures: dict[str, float] = field(default_factory=dict)


def one_round(stack, litellm_url: str, litellm_pid: int, pg_pid: int | None, seconds: float, ttft_n: int,
              root: Path) -> Round:
    cp_pid = stack.procs[2].pid
    node_pid = next(iter(stack.node_procs.values())).pid
    nats_pid = stack.procs[0].pid
    double_pid = stack.procs[1].pid
    targets = {"litellm": (litellm_url, None), "infernet": (stack.url, stack.key)}
    f: dict[str, float] = {}
    # concurrency 1: the engine alone, then each gateway over it
    engine = load(stack.double_url, "/api/chat", DIRECT_BODY, None, 1, seconds, root)
    _check("engine", engine)
    f["engine_c1_p50"] = engine.p50_ms
    for name, (url, key) in targets.items():
        r = load(url, "/v1/chat/completions", V1_BODY, key, 1, seconds, root)
        _check(name, r)
        f[f"{name}_c1_p50"], f[f"{name}_c1_p99"] = r.p50_ms, r.p99_ms
        f[f"{name}_added_c1"] = r.p50_ms - engine.p50_ms
    # concurrency 32, with the CPU of every process involved
    watched = {"litellm": litellm_pid, "cp": cp_pid, "node": node_pid, "nats": nats_pid, "double": double_pid}
    if pg_pid:
        watched["pg"] = pg_pid
    for name, (url, key) in targets.items():
        before = {k: tree_cpu_s(pid) for k, pid in watched.items()}
        r = load(url, "/v1/chat/completions", V1_BODY, key, 32, seconds, root)
        used = {k: tree_cpu_s(pid) - before[k] for k, pid in watched.items()}
        _check(name, r)
        f[f"{name}_c32_rate"], f[f"{name}_c32_p50"] = r.rate, r.p50_ms
        for proc, cpu in used.items():
            f[f"{name}_cpu_{proc}_ms"] = cpu * 1000 / max(r.requests, 1)
        f[f"{name}_requests"] = r.requests
    f["litellm_cpu_per_req"] = f["litellm_cpu_litellm_ms"]
    f["infernet_cpu_per_req"] = f["infernet_cpu_cp_ms"]
    f["infernet_node_cpu_per_job"] = f["infernet_cpu_node_ms"]
    t = asyncio.run(ttft(targets, stack.double_url, ttft_n))
    f["engine_ttft"] = t["engine"]
    for name in targets:
        f[f"{name}_ttft"] = t[name]
        f[f"{name}_ttft_added"] = t[name] - t["engine"]
    return Round(f)


def _check(name: str, r: Load) -> None:
    if r.errors or not r.requests:
        raise RuntimeError(f"{name}: {r.errors} failed requests of {r.requests}")


# -- report ------------------------------------------------------------------------------------------------
def _med(rounds: list[Round], key: str) -> tuple[float, float, float]:
    values = [r.figures[key] for r in rounds]
    return statistics.median(values), min(values), max(values)


def _fmt(rounds: list[Round], key: str, unit: str, digits: int = 2) -> str:
    med, lo, hi = _med(rounds, key)
    if len(rounds) == 1:
        return f"{med:.{digits}f} {unit}"
    return f"{med:.{digits}f} {unit} ({lo:.{digits}f}-{hi:.{digits}f})"


def _ratio(rounds: list[Round], num: str, den: str) -> tuple[float, float, float]:
    values = [r.figures[num] / r.figures[den] for r in rounds]
    return statistics.median(values), min(values), max(values)


def report(rounds: list[Round], meta: dict) -> None:
    n = len(rounds)
    print()
    print(f"## Infernet vs. LiteLLM {LITELLM_VERSION}, same run, same double, same load generator ({meta['loadgen']})")
    print()
    print(f"{n} rounds of {meta['seconds']:g} s per load point, TTFT over {meta['ttft']} streamed requests per target; "
          f"figures are the median of the rounds (min-max). {meta['machine']}; Infernet node slots: {meta['slots']}.")
    print()
    print("| figure | engine (double) | LiteLLM | Infernet | Infernet / LiteLLM | goal | met |")
    print("| --- | --- | --- | --- | --- | --- | --- |")

    def row(label, eng, lite, inf, ratio_keys, goal_key):
        med, lo, hi = _ratio(rounds, *ratio_keys) if ratio_keys else (None, None, None)
        ratio = "" if med is None else (f"{med:.2f}x" + (f" ({lo:.2f}-{hi:.2f})" if n > 1 else ""))
        goal, met = "", ""
        if goal_key:
            _, op, target = GOALS[goal_key]
            goal = f"{op} {target:.2f}x"
            met = "yes" if (med <= target if op == "<=" else med >= target) else "no"
        print(f"| {label} | {eng} | {lite} | {inf} | {ratio} | {goal} | {met} |")

    row("/v1/chat/completions p50, c=1", _fmt(rounds, "engine_c1_p50", "ms"), _fmt(rounds, "litellm_c1_p50", "ms"),
        _fmt(rounds, "infernet_c1_p50", "ms"), None, None)
    row("  added over the engine, c=1", "", _fmt(rounds, "litellm_added_c1", "ms"),
        _fmt(rounds, "infernet_added_c1", "ms"), ("infernet_added_c1", "litellm_added_c1"), "added_c1")
    row("throughput, c=32, whole stack", "", _fmt(rounds, "litellm_c32_rate", "/s", 0),
        _fmt(rounds, "infernet_c32_rate", "/s", 0), ("infernet_c32_rate", "litellm_c32_rate"), "rate_c32")
    row("CPU per request: LiteLLM process / control plane", "", _fmt(rounds, "litellm_cpu_per_req", "ms"),
        _fmt(rounds, "infernet_cpu_per_req", "ms"), ("infernet_cpu_per_req", "litellm_cpu_per_req"), "cpu_per_req")
    med = _med(rounds, "infernet_node_cpu_per_job")[0]
    print(f"| node agent CPU per job | | n/a | {_fmt(rounds, 'infernet_node_cpu_per_job', 'ms')} | | <= 0.50 ms | "
          f"{'yes' if med <= 0.5 else 'no'} |")
    print(f"| time to first token, streamed, c=1 | {_fmt(rounds, 'engine_ttft', 'ms')} | "
          f"{_fmt(rounds, 'litellm_ttft', 'ms')} | {_fmt(rounds, 'infernet_ttft', 'ms')} | | | |")
    med = _med(rounds, "infernet_ttft_added")[0]
    print(f"|   TTFT added over the engine | | {_fmt(rounds, 'litellm_ttft_added', 'ms')} | "
          f"{_fmt(rounds, 'infernet_ttft_added', 'ms')} | | <= 2.00 ms | {'yes' if med <= 2.0 else 'no'} |")
    print()
    print("CPU per request during the c=32 runs, every process (ms; median of the rounds):")
    print()
    print("| target | LiteLLM | control plane | node agent | PostgreSQL | NATS | double | sum |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in ("litellm", "infernet"):
        cells = [statistics.median(r.figures.get(f"{name}_cpu_{p}_ms", 0.0) for r in rounds)
                 for p in ("litellm", "cp", "node", "pg", "nats", "double")]
        # Each target's row counts its own processes and the double; the other target's processes idle meanwhile.
        if name == "litellm":
            cells[1:5] = [0.0] * 4
        else:
            cells[0] = 0.0
        print(f"| {name} | " + " | ".join(f"{c:.2f}" if c else "" for c in cells) + f" | {sum(cells):.2f} |")
    print()
    print(f"Durability: {meta['persisted']}")


def check_persisted(database_url: str, expected_min: int) -> str:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        jobs = conn.execute("SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FROM jobs").fetchone()
        charges = conn.execute("SELECT count(*), count(DISTINCT job_id) FROM credit_ledger WHERE kind = 'charge'"
                               ).fetchone()
    completed, total = jobs
    ok = completed == total and charges[0] == charges[1] == completed and completed >= expected_min
    return (f"{completed} of {total} Infernet jobs completed in PostgreSQL (at least {expected_min} requests "
            f"were answered 200), {charges[0]} charge entries for {charges[1]} distinct jobs: "
            + ("every job persisted and charged exactly once." if ok else "MISMATCH"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4, help="duration of each load point")
    parser.add_argument("--ttft", type=int, default=100, help="streamed requests per target per round")
    parser.add_argument("--slots", type=int, default=1, help="the Infernet node's slots (INFERNET_MAX_CONCURRENCY)")
    parser.add_argument("--litellm-venv", type=Path, default=None)
    args = parser.parse_args()
    venv = litellm_venv(args.litellm_venv)
    root = Path(tempfile.mkdtemp(prefix="infernet-vs-litellm-"))
    logs = open(root / "litellm.log", "ab")
    loadgen = "wrk " + subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()[1] \
        if shutil.which("wrk") else "bench.vs_litellm's asyncio keep-alive client"
    load_avg = os.getloadavg()
    try:
        with bench_stack(nodes=1, slots=args.slots, double_args=("--token-count", str(TOKENS))) as stack:
            litellm, litellm_url = start_litellm(venv, stack.double_url, root, logs)
            try:
                pg_pid = postmaster_pid(stack.root)
                # warm-up: connection pools, caches, the first jobs' code paths
                for url, path, body, key in ((stack.double_url, "/api/chat", DIRECT_BODY, None),
                                             (litellm_url, "/v1/chat/completions", V1_BODY, None),
                                             (stack.url, "/v1/chat/completions", V1_BODY, stack.key)):
                    load(url, path, body, key, 8, 2, root)
                rounds = []
                for i in range(args.rounds):
                    r = one_round(stack, litellm_url, litellm.pid, pg_pid, args.seconds, args.ttft, root)
                    rounds.append(r)
                    f = r.figures
                    print(f"round {i + 1}: added c=1 LiteLLM {f['litellm_added_c1']:.2f} ms / Infernet "
                          f"{f['infernet_added_c1']:.2f} ms; c=32 {f['litellm_c32_rate']:.0f} / "
                          f"{f['infernet_c32_rate']:.0f} /s; CPU/req {f['litellm_cpu_per_req']:.2f} / "
                          f"{f['infernet_cpu_per_req']:.2f} ms; node {f['infernet_node_cpu_per_job']:.2f} ms/job; "
                          f"TTFT added {f['litellm_ttft_added']:.2f} / {f['infernet_ttft_added']:.2f} ms", flush=True)
                answered = sum(int(r.figures["infernet_requests"]) for r in rounds)
                persisted = check_persisted(stack.database_url, answered)
            finally:
                litellm.terminate()
                try:
                    litellm.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    litellm.kill()
    finally:
        logs.close()
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()
    machine = (f"{os.cpu_count()} cores, load average {load_avg[0]:.1f} before and {load_after[0]:.1f} after "
               f"(other work on the machine shows there)")
    report(rounds, {"loadgen": loadgen, "seconds": args.seconds, "ttft": args.ttft, "slots": args.slots,
                    "machine": machine, "persisted": persisted})


if __name__ == "__main__":
    main()
