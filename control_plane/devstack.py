"""`infernet-control-plane dev`: embedded NATS + PostgreSQL, the control plane and one node agent, in one command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from control_plane.embedded import EmbeddedError, free_port, start_nats, start_postgres
from control_plane.settings import Settings


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def run_dev(data_dir: str, *, http_port: int | None = None, start_node: bool = True) -> None:
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    base = Settings.from_env(log_format=os.environ.get("INFERNET_LOG_FORMAT", "console"))
    nats_proc = pg = None
    node_proc = None
    try:
        nats_url = os.environ.get("INFERNET_NATS_URL")
        if not nats_url:
            nats_proc, nats_url = start_nats(root, 4222 if _port_free(4222) else free_port())
            click.echo(f"embedded nats-server (JetStream) at {nats_url}", err=True)
        db_url = os.environ.get("INFERNET_DATABASE_URL")
        if not db_url:
            pg, db_url = start_postgres(root)
            click.echo(f"embedded PostgreSQL in {root / 'pg'}", err=True)
        port = http_port or base.http_port
        if not _port_free(port):
            port = free_port()
        settings = base.with_(database_url=db_url, nats_url=nats_url, http_port=port)

        from control_plane.cli import _create_key, _register_node

        key = asyncio.run(_create_key(db_url, "dev", "dev stack", True))
        token = asyncio.run(_register_node(db_url, "dev-node", "dev"))
        if start_node:
            env = dict(os.environ, INFERNET_NATS_URL=nats_url, INFERNET_NODE_TOKEN=token,
                       INFERNET_LOG_FORMAT=os.environ.get("INFERNET_LOG_FORMAT", "console"), PYTHONUNBUFFERED="1")
            node_proc = subprocess.Popen([sys.executable, "-m", "node_agent.cli", "start"], env=env)
        url = f"http://{settings.http_host}:{port}"

        def banner() -> None:
            click.echo(_banner(url, key, start_node), err=True)

        from control_plane.cli import _serve

        asyncio.run(_serve(settings, ready=banner))
    except EmbeddedError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    finally:
        if node_proc is not None and node_proc.poll() is None:
            node_proc.send_signal(signal.SIGINT)
            try:
                node_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                node_proc.kill()
        if nats_proc is not None:
            nats_proc.terminate()
            try:
                nats_proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                nats_proc.kill()
        if pg is not None:
            pg.cleanup()


def _banner(url: str, key: str, with_node: bool) -> str:
    ollama = os.environ.get("OLLAMA_HOST", "http://127.0.0.1:11434")
    return f"""
Infernet is running at {url}   (OpenAPI: {url}/docs)

  API key (admin, account "dev"):  {key}
  node agent: {"started; it serves the models Ollama has at " + ollama if with_node else "not started (--no-node)"}

Submit a first job (use a model your Ollama has; see {url}/api/v1/models):

  export INFERNET_KEY={key}
  curl -s {url}/api/v1/models -H "Authorization: Bearer $INFERNET_KEY"
  curl -s {url}/api/v1/jobs -H "Authorization: Bearer $INFERNET_KEY" \\
       -H "Content-Type: application/json" \\
       -d '{{"model": "llama3.2:3b", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
  curl -s {url}/api/v1/jobs/JOB_ID -H "Authorization: Bearer $INFERNET_KEY"

Press Ctrl-C to stop.
"""
