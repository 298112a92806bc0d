"""Flame graphs of the job path: py-spy records the control plane and the node agent under /v1 load.

Run: .venv/bin/pip install py-spy   # a profiling tool, not a dependency of Infernet
     .venv/bin/python -m bench.profile_job_path [--seconds 8] [--concurrency 32] [--out docs/flamegraphs]

Starts the benchmark stack (embedded NATS and PostgreSQL, one control plane, one node agent, the Ollama double
at zero delay, 16-token answers), drives non-streamed `/v1/chat/completions` with wrk (or the asyncio client of
bench.vs_litellm), and records both processes at 250 Hz for the same seconds: `control-plane.svg` and
`node-agent.svg` in the output directory, plus the frames with the most samples printed here.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from bench.stack import bench_stack
from bench.vs_litellm import TOKENS, V1_BODY, load


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy is not installed: .venv/bin/pip install py-spy")
    return found


def _top(svg: Path, limit: int = 25) -> list[tuple[str, float]]:
    """The frames with the most samples (inclusive, largest instance of each) in a py-spy flame graph."""
    best: dict[str, float] = {}
    for match in re.finditer(r"<title>(.*?) \(([\d,]+) samples?, ([\d.]+)%\)</title>", svg.read_text()):
        name = html.unescape(match.group(1))
        best[name] = max(best.get(name, 0.0), float(match.group(3)))
    return sorted(best.items(), key=lambda item: -item[1])[:limit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--out", type=Path, default=Path("docs/flamegraphs"))
    args = parser.parse_args()
    spy = _py_spy()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="infernet-profile-"))
    try:
        with bench_stack(nodes=1, slots=args.slots, double_args=("--token-count", str(TOKENS))) as stack:
            load(stack.url, "/v1/chat/completions", V1_BODY, stack.key, 8, 2, work)  # warm-up
            targets = {"control-plane": stack.procs[2].pid, "node-agent": next(iter(stack.node_procs.values())).pid}
            spies = []
            for name, pid in targets.items():
                spies.append(subprocess.Popen(
                    [spy, "record", "--pid", str(pid), "--rate", "250", "--duration", str(args.seconds),
                     "--format", "flamegraph", "--output", str(args.out / f"{name}.svg"), "--nonblocking"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            result = {}
            runner = threading.Thread(target=lambda: result.setdefault(
                "load", load(stack.url, "/v1/chat/completions", V1_BODY, stack.key, args.concurrency, args.seconds,
                             work)))
            runner.start()
            runner.join()
            for spy_proc in spies:
                spy_proc.wait(timeout=60)
            r = result["load"]
            print(f"/v1/chat/completions at c={args.concurrency}: {r.rate:.0f} /s, p50 {r.p50_ms:.1f} ms, "
                  f"{r.errors} errors")
            for name in targets:
                print(f"\n{name}: frames with the most samples (inclusive) -> {args.out / (name + '.svg')}")
                for fn, pct in _top(args.out / f"{name}.svg"):
                    print(f"  {pct:5.1f}%  {fn}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
