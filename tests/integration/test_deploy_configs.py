"""The shipped deployment files are valid: nats-server accepts every config, YAML manifests parse."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

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
