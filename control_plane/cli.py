"""`infernet-control-plane`: migrate, serve, manage keys and nodes, and run the all-in-one dev stack."""

from __future__ import annotations

import asyncio
import sys

import click

from control_plane.settings import Settings


def _settings(**overrides) -> Settings:
    return Settings.from_env(**overrides)


def _need_db(settings: Settings) -> str:
    if not settings.database_url:
        click.echo("error: INFERNET_DATABASE_URL is not set (e.g. postgresql://user:pass@host/db)", err=True)
        sys.exit(2)
    return settings.database_url


@click.group()
def main() -> None:
    """The Infernet control plane."""


@main.command()
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def migrate(database_url: str | None) -> None:
    """Apply database migrations (safe to run repeatedly and concurrently)."""
    from control_plane.store.migrate import apply_migrations

    applied = apply_migrations(_need_db(_settings(database_url=database_url)))
    click.echo(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""), err=True)


@main.command()
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
@click.option("--nats-url", default=None, help="[env INFERNET_NATS_URL]")
@click.option("--host", "http_host", default=None, help="[env INFERNET_HTTP_HOST]")
@click.option("--port", "http_port", type=int, default=None, help="[env INFERNET_HTTP_PORT]")
@click.option("--log-format", type=click.Choice(["json", "console"]), default=None)
def serve(**flags) -> None:
    """Run the HTTP API, the dispatcher and the result recorder."""
    settings = _settings(**flags)
    _need_db(settings)
    asyncio.run(_serve(settings))


async def _serve(settings: Settings, *, ready=None) -> None:
    import uvicorn

    from control_plane.app import create_app
    from control_plane.lib.logging import configure_logging

    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(app, host=settings.http_host, port=settings.http_port, log_level="warning",
                            access_log=False, lifespan="on", loop="none", timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    if ready is not None:
        asyncio.get_running_loop().create_task(_notify_started(server, ready))
    await server.serve()


async def _notify_started(server, ready) -> None:
    while not server.started:
        await asyncio.sleep(0.05)
    ready()


@main.group()
def keys() -> None:
    """Manage API keys."""


@keys.command("create")
@click.option("--account", required=True, help="Account name (created if missing)")
@click.option("--name", default="", help="A label for the key")
@click.option("--admin", is_flag=True, help="Give the key the admin scope")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def keys_create(account: str, name: str, admin: bool, database_url: str | None) -> None:
    """Create an API key; prints only the key (inf_...) on stdout."""
    url = _need_db(_settings(database_url=database_url))
    click.echo(asyncio.run(_create_key(url, account, name, admin)))


async def _create_key(url: str, account: str, name: str, admin: bool) -> str:
    from control_plane.accounts.service import create_key, ensure_account
    from control_plane.store import Database
    from control_plane.store.migrate import apply_migrations

    await asyncio.to_thread(apply_migrations, url)
    db = await Database.open(url, min_size=1, max_size=2)
    try:
        acct = await ensure_account(db, account)
        return (await create_key(db, acct["id"], name=name, admin=admin)).key
    finally:
        await db.close()


@main.group()
def nodes() -> None:
    """Manage nodes."""


@nodes.command("register")
@click.argument("name")
@click.option("--operator", default=None, help="Operator account name (created if missing)")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def nodes_register(name: str, operator: str | None, database_url: str | None) -> None:
    """Register a node; prints only its token on stdout (give it to infernet-node)."""
    url = _need_db(_settings(database_url=database_url))
    click.echo(asyncio.run(_register_node(url, name, operator)))


async def _register_node(url: str, name: str, operator: str | None) -> str:
    from control_plane.accounts.service import ensure_account
    from control_plane.nodes.service import register_node
    from control_plane.store import Database
    from control_plane.store.migrate import apply_migrations

    await asyncio.to_thread(apply_migrations, url)
    db = await Database.open(url, min_size=1, max_size=2)
    try:
        operator_id = (await ensure_account(db, operator))["id"] if operator else None
        return (await register_node(db, name, operator_id)).token
    finally:
        await db.close()


@main.command()
@click.option("--data-dir", default=".infernet", show_default=True, help="Where the embedded servers keep data")
@click.option("--port", "http_port", type=int, default=None, help="HTTP port (default 8080)")
@click.option("--no-node", is_flag=True, help="Do not start a node agent")
def dev(data_dir: str, http_port: int | None, no_node: bool) -> None:
    """All-in-one stack: embedded NATS and PostgreSQL, the control plane and one node agent."""
    from control_plane.devstack import run_dev

    run_dev(data_dir, http_port=http_port, start_node=not no_node)


if __name__ == "__main__":
    main()
