"""An in-process Infernet for integration tests: control plane on a free port, node agents beside Ollama doubles."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn

from control_plane.accounts.service import create_key, ensure_account
from control_plane.app import create_app
from control_plane.nodes.service import register_node
from control_plane.runtime import Runtime
from control_plane.settings import Settings
from node_agent.agent import NodeAgent
from node_agent.engines.registry import create_engine
from node_agent.settings import NodeSettings
from tests.fixtures.nats import control_plane_settings
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import wait_until

FINAL = ("completed", "failed", "cancelled")


@dataclass
class RunningNode:
    agent: NodeAgent
    task: asyncio.Task
    name: str

    @property
    def node_id(self) -> str:
        return self.agent.node_id


@dataclass
class Stack:
    nats_url: str
    database_url: str
    overrides: dict[str, Any] = field(default_factory=dict)
    runtime: Runtime | None = None
    client: httpx.AsyncClient | None = None
    nodes: list[RunningNode] = field(default_factory=list)
    _server: uvicorn.Server | None = None
    _server_task: asyncio.Task | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http_port}"

    async def start(self) -> Stack:
        base = dict(database_url=self.database_url, nats_url=self.nats_url, http_port=free_port(),
                    log_format="console", log_level="warning", sweep_interval_s=0.2, claim_secs=3.0,
                    warmup_s=0.0, assign_timeout_s=2.0, default_max_wallclock_secs=60.0,
                    verify_rate=0.0)  # spot checks add jobs: only the tests about them turn them on
        base.update(control_plane_settings(self.nats_url))  # this replica's own bus identity
        base.update(self.overrides)
        self.settings = Settings(**base)
        self.runtime = await Runtime.start(self.settings)
        app = create_app(self.settings, runtime=self.runtime)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.settings.http_port,
                                                     log_level="warning", lifespan="on", loop="none",
                                                     # a client left streaming must not hold teardown forever
                                                     timeout_graceful_shutdown=5))
        self._server.capture_signals = _no_signals  # the test runner owns signals
        self._server_task = asyncio.create_task(self._server.serve())
        await wait_until(lambda: self._server.started, timeout=30, message="control plane HTTP did not start")
        self.client = httpx.AsyncClient(base_url=self.url, timeout=30)
        return self

    async def key(self, account: str = "alice", *, admin: bool = False) -> str:
        acct = await ensure_account(self.runtime.db, account)
        return (await create_key(self.runtime.db, acct["id"], admin=admin)).key

    async def add_node(self, engine_url: str, *, name: str = "node", slots: int = 1, interval: float = 0.5,
                       nats_url: str | None = None, operator: str | None = None,
                       models: tuple[str, ...] | None = ("*",), **settings: Any) -> RunningNode:
        """A node agent beside `engine_url`, registered as an admin who vouches for every model it serves
        (`models`; None: each model it claims is measured before it gets jobs, control_plane/trust/claims.py)."""
        operator_id = (await ensure_account(self.runtime.db, operator))["id"] if operator else None
        registered = await register_node(self.runtime.db, name, operator_id, models=models)
        node_settings = NodeSettings(nats_url=nats_url or self.nats_url, node_token=registered.token, engine_url=engine_url,
                                     max_concurrency=slots, advertise_interval_s=interval, log_format="console",
                                     log_level="warning", **settings)
        agent = NodeAgent(node_settings, create_engine(node_settings.engine, engine_url), node_id=registered.node_id)
        node = RunningNode(agent, asyncio.create_task(agent.run()), name)
        self.nodes.append(node)
        return node

    async def wait_nodes_serving(self, model: str, count: int = 1) -> None:
        await wait_until(
            lambda: sum(1 for n in self.runtime.registry.nodes() if n.accepting and model in n.models) >= count,
            timeout=30, message=f"{count} node(s) serving {model} never advertised")

    async def ready(self, double: Any, model: str, *, account: str = "alice", **node: Any) -> str:
        """The usual start of a test: a key of `account`, and a new node on `double` (`add_node`'s keywords)
        once some node serves `model`; returns the key."""
        key = await self.key(account)
        await self.add_node(double.url, **node)
        await self.wait_nodes_serving(model)
        return key

    async def occupy_one_slot(self, double: Any, model: str, **body: Any) -> tuple[str, str]:
        """A key and its job holding the only slot of a new node on `double` (which must stall that job), so
        the next job for `model` waits; returns (key, the busy job's id)."""
        key = await self.ready(double, model, slots=1)
        busy = (await self.submit(key, model=model, **body)).json()["id"]
        await double.wait_active(1)
        return key, busy

    def auth(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    async def submit(self, key: str, **body: Any) -> httpx.Response:
        body.setdefault("messages", [{"role": "user", "content": "Hello there"}])
        return await self.client.post("/api/v1/jobs", json=body, headers=self.auth(key))

    async def wait_job(self, key: str, job_id: str, statuses=FINAL, timeout: float = 30) -> dict:
        async def done():
            r = await self.client.get(f"/api/v1/jobs/{job_id}", headers=self.auth(key))
            body = r.json()
            return body if body.get("status") in statuses else None
        return await wait_until(done, timeout=timeout, message=f"job {job_id} never reached {statuses}")

    async def stop_node(self, node: RunningNode) -> None:
        node.agent.stop()
        await asyncio.gather(node.task, return_exceptions=True)

    async def stop(self) -> None:
        for node in self.nodes:
            await self.stop_node(node)
        if self.client is not None:
            await self.client.aclose()
        if self._server is not None:
            self._server.should_exit = True
            await asyncio.gather(self._server_task, return_exceptions=True)
        if self.runtime is not None:
            await self.runtime.stop()


def _no_signals():
    import contextlib

    return contextlib.nullcontext()
