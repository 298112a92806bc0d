"""The shipped deployment files are valid: nats-server accepts every config, YAML manifests parse, Containerfiles
copy what exists and run a real command, systemd units parse and run real commands; no file goes unchecked."""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import nats
import pytest
import trustme
import yaml

from control_plane.bus.natsconf import BusCredentials, bus_password, deployment_env
from control_plane.settings import Settings
from node_agent.settings import NodeSettings
from tests.fixtures.nats import nats_server_binary
from tests.fixtures.ports import HOST, free_ports, port_open
from tests.fixtures.waiting import wait_until

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.fixture(scope="module")
def deploy_env(tmp_path_factory):
    """What an operator puts in the environment of the shipped configs: certificates and bus secrets."""
    d = tmp_path_factory.mktemp("deploy")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(d / "cert.pem"))
    cert.private_key_pem.write_to_path(str(d / "key.pem"))
    creds = BusCredentials.generate(replicas=2)
    env = dict(os.environ, INFERNET_NATS_TLS_CERT=str(d / "cert.pem"), INFERNET_NATS_TLS_KEY=str(d / "key.pem"),
               INFERNET_NATS_TLS_CA=str(d / "ca.pem"), INFERNET_NODE_TOKEN="infnode_ab_secret",
               INFERNET_NATS_LEAF_URL="tls://infnode_ab_secret@127.0.0.1:7422")
    env.update(deployment_env(creds))
    return env, creds, d


@pytest.mark.parametrize("conf", sorted((DEPLOY / "nats").glob("*.conf")), ids=lambda p: p.name)
def test_nats_configs_are_valid(conf, deploy_env):
    env, _, _ = deploy_env
    out = subprocess.run([nats_server_binary(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30,
                         env=env)
    assert out.returncode == 0 and "is valid" in (out.stdout + out.stderr), out.stderr


def test_generated_bus_passwords_are_read_back_as_strings_by_nats_server(tmp_path):
    """The shipped configs name passwords as `$VARIABLE`, which nats-server parses as a config value: a password
    starting with '-' (1 in 64 of URL-safe tokens) or reading as a number fails the config. 1,000 draws at once."""
    passwords = [bus_password() for _ in range(1000)]
    users = "\n".join(f"{{ user: u{i}, password: $PW{i} }}" for i in range(len(passwords)))
    conf = tmp_path / "many.conf"
    conf.write_text(f"listen: {HOST}:-1\naccounts {{ A {{ users: [\n{users}\n] }} }}\n")
    env = dict(os.environ, **{f"PW{i}": pw for i, pw in enumerate(passwords)})
    out = subprocess.run([nats_server_binary(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30,
                         env=env)
    assert out.returncode == 0 and "is valid" in (out.stdout + out.stderr), out.stderr


@pytest.mark.parametrize("conf", sorted((DEPLOY / "nats").glob("*.conf")), ids=lambda p: p.name)
def test_nats_configs_require_tls_and_authentication(conf):
    text = conf.read_text()
    assert "tls" in text and ("auth_callout" in text or "token: $INFERNET_NODE_TOKEN" in text)
    assert "password: $" in text or "token: $" in text  # secrets from the environment, none in the file


async def test_the_shipped_single_server_config_refuses_anonymous_and_plaintext_clients(deploy_env, tmp_path):
    env, creds, d = deploy_env
    port, http, leaf = free_ports(3)
    conf = shipped(tmp_path, "nats-server.conf", {"0.0.0.0:4222": f"{HOST}:{port}", "127.0.0.1:8222": f"{HOST}:{http}",
                                                  "0.0.0.0:7422": f"{HOST}:{leaf}", "/var/lib/nats": str(tmp_path / "js")})
    proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_until(lambda: port_open(port), timeout=30, message="shipped config did not start")
        tls = ssl.create_default_context(cafile=str(d / "ca.pem"))
        with pytest.raises(Exception):  # no TLS: the server requires it
            nc = await nats.connect(f"nats://{HOST}:{port}", allow_reconnect=False, connect_timeout=5)
            await nc.close()
        cp = creds.control_planes[0]
        nc = await nats.connect(f"tls://{HOST}:{port}", tls=tls, user=cp.user, password=cp.password,
                                allow_reconnect=False, connect_timeout=5)
        try:
            assert nc.is_connected  # a control-plane identity over TLS gets in
        finally:
            await nc.close()
        # No credentials: never connected (no control plane runs here, so the callout times out and the server
        # closes the connection).
        assert await _try(f"tls://{HOST}:{port}", tls) is not None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def shipped(tmp_path: Path, name: str, moves: dict[str, str]) -> Path:
    """A copy of deploy/nats/NAME with only its addresses and directories moved to this test's (each must occur)."""
    text = (DEPLOY / "nats" / name).read_text()
    for old, new in moves.items():
        assert old in text, f"{name} no longer has {old}"
        text = text.replace(old, new)
    conf = tmp_path / name
    conf.write_text(text)
    return conf


async def test_a_node_behind_the_shipped_leaf_config_serves_a_job_through_the_shipped_hub(
        deploy_env, tmp_path, database_url, processes):
    """An operator behind NAT: the local leaf server (leafnode-operator.conf) dials the network's server
    (nats-server.conf) over TLS with the node's token; the agent talks only to the leaf, and a job runs."""
    from control_plane.nodes.service import register_node
    from node_agent.agent import NodeAgent
    from node_agent.engines.registry import create_engine
    from tests.doubles.ollama_double import OllamaDouble
    from tests.harness import RunningNode, Stack

    env, creds, d = deploy_env
    port, http, leaf_port, local = free_ports(4)
    hub = shipped(tmp_path, "nats-server.conf", {"0.0.0.0:4222": f"{HOST}:{port}", "127.0.0.1:8222": f"{HOST}:{http}",
                                                 "0.0.0.0:7422": f"{HOST}:{leaf_port}",
                                                 "/var/lib/nats": str(tmp_path / "js")})
    await processes.start([nats_server_binary(), "-c", str(hub)], env=env, name="hub").wait_for_port_async(port, timeout=30)
    cp, system = creds.control_planes[0], creds.systems[0]
    stack = await Stack(f"tls://{HOST}:{port}", database_url, overrides=dict(
        nats_user=cp.user, nats_password=cp.password, nats_system_user=system.user,
        nats_system_password=system.password, nats_auth_seed=creds.issuer_seed, nats_account=creds.account,
        nats_tls_ca=str(d / "ca.pem"))).start()
    try:
        registered = await register_node(stack.runtime.db, "behind-nat", models=("*",))
        leaf = shipped(tmp_path, "leafnode-operator.conf", {"127.0.0.1:4222": f"{HOST}:{local}"})
        leaf_env = dict(env, INFERNET_NODE_TOKEN=registered.token, INFERNET_NATS_TLS_CA=str(d / "ca.pem"),
                        INFERNET_NATS_LEAF_URL=f"tls://{registered.token}@{HOST}:{leaf_port}")
        leaf_proc = processes.start([nats_server_binary(), "-c", str(leaf)], env=leaf_env, name="leaf")
        await leaf_proc.wait_for_port_async(local, timeout=30)
        async with OllamaDouble(models=["llama3.2:3b"], tokens=("Through", " the", " leaf.")) as engine:
            settings = NodeSettings(nats_url=f"nats://{HOST}:{local}", node_token=registered.token,
                                    engine_url=engine.url, advertise_interval_s=0.5, log_format="console",
                                    log_level="warning")
            agent = NodeAgent(settings, create_engine("ollama", engine.url), node_id=registered.node_id)
            node = RunningNode(agent, asyncio.create_task(agent.run()), "behind-nat")
            stack.nodes.append(node)
            await stack.wait_nodes_serving("llama3.2:3b")
            key = await stack.key("alice")
            r = await stack.submit(key, model="llama3.2:3b", stream=False)
            job = await stack.wait_job(key, r.json()["id"])
            assert job["status"] == "completed" and job["node_id"] == registered.node_id, job
            assert job["result"]["content"] == "Through the leaf."
            await stack.stop_node(node)
        # The leaf's local port is not open either: without the node's token nobody gets in.
        with pytest.raises(Exception, match="Authorization Violation"):
            nc = await nats.connect(f"nats://{HOST}:{local}", allow_reconnect=False, connect_timeout=5)
            await nc.close()
    finally:
        await stack.stop()


async def _try(url: str, tls) -> str | None:
    """None when connected; else the refusal ("closed" when the server hung up without a reason)."""
    try:
        nc = await nats.connect(url, tls=tls, allow_reconnect=False, connect_timeout=5)
    except Exception as exc:
        return str(exc)
    connected = nc.is_connected
    await nc.close()
    return None if connected else "closed"


@pytest.mark.parametrize("manifest", [DEPLOY / "compose.yaml", DEPLOY / "k8s" / "control-plane.yaml"], ids=lambda p: p.name)
def test_manifests_parse(manifest):
    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert docs
    text = manifest.read_text()
    assert "infernet-control-plane" in text and "INFERNET_DATABASE_URL" in text


# -- Containerfiles and systemd units -------------------------------------------------------------------------
ROOT = DEPLOY.parent
ENTRY_POINTS = {"infernet-control-plane", "infernet-node"}
KNOWN_ENV = ({f"INFERNET_{f.upper()}" for f in Settings.__dataclass_fields__}
             | {f"INFERNET_{f.upper()}" for f in NodeSettings.__dataclass_fields__} | {"INFERNET_NODE_CONFIG"})


def _command_works(argv: list[str]) -> None:
    """The entry point exists and knows the subcommand (its --help exits 0)."""
    name = Path(argv[0]).name
    assert name in ENTRY_POINTS, argv
    out = subprocess.run([str(Path(sys.executable).parent / name), *argv[1:2], "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, (argv, out.stderr)


def test_every_deploy_file_is_checked_by_a_test():
    checked = {p for p in DEPLOY.rglob("*") if p.is_file() and (
        p.suffix in (".conf", ".yaml", ".service") or p.name == "Containerfile")}
    assert checked == {p for p in DEPLOY.rglob("*") if p.is_file()}


@pytest.mark.parametrize("containerfile", sorted(DEPLOY.rglob("Containerfile")), ids=lambda p: p.parent.name)
def test_containerfiles_copy_what_exists_and_run_a_real_command(containerfile):
    lines, current = [], ""
    for raw in containerfile.read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            lines.append(current.strip())
            current = ""
    instructions = [(line.split(" ", 1)[0].upper(), line.split(" ", 1)[1] if " " in line else "") for line in lines]
    assert instructions[0][0] in ("FROM", "ARG") and any(op == "FROM" for op, _ in instructions)
    for op, args in instructions:
        if op == "COPY" and "--from=" not in args:
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"{containerfile}: COPY {source} does not exist"
        if op == "ENV":
            for name in (pair.split("=", 1)[0] for pair in args.split() if "=" in pair):
                assert not name.startswith("INFERNET_") or name in KNOWN_ENV, name
    command = [a for op, args in instructions if op in ("ENTRYPOINT", "CMD") for a in json.loads(args)]
    _command_works(command)


@pytest.mark.parametrize("unit", sorted(DEPLOY.rglob("*.service")), ids=lambda p: p.name)
def test_systemd_units_parse_and_run_real_commands(unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    assert {"Unit", "Service", "Install"} <= set(parser.sections())
    service = parser["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        if key in service:
            _command_works(service[key].split())
    for name in (v.split("=", 1)[0] for v in [service.get("Environment", "")] if "=" in v):
        assert not name.startswith("INFERNET_") or name in KNOWN_ENV, name
