"""`infernet-node`: the GPU operator's command line (init, start, status, doctor)."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from node_agent import config
from node_agent.settings import NodeSettings, SettingsError
from protocol.identity import node_id_from_token

_ENGINES = ("ollama", "openai", "llamacpp")
#: After the agent has stopped, the process exits within this many seconds or prints its stacks and exits 1.
EXIT_WATCHDOG_S = 30.0


def _fail(message: str, code: int = 2) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _config_option(fn):
    return click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                        help=f"Config file [env {config.ENV_VAR}; default ~/.config/infernet/node.toml]")(fn)


def _settings_options(fn):
    """The settings every command can override from the command line (None = not passed)."""
    options = [
        click.option("--nats-url", default=None, help="Control plane's NATS URL [env INFERNET_NATS_URL]"),
        click.option("--node-token", default=None,
                     help="Token from 'infernet-control-plane nodes register' [env INFERNET_NODE_TOKEN]"),
        click.option("--engine", type=click.Choice(_ENGINES), default=None, help="Engine kind [env INFERNET_ENGINE]"),
        click.option("--engine-url", default=None,
                     help="Engine URL; llamacpp: a .gguf path [env INFERNET_ENGINE_URL or OLLAMA_HOST]"),
        click.option("--max-concurrency", type=int, default=None,
                     help="Jobs at once [env INFERNET_MAX_CONCURRENCY, default OLLAMA_NUM_PARALLEL or 1]"),
        click.option("--metrics-port", type=int, default=None,
                     help="Port for /metrics and /status, 0 = off [env INFERNET_METRICS_PORT]"),
        click.option("--control-plane-url", default=None, help="Control plane HTTP URL (doctor: clock check)"),
        click.option("--allow-model", "models_allow", multiple=True, help="Advertise only models matching (glob)"),
        click.option("--deny-model", "models_deny", multiple=True, help="Never advertise models matching (glob)"),
        click.option("--label", "labels", multiple=True, help="Advertised label KEY=VALUE (repeatable)"),
    ]
    for option in reversed(options):
        fn = option(fn)
    return _config_option(fn)


def _resolve(config_path: Path | None, flags: dict[str, Any]) -> NodeSettings:
    """Settings from flags > environment > config file > defaults; exits with the reason on a bad value."""
    explicit = config_path is not None or bool(os.environ.get(config.ENV_VAR))
    path = config_path or config.default_path()
    for key in ("models_allow", "models_deny"):
        flags[key] = tuple(flags[key]) if flags.get(key) else None
    if flags.get("labels"):
        bad = [item for item in flags["labels"] if "=" not in item]
        if bad:
            _fail(f"--label takes KEY=VALUE, got {bad[0]!r}")
        flags["labels"] = dict(item.split("=", 1) for item in flags["labels"])
    else:
        flags["labels"] = None
    try:
        return NodeSettings.resolve(file_values=config.load(path, required=explicit), **flags)
    except SettingsError as exc:
        _fail(str(exc))
    except TypeError as exc:
        _fail(f"bad setting: {exc}")


#: What a node takes from the dev stack's .infernet/dev.env: where the bus and the control plane are (never the
#: control plane's own credentials).
_DEV_ENV_KEYS = {"INFERNET_NATS_URL", "INFERNET_NATS_TLS_CA", "INFERNET_CONTROL_PLANE_URL"}


@click.group()
def main() -> None:
    """Run an Infernet node beside your inference engine (Ollama by default)."""
    _apply_dev_env()


def _apply_dev_env() -> None:
    """Inside a project running `infernet-control-plane dev`, its .infernet/dev.env says where the bus is."""
    from pathlib import Path

    from protocol.devenv import DEV_ENV_PATH, parse

    here = Path.cwd().resolve()
    for directory in (here, *here.parents):
        path = directory / DEV_ENV_PATH
        if path.is_file():
            try:
                values = parse(path.read_text())
            except OSError:
                return
            for key in _DEV_ENV_KEYS:
                if values.get(key) and not os.environ.get(key):
                    os.environ[key] = values[key]
            return


@main.command()
@_config_option
@click.option("--nats-url", default="nats://127.0.0.1:4222", show_default=True)
@click.option("--node-token", default="", help="Token from 'infernet-control-plane nodes register NAME'")
@click.option("--engine", type=click.Choice(_ENGINES), default="ollama", show_default=True)
@click.option("--engine-url", default=None, help="Default: the engine's usual address")
@click.option("--max-concurrency", type=int, default=1, show_default=True)
@click.option("--region", default="", help="Advertised as the label region")
@click.option("--force", is_flag=True, help="Overwrite an existing file")
def init(config_path: Path | None, force: bool, engine_url: str | None, **values: Any) -> None:
    """Write a commented config file to edit."""
    from node_agent.engines.registry import default_url

    path = config_path or config.default_path()
    if path.exists() and not force:
        _fail(f"{path} exists; edit it, or pass --force to overwrite it")
    text = config.render(engine_url=default_url(values["engine"]) if engine_url is None else engine_url, **values)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it will hold the node token
    with os.fdopen(fd, "w") as f:
        f.write(text)
    click.echo(f"wrote {path}\nnext: put your node token in it, then run 'infernet-node doctor --config {path}'")


@main.command()
@_settings_options
@click.option("--advertise-interval", "advertise_interval_s", type=float, default=None,
              help="Seconds between heartbeats (default 5)")
@click.option("--log-format", type=click.Choice(["json", "console"]), default=None)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default=None)
@click.option("--bench-on-start/--no-bench-on-start", default=None,
              help="Measure tokens/sec per loaded model before serving")
def start(config_path: Path | None, **flags: Any) -> None:
    """Start the node in the foreground; SIGTERM drains, SIGINT stops."""
    from node_agent.logs import configure_logging

    settings = _resolve(config_path, flags)
    configure_logging(settings.log_format, settings.log_level)
    if not settings.node_token:
        _fail("no node token. Register the node on the control plane with\n"
              "  infernet-control-plane nodes register MY-NODE\n"
              "and pass the printed token as --node-token, INFERNET_NODE_TOKEN or node_token in the config file.")
    node_id = node_id_from_token(settings.node_token)
    if node_id is None:
        _fail("the node token is malformed (expected infnode_<id>_<secret>); "
              "copy it exactly as 'nodes register' printed it.")
    from node_agent import loop

    # `kill -USR1 <pid>` prints every thread's stack to the log, even when the event loop is stuck: what an
    # operator (or a test) needs to see when a node does not stop or does not answer.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    loop.run(_serve(settings, node_id))


async def _serve(settings: NodeSettings, node_id: str) -> None:
    from node_agent.agent import NodeAgent
    from node_agent.engines.registry import engine_for

    import structlog

    agent = NodeAgent(settings, engine_for(settings), node_id=node_id)
    loop = asyncio.get_running_loop()
    log = structlog.get_logger("node_agent.cli")
    draining: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks

    def on_sigterm() -> None:
        # Logged here, before anything else runs, so a stop that never completes shows whether the signal arrived.
        log.info("signal_received", signal="SIGTERM", node_id=node_id, action="draining, then stopping")
        task = asyncio.ensure_future(agent.drain())
        draining.add(task)
        task.add_done_callback(draining.discard)

    def on_sigint() -> None:
        log.info("signal_received", signal="SIGINT", node_id=node_id, action="stopping")
        agent.stop()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, on_sigint)
    await agent.run()
    # The agent has stopped; what is left is the event loop's teardown (leftover tasks cancelled, executor threads
    # joined) and the interpreter's exit, seconds at most. Should that hang, print every thread's stack and exit
    # non-zero rather than leave a stopped node's process running.
    faulthandler.dump_traceback_later(EXIT_WATCHDOG_S, exit=True)


@main.command()
@_settings_options
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON")
@click.option("--api-url", envvar="INFERNET_API_URL", default=None,
              help="The control plane, to show the node's reputation [env INFERNET_API_URL]")
@click.option("--api-key", envvar="INFERNET_API_KEY", default=None,
              help="The operator's API key, to show the node's reputation [env INFERNET_API_KEY]")
def status(config_path: Path | None, as_json: bool, api_url: str | None, api_key: str | None, **flags: Any) -> None:
    """What the node advertises right now (from the running agent, else by probing the engine), and its
    reputation on the control plane when --api-url and --api-key (the operator's) are given."""
    from node_agent import status as node_status
    from node_agent.logs import configure_logging

    settings = _resolve(config_path, flags)
    configure_logging("console", "warning")
    report = asyncio.run(node_status.fetch_running(settings)) or asyncio.run(node_status.probe(settings))
    report["trust"] = None
    if api_url and api_key and report.get("node_id"):
        report["trust"] = asyncio.run(node_status.fetch_trust(api_url, api_key, report["node_id"]))
    click.echo(json.dumps(report, indent=2) if as_json else node_status.render(report))


@main.command()
@_settings_options
def doctor(config_path: Path | None, **flags: Any) -> None:
    """Check the token, engine, models, GPU, NATS and control plane; exit 1 if anything fails."""
    from node_agent.doctor import FAIL, run_checks
    from node_agent.logs import configure_logging

    settings = _resolve(config_path, flags)
    configure_logging("console", "warning")
    results = asyncio.run(run_checks(settings, emit=lambda c: click.echo(c.line())))
    failed = [c for c in results if c.status == FAIL]
    click.echo(f"\n{len(failed)} check(s) failed" if failed else "\nall checks passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
