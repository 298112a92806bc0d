"""Real-process building blocks for e2e tests: the CLIs, the Ollama double, and HTTP helpers."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fixtures.nats import REPLICA_IDENTITIES, control_plane_settings
from tests.fixtures.ports import free_port
from tests.fixtures.processes import ManagedProcess
from tests.fixtures.waiting import wait_until

PY = sys.executable
#: A node process gets none of the control plane's bus secrets (None removes a variable).
NODE_DROPS = {k: None for k in ("INFERNET_NATS_USER", "INFERNET_NATS_PASSWORD", "INFERNET_NATS_SYSTEM_USER",
                                "INFERNET_NATS_SYSTEM_PASSWORD", "INFERNET_NATS_AUTH_SEED")}
FINAL = ("completed", "failed", "cancelled")


def cli(*args: str, env: dict[str, str]) -> str:
    """Run `infernet-control-plane ARGS` to completion and return its stdout (stripped)."""
    out = subprocess.run([PY, "-m", "control_plane.cli", *args], env=env, capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(f"control-plane {' '.join(args)} failed ({out.returncode}): {out.stderr[-2000:]}")
    return out.stdout.strip()


@dataclass
class Cluster:
    """The pieces of one e2e deployment, started through the `processes` fixture."""

    processes: Any
    nats_url: str
    database_url: str
    base_env: dict[str, str] = field(default_factory=dict)
    control_planes: list[tuple[ManagedProcess, int]] = field(default_factory=list)

    def env(self, **extra: Any) -> dict[str, str]:
        import os

        env = dict(os.environ, INFERNET_DATABASE_URL=self.database_url, INFERNET_NATS_URL=self.nats_url,
                   INFERNET_LOG_FORMAT="json", INFERNET_LOG_LEVEL="info")
        bus = control_plane_settings(self.nats_url, replica=len(self.control_planes) % REPLICA_IDENTITIES)
        env.update({f"INFERNET_{k.upper()}": v for k, v in bus.items()})
        env.update(self.base_env)
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def key(self, account: str = "alice") -> str:
        return cli("keys", "create", "--account", account, env=self.env())

    def register_node(self, name: str, *models: str) -> str:
        """A node token; the admin vouches for `models` (default every model: '*'), so jobs need no measurement."""
        flags = [a for m in (models or ("*",)) for a in ("--model", m)]
        return cli("nodes", "register", name, *flags, env=self.env())

    def start_double(self, models: str = "qwen2.5:7b,llama3.2:3b", *extra: str, name: str = "ollama") -> tuple[ManagedProcess, str]:
        port = free_port()
        proc = self.processes.start([PY, "-m", "tests.doubles.ollama_double", "--port", str(port), "--models", models, *extra],
                                    name=name)
        proc.wait_for_log(r"ollama-double listening on", timeout=60)
        return proc, f"http://127.0.0.1:{port}"

    def start_control_plane(self, *, port: int | None = None, name: str = "cp", **env: Any) -> tuple[ManagedProcess, str]:
        port = port or free_port()
        settings = dict(INFERNET_HTTP_PORT=port, INFERNET_SWEEP_INTERVAL_S="0.2", INFERNET_CLAIM_SECS="3",
                        INFERNET_WARMUP_S="3", INFERNET_ASSIGN_TIMEOUT_S="2")
        settings.update(env)
        proc = self.processes.start([PY, "-m", "control_plane.cli", "serve"], env=self.env(**settings), name=name)
        proc.wait_for_port(port, timeout=60)
        self.control_planes.append((proc, port))
        return proc, f"http://127.0.0.1:{port}"

    def start_node(self, token: str, engine_url: str, *, name: str = "node", slots: int = 1, interval: float = 0.5,
                   **env: Any) -> ManagedProcess:
        proc = self.processes.start(
            [PY, "-m", "node_agent.cli", "start"],
            env={**self.env(INFERNET_NODE_TOKEN=token, OLLAMA_HOST=engine_url, INFERNET_MAX_CONCURRENCY=slots,
                            INFERNET_ADVERTISE_INTERVAL_S=interval, **env), **NODE_DROPS},
            name=name, stack_signal=signal.SIGUSR1,
        )
        proc.wait_for_log(r"node_started", timeout=60)
        return proc


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def node_id_of(token: str) -> str:
    from protocol.identity import node_id_from_token

    return node_id_from_token(token)


async def wait_model(client: httpx.AsyncClient, key: str, model: str, nodes: int = 1, timeout: float = 60) -> None:
    async def ready():
        r = await client.get("/api/v1/models", headers=auth(key))
        found = {m["id"]: m for m in r.json().get("models", [])} if r.status_code == 200 else {}
        return model in found and found[model]["nodes"] >= nodes
    await wait_until(ready, timeout=timeout, message=f"{nodes} node(s) with {model} never appeared in /api/v1/models")


async def wait_job(client: httpx.AsyncClient, key: str, job_id: str, statuses=FINAL, timeout: float = 60) -> dict:
    async def done():
        r = await client.get(f"/api/v1/jobs/{job_id}", headers=auth(key))
        body = r.json()
        return body if body.get("status") in statuses else None
    return await wait_until(done, timeout=timeout, message=f"job {job_id} never reached {statuses}")


async def wait_warm(client: httpx.AsyncClient, timeout: float = 60) -> None:
    """Wait until the control plane has heard nodes long enough to refuse unknown models (readyz registry=warm)."""
    async def warm():
        r = await client.get("/readyz")
        return r.status_code == 200 and r.json().get("registry") == "warm"
    await wait_until(warm, timeout=timeout, message="control plane registry never became warm")
