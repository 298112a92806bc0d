"""`infernet-control-plane dev` (what `make up` runs): embedded NATS + PostgreSQL, the API, a node; the dev.env
it writes, which both CLIs read inside the project; the banner's second-node command; clean exit."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import stat
import sys
from pathlib import Path

import httpx
import psutil

from protocol.devenv import parse
from tests.e2e.cluster import auth, wait_job, wait_model
from tests.fixtures.ports import free_port

#: Nothing of the developer's (or the test run's) own Infernet settings: only what the project's dev.env says.
NO_INFERNET = {k: None for k in os.environ if k.startswith("INFERNET_")}
#: The CLIs as an operator has them after `pip install`: on PATH.
ON_PATH = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


async def test_dev_stack_runs_a_first_job_and_cleans_up_on_sigterm(processes, tmp_path):
    port, dport = free_port(), free_port()
    double = processes.start([sys.executable, "-m", "tests.doubles.ollama_double", "--port", str(dport),
                              "--models", "llama3.2:3b"], name="ollama")
    double.wait_for_log("listening", timeout=60)
    project = tmp_path / "project"  # `make up` in a checkout: the data directory is ./.infernet
    project.mkdir()
    data = project / ".infernet"
    dev = processes.start([sys.executable, "-m", "control_plane.cli", "dev", "--port", str(port)], cwd=project,
                          env={**NO_INFERNET, "OLLAMA_HOST": f"http://127.0.0.1:{dport}", "XDG_RUNTIME_DIR": None},
                          name="dev")
    banner = await dev.wait_for_log_async(r"API key \(admin, account \"dev\"\):\s+(inf_\w+)", timeout=120)
    key = banner.group(1)
    assert re.search(r"curl -s http://127\.0\.0\.1:\d+/api/v1/jobs", dev.log_text())
    assert "RuntimeDirWarning" not in dev.log_text() and "Warning" not in dev.log_text(), dev.log_text()
    children = {p.pid for p in psutil.Process(dev.pid).children(recursive=True)}
    servers = [p for p in psutil.process_iter(["pid", "cmdline"])
               if p.info["cmdline"] and str(data) in " ".join(p.info["cmdline"])]
    assert any("nats-server" in " ".join(p.info["cmdline"]) for p in servers)
    assert any("postgres" in " ".join(p.info["cmdline"]) for p in servers)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        await wait_model(client, key, "llama3.2:3b")
        r = await client.post("/api/v1/jobs", headers=auth(key),
                              json={"model": "llama3.2:3b", "messages": [{"role": "user", "content": "Hello!"}]})
        job = await wait_job(client, key, r.json()["id"])
    assert job["status"] == "completed" and job["result"]["content"]

    # The banner's console link signs the dev admin in, once.
    link = re.search(r"(http://127\.0\.0\.1:\d+/console/login/\S+)", dev.log_text()).group(1)
    async with httpx.AsyncClient(timeout=30) as browser:
        signed_in = await browser.get(link, follow_redirects=True)
        assert signed_in.status_code == 200 and "The network at a glance" in signed_in.text
        assert (await httpx.AsyncClient(timeout=30).get(link)).status_code == 400  # spent

    await second_node_from_the_banner(processes, dev, project, port, key, f"http://127.0.0.1:{dport}")

    dev.send_signal(signal.SIGTERM)
    assert await dev.wait_exit_async(timeout=60) == 0
    still = [p.pid for p in servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert still == [], f"embedded servers left running after dev exited: {still}"
    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in children)


async def in_project(project: Path, *argv: str, env: dict[str, str | None]) -> tuple[int, str, str]:
    """Run a command in the project directory the way a developer's shell would (no INFERNET_* exported)."""
    full = {k: v for k, v in os.environ.items() if v is not None}
    for k, v in env.items():
        if v is None:
            full.pop(k, None)
        else:
            full[k] = v
    proc = await asyncio.create_subprocess_exec(*argv, cwd=project, env=full, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode(), err.decode()


async def second_node_from_the_banner(processes, dev, project: Path, port: int, key: str, ollama: str) -> None:
    """.infernet/dev.env is private and complete; `nodes register` works inside the project with nothing
    exported; the banner's second-node command starts a node that serves a job pinned to it."""
    env_file = project / ".infernet" / "dev.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    values = parse(env_file.read_text())
    assert values["INFERNET_API_URL"] == f"http://127.0.0.1:{port}" and values["INFERNET_API_KEY"] == key
    assert values["INFERNET_NATS_URL"].startswith("nats://") and values["INFERNET_DATABASE_URL"].startswith("postgresql")
    assert values["INFERNET_NATS_USER"] and values["INFERNET_NATS_PASSWORD"] and values["INFERNET_NATS_AUTH_SEED"]

    code, out, err = await in_project(project, "infernet-control-plane", "nodes", "register", "gpu-box-2",
                                      env={**NO_INFERNET, **ON_PATH})
    assert code == 0 and re.fullmatch(r"infnode_\w+", out.strip()), (code, out, err)

    command = re.search(r"(infernet-node start --nats-url \S+(?: --engine \w+)? \\\n\s+--node-token "
                        r"\"\$\(infernet-control-plane nodes register gpu-box-2\)\")", dev.log_text())
    assert command, dev.log_text()
    node = processes.start(["bash", "-c", command.group(1)], cwd=project, name="gpu-box-2",
                           env={**NO_INFERNET, **ON_PATH, "OLLAMA_HOST": ollama})
    await node.wait_for_log_async("node_started", timeout=60)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        # Registered without --model: its model is served once a probe agreed with the dev stack's own node.
        await wait_model(client, key, "llama3.2:3b", nodes=2)
        assert "model_claim_verified" in dev.log_text()
        listed = (await client.get("/api/v1/nodes", headers=auth(key))).json()["nodes"]
        [second] = [n for n in listed if n["name"] == "gpu-box-2" and n["state"] == "online"]
        r = await client.post("/api/v1/jobs", headers=auth(key), json={
            "model": "llama3.2:3b", "node_id": second["id"], "messages": [{"role": "user", "content": "Hi!"}]})
        assert r.status_code in (200, 201, 202), r.text
        job = await wait_job(client, key, r.json()["id"])
    assert job["status"] == "completed" and job["node_id"] == second["id"] and job["result"]["content"], job
    node.send_signal(signal.SIGINT, group=True)  # bash and the agent it started
    await node.wait_exit_async(timeout=60)
