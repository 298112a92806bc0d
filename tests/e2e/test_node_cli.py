"""`infernet-node` as an operator runs it: init, doctor (each failure and all green), start, status, SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest

from control_plane.nodes.service import register_node
from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.ports import free_port

NODE = [sys.executable, "-m", "node_agent.cli"]
#: The CLI must not pick up the developer's own config or engine.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("INFERNET_", "OLLAMA_"))}


async def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run one short CLI command without blocking the event loop (in-process doubles must keep answering)."""
    proc = await asyncio.create_subprocess_exec(*NODE, *args, env={**CLEAN_ENV, **(env or {})},
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out.decode()


@pytest.fixture
async def double():
    async with OllamaDouble(models=["llama3.2:1b"]) as d:
        yield d


async def test_init_writes_a_private_commented_config(tmp_path: Path):
    path = tmp_path / "infernet" / "node.toml"
    code, out = await run_cli("init", "--config", str(path), "--engine", "openai", "--node-token", "infnode_ab_s",
                              "--region", "eu-west")
    assert code == 0, out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert 'engine = "openai"' in text and 'engine_url = "http://127.0.0.1:8000/v1"' in text
    assert 'region = "eu-west"' in text and "# Precedence: command-line flag" in text
    code, out = await run_cli("init", "--config", str(path))
    assert code == 2 and "--force" in out


async def test_doctor_names_each_failure_with_its_fix(tmp_path: Path):
    code, out = await run_cli("doctor", "--engine-url", f"http://127.0.0.1:{free_port()}",
                              "--nats-url", f"nats://127.0.0.1:{free_port()}", "--node-token", "wrong-token",
                              env={"INFERNET_NODE_CONFIG": str(tmp_path / "none.toml"),
                                   "XDG_CONFIG_HOME": str(tmp_path)})
    # INFERNET_NODE_CONFIG names a file that does not exist: that alone is an error.
    assert code == 2 and "infernet-node init" in out
    code, out = await run_cli("doctor", "--engine-url", f"http://127.0.0.1:{free_port()}",
                              "--nats-url", f"nats://127.0.0.1:{free_port()}", "--node-token", "wrong-token",
                              env={"XDG_CONFIG_HOME": str(tmp_path)})
    assert code == 1, out
    lines = {line.split("]", 1)[1].split()[0]: line for line in out.splitlines() if line.startswith("[")}
    assert lines["node"].startswith("[FAIL]") and "malformed" in lines["node"]
    assert lines["engine"].startswith("[FAIL]") and lines["nats"].startswith("[FAIL]")
    assert out.count("fix:") >= 3 and "3 check(s) failed" in out
    assert "ollama serve" in out and "INFERNET_NATS_URL" in out


async def test_doctor_all_green_against_a_real_control_plane(stack, double, tmp_path: Path):
    registered = await register_node(stack.runtime.db, "doctor-node")
    config = tmp_path / "node.toml"
    code, out = await run_cli("init", "--config", str(config), "--node-token", registered.token,
                              "--nats-url", stack.nats_url)
    assert code == 0, out
    code, out = await run_cli("doctor", "--config", str(config), "--engine-url", double.url,
                              "--control-plane-url", stack.url)
    assert code == 0, out
    for check in ("node token", "engine", "models", "gpu", "nats", "control plane", "token accepted", "clock"):
        assert any(line.startswith("[  ok]") and line[7:].startswith(check) for line in out.splitlines()), (check, out)
    assert "0.13.0" in out and "llama3.2:1b" in out and "all checks passed" in out
    assert "doctor-node" in out  # the control plane named the node it knows the token for
    clock = [line for line in out.splitlines() if line[7:].startswith("clock")]
    assert len(clock) == 1 and "s from the control plane" in clock[0], out  # one figure, not two


async def test_doctor_reports_a_token_the_control_plane_does_not_accept(stack, double, tmp_path: Path):
    registered = await register_node(stack.runtime.db, "real-node")
    forged = registered.token[:-4] + "XXXX"  # well-formed, right node id, wrong secret
    config = tmp_path / "node.toml"
    code, out = await run_cli("init", "--config", str(config), "--node-token", forged, "--nats-url", stack.nats_url)
    assert code == 0, out
    code, out = await run_cli("doctor", "--config", str(config), "--engine-url", double.url)
    assert code != 0, out
    # The bus itself refuses the connection (auth callout), and doctor says so rather than "cannot connect".
    [line] = [line for line in out.splitlines() if line[7:].startswith("nats")]
    assert line.startswith("[FAIL]") and "refused this node's token" in line, out
    assert "nodes register" in out


def nats_line(out: str) -> str:
    [line] = [line for line in out.splitlines() if line[7:].startswith("nats")]
    return line


async def _doctor_against(server, double, tmp_path: Path) -> tuple[int, str]:
    """`infernet-node doctor` with a well-formed token no control plane registered, against `server` (stopped after)."""
    from control_plane.lib.ids import new_id, new_node_token

    try:
        return await run_cli("doctor", "--engine-url", double.url, "--nats-url", server.public_url,
                             "--node-token", new_node_token(new_id("node", 6)), env={"XDG_CONFIG_HOME": str(tmp_path)})
    finally:
        server.stop()


async def test_doctor_names_a_tls_failure_and_the_ca_fix(tmp_path: Path, double):
    """The bus runs TLS with a private CA this node was not given: doctor says TLS, not "cannot connect"."""
    import trustme

    from control_plane.bus.natsconf import TlsFiles
    from tests.fixtures.nats import NatsServer

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server = NatsServer(tmp_path / "nats", tls=TlsFiles(str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"))).start()
    code, out = await _doctor_against(server, double, tmp_path)
    assert code == 1, out
    line = nats_line(out)
    assert line.startswith("[FAIL]") and f"TLS with {server.public_url} failed" in line, out
    assert "nats_tls_ca" in out and "nodes register" not in out  # the fix is the CA, not a new registration


async def test_doctor_says_no_control_plane_checked_the_token_when_none_runs(tmp_path: Path, double):
    """NATS answers but no control plane answers its auth callout: doctor says so, not "token refused"."""
    from tests.fixtures.nats import NatsServer

    server = NatsServer(tmp_path / "nats").start()  # secured like every bus we ship; no control plane on it
    code, out = await _doctor_against(server, double, tmp_path)
    assert code == 1, out
    line = nats_line(out)
    assert line.startswith("[FAIL]") and "no control plane checked this node's token in time" in line, out
    assert "infernet-control-plane serve" in out and "nodes register" not in out


async def test_start_status_and_sigterm_drain(stack, processes, tmp_path: Path):
    engine = processes.start([sys.executable, "-m", "tests.doubles.ollama_double", "--port", "0",
                              "--models", "llama3.2:1b,qwen2.5:7b"], name="ollama-double")
    engine_url = (await engine.wait_for_log_async(r"listening on (\S+)")).group(1)
    registered = await register_node(stack.runtime.db, "cli-node", models=("*",))
    metrics_port = free_port()
    config = tmp_path / "node.toml"
    code, out = await run_cli("init", "--config", str(config), "--node-token", registered.token,
                              "--nats-url", stack.nats_url, "--engine-url", engine_url, "--region", "eu-west")
    assert code == 0, out
    env = {**CLEAN_ENV, "INFERNET_METRICS_PORT": str(metrics_port), "INFERNET_LOG_FORMAT": "json"}
    node = processes.start([*NODE, "start", "--config", str(config), "--advertise-interval", "0.3",
                            "--deny-model", "qwen*"], env=env, name="infernet-node",
                            stack_signal=signal.SIGUSR1)
    await node.wait_for_log_async(r'"event": "node_started"', timeout=60)
    await stack.wait_nodes_serving("llama3.2:1b")

    code, out = await run_cli("status", "--config", str(config), "--metrics-port", str(metrics_port), "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["running"] is True and status["node_id"] == registered.node_id
    assert [m["name"] for m in status["models"]] == ["llama3.2:1b"] and status["hidden_models"] == ["qwen2.5:7b"]
    assert status["labels"] == {"region": "eu-west"} and status["nats_connected"] is True

    code, out = await run_cli("status", "--config", str(config), "--metrics-port", str(metrics_port))
    assert code == 0 and "running" in out and "llama3.2:1b" in out and "kept back" in out

    node.send_signal(signal.SIGTERM)
    assert await node.wait_exit_async(timeout=60) == 0
    text = node.log_text()
    assert '"event": "node_draining"' in text and '"event": "node_stopped"' in text

    # Not running any more: status probes the engine itself and says so.
    code, out = await run_cli("status", "--config", str(config), "--metrics-port", str(metrics_port), "--json")
    assert code == 0 and json.loads(out)["running"] is False
