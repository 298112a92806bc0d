"""`infernet-node`: the GPU operator's command line."""

from __future__ import annotations

import asyncio
import signal
import sys

import click

from node_agent.agent import NodeAgent
from node_agent.logs import configure_logging
from node_agent.settings import NodeSettings
from protocol.identity import node_id_from_token


@click.group()
def main() -> None:
    """Run an Infernet node beside your inference engine (Ollama by default)."""


@main.command()
@click.option("--nats-url", default=None, help="Control plane's NATS URL [env INFERNET_NATS_URL]")
@click.option("--node-token", default=None, help="Token from 'infernet-control-plane nodes register' [env INFERNET_NODE_TOKEN]")
@click.option("--engine", default=None, help="Engine kind: ollama [env INFERNET_ENGINE]")
@click.option("--engine-url", default=None, help="Engine URL [env INFERNET_ENGINE_URL or OLLAMA_HOST]")
@click.option("--max-concurrency", type=int, default=None, help="Jobs at once [env INFERNET_MAX_CONCURRENCY, default OLLAMA_NUM_PARALLEL or 1]")
@click.option("--advertise-interval", "advertise_interval_s", type=float, default=None, help="Seconds between heartbeats (default 5)")
@click.option("--log-format", type=click.Choice(["json", "console"]), default=None)
def start(**flags) -> None:
    """Start the node in the foreground; SIGTERM drains, SIGINT stops."""
    settings = NodeSettings.resolve(**flags)
    configure_logging(settings.log_format, settings.log_level)
    if not settings.node_token:
        click.echo("error: no node token. Register the node on the control plane with\n"
                   "  infernet-control-plane nodes register MY-NODE\n"
                   "and pass the printed token as --node-token or INFERNET_NODE_TOKEN.", err=True)
        sys.exit(2)
    node_id = node_id_from_token(settings.node_token)
    if node_id is None:
        click.echo("error: the node token is malformed (expected infnode_<id>_<secret>); "
                   "copy it exactly as 'nodes register' printed it.", err=True)
        sys.exit(2)
    asyncio.run(_serve(settings, node_id))


async def _serve(settings: NodeSettings, node_id: str) -> None:
    from node_agent.engines.registry import create_engine

    engine = create_engine(settings.engine, settings.engine_url)
    agent = NodeAgent(settings, engine, node_id=node_id)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: asyncio.ensure_future(agent.drain()))
    loop.add_signal_handler(signal.SIGINT, agent.stop)
    await agent.run()


if __name__ == "__main__":
    main()
