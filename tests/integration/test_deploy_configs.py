"""The shipped deployment files are valid: nats-server accepts every config, YAML manifests parse, Containerfiles
copy what exists and run a real command, systemd units parse and run real commands; no file goes unchecked."""

from __future__ import annotations

import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from control_plane.settings import Settings
from node_agent.settings import NodeSettings
from tests.fixtures.nats import nats_server_binary

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


@pytest.mark.parametrize("conf", sorted((DEPLOY / "nats").glob("*.conf")), ids=lambda p: p.name)
def test_nats_configs_are_valid(conf):
    out = subprocess.run([nats_server_binary(), "-c", str(conf), "-t"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and "is valid" in (out.stdout + out.stderr), out.stderr


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
