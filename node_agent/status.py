"""`infernet-node status`: what the node advertises now, from the running agent's /status or by probing the engine."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import msgspec

from node_agent import __version__
from node_agent.agent import model_allowed
from node_agent.engines.base import EngineError
from node_agent.engines.registry import engine_for
from node_agent.gpu import GpuProbe
from node_agent.settings import NodeSettings
from protocol.identity import node_id_from_token


async def fetch_running(settings: NodeSettings, timeout: float = 2.0) -> dict[str, Any] | None:
    """The running agent's /status (None when no agent answers on the metrics port)."""
    if not settings.metrics_port:
        return None
    host = "127.0.0.1" if settings.metrics_host in ("0.0.0.0", "", "::") else settings.metrics_host
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(f"http://{host}:{settings.metrics_port}/status")
            response.raise_for_status()
            body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    body["running"] = True
    return body


async def probe(settings: NodeSettings, *, gpu_probe: GpuProbe | None = None) -> dict[str, Any]:
    """What an agent with these settings would advertise, asked from the engine directly."""
    engine = engine_for(settings)
    models: list[dict[str, Any]] = []
    hidden: list[str] = []
    try:
        health = await asyncio.wait_for(engine.health(), timeout=30)
        detail = health.detail
        if health.ok:
            for m in await asyncio.wait_for(engine.list_models(), timeout=30):
                if model_allowed(m.name, settings.models_allow, settings.models_deny):
                    models.append({"name": m.name, "loaded": m.loaded, "size_bytes": m.size_bytes,
                                   "context_length": m.context_length, "tokens_per_second": None,
                                   "embeddings": m.embeddings})
                else:
                    hidden.append(m.name)
    except (EngineError, asyncio.TimeoutError) as exc:
        health, detail = None, str(exc) or type(exc).__name__
    finally:
        await engine.aclose()
    gpus = await asyncio.to_thread((gpu_probe or GpuProbe()).snapshot)
    return {
        "running": False,
        "node_id": node_id_from_token(settings.node_token or "") or None,
        "agent_version": __version__, "state": "not running",
        "engine": settings.engine, "engine_url": settings.engine_url,
        "engine_ok": bool(health and health.ok), "engine_version": health.version if health else None,
        "engine_detail": detail, "nats_url": settings.nats_url, "nats_connected": None,
        "slots": settings.max_concurrency, "active_jobs": 0, "jobs_served": None,
        "models": models, "hidden_models": hidden, "gpus": [msgspec.to_builtins(g) for g in gpus],
        "labels": settings.advertised_labels(),
    }


async def fetch_trust(api_url: str, api_key: str, node_id: str, timeout: float = 5.0) -> dict[str, Any] | str:
    """The node's reputation as the control plane judges it (the operator's API key), or why it is unknown."""
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.get(f"{api_url.rstrip('/')}/api/v1/nodes/{node_id}/trust",
                                        headers={"Authorization": f"Bearer {api_key}"})
    except httpx.HTTPError as exc:
        return f"control plane at {api_url} unreachable: {exc}"
    if response.status_code != 200:
        return f"control plane answered {response.status_code} (is INFERNET_API_KEY the operator's key?)"
    body = response.json()
    return body if isinstance(body, dict) else "unexpected answer from the control plane"


def _trust_line(trust: dict[str, Any] | str | None) -> str:
    if trust is None:
        return "trust     set INFERNET_API_URL and INFERNET_API_KEY (the operator's key) to see the reputation"
    if isinstance(trust, str):
        return f"trust     unknown: {trust}"
    flags = ", QUARANTINED (no user jobs until it recovers or an admin clears it)" if trust.get("quarantined") else ""
    flags += ", on probation" if trust.get("probation") else ""
    return (f"trust     reputation {trust.get('reputation')}{flags}; checks {trust.get('checks_passed')} passed / "
            f"{trust.get('checks_failed')} failed, probes {trust.get('probes_passed')} / {trust.get('probes_failed')}, "
            f"usage capped {trust.get('usage_capped')}, errors {trust.get('errors')}, "
            f"unanswered {trust.get('unanswered')}")


def _size(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def render(status: dict[str, Any]) -> str:
    """A few aligned lines for a human."""
    lines = []
    running = "running" if status.get("running") else "not running (probed the engine directly)"
    lines.append(f"node      {status.get('node_id') or '(no token)'}  {running}, state {status.get('state')}, "
                 f"agent {status.get('agent_version')}")
    engine_state = "ok" if status.get("engine_ok") else f"NOT REACHABLE: {status.get('engine_detail') or 'no answer'}"
    version = f" {status['engine_version']}" if status.get("engine_version") else ""
    lines.append(f"engine    {status.get('engine')}{version} at {status.get('engine_url') or '(bundled model)'}: "
                 f"{engine_state}")
    if status.get("running"):
        nats_state = "connected" if status.get("nats_connected") else "DISCONNECTED (reconnecting)"
        lines.append(f"nats      {status.get('nats_url')}: {nats_state}")
        outcomes = ", ".join(f"{v} {k}" for k, v in sorted((status.get("outcomes") or {}).items())) or "none yet"
        lines.append(f"slots     {status.get('active_jobs')}/{status.get('slots')} busy; "
                     f"{status.get('jobs_served')} jobs served ({outcomes}); "
                     f"{status.get('tokens_generated')} tokens generated")
    else:
        lines.append(f"slots     {status.get('slots')}")
    models = status.get("models") or []
    if not models:
        lines.append("models    none advertised")
    width = max((len(m["name"]) for m in models), default=0)
    for i, m in enumerate(models):
        tps = m.get("tokens_per_second")
        rate = f"{tps:.1f} tok/s" if tps else "tok/s unknown"
        ctx = f"ctx {m['context_length']}" if m.get("context_length") else ""
        kind = "embeddings" if m.get("embeddings") else ""
        state = "loaded" if m.get("loaded") else "on disk"
        lines.append(f"{'models' if i == 0 else '':<10}{m['name']:<{width}}  {state:<7}"
                     f"  {_size(m.get('size_bytes')):>7}  {rate:<14} {ctx} {kind}".rstrip())
    if status.get("hidden_models"):
        lines.append(f"hidden    {', '.join(status['hidden_models'])} (kept back by models_allow / models_deny)")
    gpus = status.get("gpus") or []
    if not gpus:
        lines.append("gpus      none: a CPU node")
    for i, g in enumerate(gpus):
        facts = [f"{g['vram_free_mb']}/{g['vram_total_mb']} MB free" if g.get("vram_total_mb") is not None else "",
                 f"{g['utilization_pct']:.0f}% busy" if g.get("utilization_pct") is not None else "",
                 f"{g['temperature_c']:.0f} C" if g.get("temperature_c") is not None else ""]
        lines.append(f"{'gpus' if i == 0 else '':<10}{g['name']}  {'  '.join(f for f in facts if f)}".rstrip())
    labels = status.get("labels") or {}
    lines.append("labels    " + (" ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"))
    if "trust" in status:
        lines.append(_trust_line(status["trust"]))
    lines.append("earnings  reported by the control plane (see docs/api.md)")
    return "\n".join(lines)
