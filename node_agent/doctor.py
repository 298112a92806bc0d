"""`infernet-node doctor`: checks everything a node needs, each with ok/FAIL and the fix; non-zero exit on a failure.

Checks: node token, engine (reachable, version), models, GPU, NATS (connect as this node: address, TLS, token
accepted by the bus), control plane (answers this node, can record results), control plane HTTP and clock skew.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import nats
import nats.errors

import protocol
from node_agent.agent import model_allowed
from node_agent.bus import connect_options
from node_agent.engines.base import EngineError
from node_agent.engines.registry import engine_for
from node_agent.gpu import GpuProbe
from node_agent.settings import NodeSettings
from protocol import subjects
from protocol.identity import node_id_from_token

#: Clock difference with the control plane beyond which job deadlines misfire.
MAX_SKEW_S = 5.0

OK, FAIL, SKIP = "ok", "FAIL", "skip"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"[{self.status:>4}] {self.name:<14} {self.detail}"
        if self.fix and self.status == FAIL:
            text += f"\n{'':>22}fix: {self.fix}"
        return text


_ENGINE_FIX = {
    "ollama": "start Ollama ('ollama serve' or 'systemctl start ollama') or point OLLAMA_HOST / "
              "INFERNET_ENGINE_URL at it",
    "openai": "start the server (e.g. 'vllm serve MODEL') and set INFERNET_ENGINE_URL to its base URL "
              "(http://HOST:PORT/v1)",
    "llamacpp": "pip install 'infernet[llama]' (builds llama.cpp; minutes), or set INFERNET_ENGINE_URL to a .gguf file",
}


def check_token(settings: NodeSettings) -> Check:
    token = settings.node_token
    if not token:
        return Check("node token", FAIL, "no node token configured",
                     "run 'infernet-control-plane nodes register NAME' on the control plane and put the printed "
                     "token in node_token (config) or INFERNET_NODE_TOKEN")
    node_id = node_id_from_token(token)
    if node_id is None:
        return Check("node token", FAIL, "the token is malformed (expected infnode_<id>_<secret>)",
                     "copy the token exactly as 'nodes register' printed it, or register the node again")
    return Check("node token", OK, f"well-formed; this is node {node_id}")


async def check_engine(settings: NodeSettings) -> list[Check]:
    """Engine reachability and version, then the models it would advertise."""
    engine = engine_for(settings)
    fix = _ENGINE_FIX.get(settings.engine, "start the engine and check INFERNET_ENGINE_URL")
    where = settings.engine_url or "(bundled model)"
    try:
        health = await asyncio.wait_for(engine.health(), timeout=30)
        if not health.ok:
            return [Check("engine", FAIL, f"{settings.engine} at {where}: {health.detail}", fix),
                    Check("models", SKIP, "engine not reachable")]
        checks = [Check("engine", OK, f"{settings.engine} {health.version or '(version unknown)'} at {where}")]
        models = list(await asyncio.wait_for(engine.list_models(), timeout=30))
    except (EngineError, asyncio.TimeoutError) as exc:
        return [Check("engine", FAIL, f"{settings.engine} at {where}: {str(exc) or type(exc).__name__}", fix)]
    finally:
        await engine.aclose()
    shown = [m for m in models if model_allowed(m.name, settings.models_allow, settings.models_deny)]
    if shown:
        loaded = sum(1 for m in shown if m.loaded)
        names = ", ".join(m.name for m in shown[:8]) + (" ..." if len(shown) > 8 else "")
        checks.append(Check("models", OK, f"{len(shown)} advertised ({loaded} loaded): {names}"))
    elif models:
        checks.append(Check("models", FAIL, f"the engine has {len(models)} model(s) but models_allow/models_deny "
                                            "hide all of them", "loosen models_allow / models_deny in the config"))
    else:
        pull = "'ollama pull llama3.2'" if settings.engine == "ollama" else "load a model into the engine"
        checks.append(Check("models", FAIL, "the engine has no models", f"{pull}; the node advertises none until then"))
    return checks


def check_gpu(probe: GpuProbe | None = None) -> Check:
    probe = probe or GpuProbe()
    try:
        gpus = probe.snapshot()
    finally:
        probe.close()
    if not gpus:
        return Check("gpu", OK, f"none: a CPU node ({probe.reason or 'no NVIDIA GPU'})")
    names = ", ".join(f"{g.name} ({g.vram_total_mb} MB)" if g.vram_total_mb else g.name for g in gpus)
    return Check("gpu", OK, f"{len(gpus)} NVIDIA GPU(s): {names}")


def _classify(reason: str, elapsed: float, settings: NodeSettings) -> Check:
    """The real cause of a failed bus connection, and what to do about it."""
    low = reason.lower()
    if "certificate" in low or "ssl" in low or "tls" in low or "wrong version number" in low:
        return Check("nats", FAIL, f"TLS with {settings.nats_url} failed: {reason}",
                     "set nats_tls_ca (INFERNET_NATS_TLS_CA) to the CA file the control plane's operator gives "
                     "you, and use the host name the server certificate names in INFERNET_NATS_URL")
    if "authorization" in low or "authentication" in low:
        if elapsed >= AUTH_SLOW_S:
            return Check("nats", FAIL, f"{settings.nats_url} answered, but no control plane checked this node's "
                                       f"token in time ({reason})",
                         "start a control plane on this NATS ('infernet-control-plane serve'); it authenticates "
                         "nodes")
        return Check("nats", FAIL, f"the bus at {settings.nats_url} refused this node's token ({reason}): it is "
                                   "not a token the control plane issued, or the node was revoked",
                     "compare the token with what 'infernet-control-plane nodes register' printed (node_token in "
                     "the config or INFERNET_NODE_TOKEN); if it matches, the network's admin revoked this node")
    return Check("nats", FAIL, f"cannot connect to {settings.nats_url}: {reason}",
                 "check INFERNET_NATS_URL (nats://HOST:4222 or tls://HOST:4222), that the control plane's NATS "
                 "runs, and that a firewall lets this machine reach it")


#: A refusal that took this long came from the server's auth timeout: nobody answered the auth callout.
AUTH_SLOW_S = 1.5


async def check_nats(settings: NodeSettings, timeout: float = 5.0) -> list[Check]:
    """Connect once as this node (its token is its credential), then ask the control plane how it sees us."""
    node_id = node_id_from_token(settings.node_token or "")
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc) or type(exc).__name__)

    started = time.monotonic()
    try:
        nc = await asyncio.wait_for(nats.connect(**connect_options(settings, node_id or "doctor"), allow_reconnect=False,
                                                 connect_timeout=timeout, max_reconnect_attempts=0,
                                                 error_cb=on_error), timeout=timeout + 1)
    except (Exception, asyncio.TimeoutError) as exc:
        reason = errors[-1] if errors else (str(exc) or type(exc).__name__)
        return [_classify(reason, time.monotonic() - started, settings),
                Check("control plane", SKIP, "not connected to the bus")]
    try:
        version = nc.connected_server_version
        checks = [Check("nats", OK, f"connected to {settings.nats_url} as {node_id} (nats-server {version}, "
                                    f"{'TLS' if settings.nats_tls_ca or 'tls://' in settings.nats_url else 'no TLS'})")]
        checks.extend(await check_token_accepted(settings, nc, timeout))
    finally:
        await nc.close()
    return checks


async def check_token_accepted(settings: NodeSettings, nc, timeout: float = 5.0) -> list[Check]:
    """Ask a control plane over the node's own verify subject how it sees this node; the reply carries its clock
    and whether it can record results."""
    node_id = node_id_from_token(settings.node_token or "")
    if node_id is None:
        return [Check("token accepted", SKIP, "no well-formed node token to check")]
    request = protocol.NodeVerify(node_id=node_id, sent_at=time.time())
    try:
        sent = time.time()
        msg = await nc.request(subjects.node_verify(node_id), protocol.encode(request), timeout=timeout)
        received = time.time()
        reply = protocol.decode(msg.data, protocol.NodeVerifyReply)
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError, asyncio.TimeoutError):
        return [Check("control plane", FAIL, "no control plane answered on this NATS",
                      "start the control plane ('infernet-control-plane serve') on the same NATS")]
    except protocol.DecodeError as exc:
        return [Check("control plane", FAIL, f"unreadable reply: {exc}", "upgrade the node agent or control plane")]
    checks = [Check("control plane", OK if reply.results_ready else FAIL,
                    "ready to record results" if reply.results_ready else "answers, but cannot record results now",
                    "the control plane is recreating its results stream; check its logs and JetStream health")]
    if not reply.accepted:
        return checks + [Check("token accepted", FAIL, reply.reason or "the control plane refused this node",
                               "register the node ('infernet-control-plane nodes register NAME') and use the "
                               "printed token")]
    skew = (sent + received) / 2 - reply.server_time
    return checks + [
        Check("token accepted", OK, f"the control plane knows this node as {reply.name!r}"),
        Check("clock", OK if abs(skew) <= MAX_SKEW_S else FAIL, f"this machine is {skew:+.2f} s from the control plane",
              "enable time sync: 'timedatectl set-ntp true' (or chrony/ntpd); deadlines need clocks "
              f"within {MAX_SKEW_S:g} s")]


async def check_control_plane_http(settings: NodeSettings, timeout: float = 5.0, *, clock: bool = True) -> list[Check]:
    """The control plane's HTTP API answers; with `clock`, also the clock skew from its Date header (1 s
    resolution: used only when the NATS check could not measure it more precisely)."""
    if not settings.control_plane_url:
        return [Check("clock", SKIP, "set control_plane_url (INFERNET_CONTROL_PLANE_URL) to compare clocks")] if clock else []
    url = settings.control_plane_url.rstrip("/") + "/healthz"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            sent = time.time()
            response = await client.get(url)
            received = time.time()
    except httpx.HTTPError as exc:
        return [Check("control plane http", FAIL, f"{url}: {str(exc) or type(exc).__name__}",
                      "check control_plane_url and that the control plane is up")] + (
                [Check("clock", SKIP, "control plane not reachable")] if clock else [])
    checks = [Check("control plane http", OK if response.status_code < 500 else FAIL,
                    f"{url} answered {response.status_code}", "check the control plane's logs")]
    if not clock:
        return checks
    date = response.headers.get("date")
    if not date:
        checks.append(Check("clock", SKIP, "the control plane sent no Date header"))
        return checks
    server = email.utils.parsedate_to_datetime(date).timestamp()
    # The Date header has 1 s resolution; compare with the middle of the round trip.
    skew = (sent + received) / 2 - server
    status = OK if abs(skew) <= MAX_SKEW_S + 1 else FAIL
    checks.append(Check("clock", status, f"this machine is {skew:+.1f} s from the control plane",
                        "enable time sync: 'timedatectl set-ntp true' (or chrony/ntpd); deadlines need clocks "
                        f"within {MAX_SKEW_S:g} s"))
    return checks


async def run_checks(settings: NodeSettings, *, gpu_probe: GpuProbe | None = None,
                     emit: Callable[[Check], None] = lambda c: None) -> list[Check]:
    """Every check in order, each reported through `emit` as soon as it is known."""
    results: list[Check] = []

    def add(*checks: Check) -> None:
        for c in checks:
            results.append(c)
            emit(c)

    add(check_token(settings))
    steps: list[Callable[[], Awaitable[list[Check]]]] = [
        lambda: check_engine(settings),
        lambda: asyncio.to_thread(lambda: [check_gpu(gpu_probe)]),
        lambda: check_nats(settings),
    ]
    for step in steps:
        add(*await step())
    # One clock line: the NATS round trip measures it to the millisecond; the HTTP Date header only when it could not.
    measured = any(c.name == "clock" and c.status != SKIP for c in results)
    add(*await check_control_plane_http(settings, clock=not measured))
    return results
