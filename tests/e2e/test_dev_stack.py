"""`infernet-control-plane dev` (what `make up` runs): embedded NATS + PostgreSQL, the API, a node; clean exit."""

from __future__ import annotations

import re
import signal
import sys

import httpx
import psutil

from tests.e2e.cluster import auth, wait_job, wait_model
from tests.fixtures.ports import free_port


async def test_dev_stack_runs_a_first_job_and_cleans_up_on_sigterm(processes, tmp_path):
    port, dport = free_port(), free_port()
    double = processes.start([sys.executable, "-m", "tests.doubles.ollama_double", "--port", str(dport),
                              "--models", "llama3.2:3b"], name="ollama")
    double.wait_for_log("listening", timeout=60)
    data = tmp_path / "data"
    dev = processes.start([sys.executable, "-m", "control_plane.cli", "dev", "--port", str(port), "--data-dir", str(data)],
                          env={"OLLAMA_HOST": f"http://127.0.0.1:{dport}", "INFERNET_NATS_URL": None,
                               "INFERNET_DATABASE_URL": None, "XDG_RUNTIME_DIR": None}, name="dev")
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

    dev.send_signal(signal.SIGTERM)
    assert await dev.wait_exit_async(timeout=60) == 0
    still = [p.pid for p in servers if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert still == [], f"embedded servers left running after dev exited: {still}"
    assert all(not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE for pid in children)
