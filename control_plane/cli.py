"""`infernet-control-plane`: migrate, serve, manage keys and nodes, and run the all-in-one dev stack."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import click

from control_plane.settings import Settings

if TYPE_CHECKING:
    from control_plane.store import Database


def _settings(**overrides) -> Settings:
    return Settings.from_env(**overrides)


def _need_db(settings: Settings) -> str:
    if not settings.database_url:
        click.echo("error: INFERNET_DATABASE_URL is not set (e.g. postgresql://user:pass@host/db)", err=True)
        sys.exit(2)
    return settings.database_url


@asynccontextmanager
async def _database(url: str) -> AsyncIterator[Database]:
    """A small pool for one command, closed when the command is done with it."""
    from control_plane.store import Database

    db = await Database.open(url, min_size=1, max_size=2)
    try:
        yield db
    finally:
        await db.close()


@click.group()
@click.pass_context
def main(ctx: click.Context) -> None:
    """The Infernet control plane. Inside a project where `infernet-control-plane dev` runs, the settings in
    .infernet/dev.env apply (any INFERNET_* variable you set wins)."""
    from control_plane.lib import dev_env

    if ctx.invoked_subcommand != "dev":  # dev writes that file; it starts from its own settings
        dev_env.apply()


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
    from control_plane.lib import loop

    loop.run(_serve(settings))


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
@click.option("--credits", type=click.IntRange(min=0), default=None,
              help="Opening grant of a new account (default INFERNET_SIGNUP_CREDITS; 0: its first job gets 402); "
                   "for an existing account, credits to add")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def keys_create(account: str, name: str, admin: bool, credits: int | None, database_url: str | None) -> None:
    """Create an API key; prints only the key (inf_...) on stdout."""
    settings = _settings(database_url=database_url)
    url = _need_db(settings)
    grant = settings.signup_credits if credits is None else credits
    click.echo(asyncio.run(_create_key(url, account, name, admin, credits=grant, top_up=credits)))


async def _create_key(url: str, account: str, name: str, admin: bool, *, credits: int | None = None,
                      top_up: int | None = None) -> str:
    from control_plane.accounts.service import create_key, ensure_account
    from control_plane.credits.ledger import deposit
    from control_plane.store.migrate import apply_migrations

    await asyncio.to_thread(apply_migrations, url)
    async with _database(url) as db:
        acct = await ensure_account(db, account, credits=credits)
        if acct["created"]:
            click.echo(f"created account {account} ({acct['id']}) with {credits if credits is not None else 'the default'}"
                       " credits", err=True)
        elif top_up:
            await deposit(db, acct["id"], top_up, "top-up with keys create --credits")
            click.echo(f"added {top_up} credits to existing account {account}", err=True)
        return (await create_key(db, acct["id"], name=name, admin=admin)).key


@main.group()
def credits() -> None:
    """Manage credits and prices."""


@credits.command("add")
@click.argument("account")
@click.argument("amount", type=click.IntRange(min=1))
@click.option("--note", default=None, help="Why (kept on the ledger entry)")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def credits_add(account: str, amount: int, note: str | None, database_url: str | None) -> None:
    """Top up ACCOUNT (by name) with AMOUNT credits; prints the new balance."""
    url = _need_db(_settings(database_url=database_url))
    click.echo(asyncio.run(_credits_add(url, account, amount, note)))


async def _credits_add(url: str, account: str, amount: int, note: str | None) -> str:
    from control_plane.credits.ledger import account_credits, deposit

    async with _database(url) as db:
        row = await db.fetchone("get_account_by_name", {"name": account})
        if row is None:
            click.echo(f"error: no account named {account}", err=True)
            sys.exit(1)
        await deposit(db, row["id"], amount, note or "top-up with the CLI")
        c = await account_credits(db, row["id"])
        return f"balance {c.balance} reserved {c.reserved} available {c.available}"


@credits.command("price")
@click.argument("model")
@click.option("--input", "input_per_mtok", type=click.IntRange(0, 10**12), required=True,
              help="Credits per 1M input (prompt) tokens")
@click.option("--output", "output_per_mtok", type=click.IntRange(0, 10**12), required=True,
              help="Credits per 1M output (completion) tokens")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def credits_price(model: str, input_per_mtok: int, output_per_mtok: int, database_url: str | None) -> None:
    """Set MODEL's price; jobs already submitted keep the price they were accepted at."""
    url = _need_db(_settings(database_url=database_url))
    asyncio.run(_credits_price(url, model, input_per_mtok, output_per_mtok))
    click.echo(f"{model}: {input_per_mtok} / {output_per_mtok} credits per 1M input / output tokens", err=True)


async def _credits_price(url: str, model: str, input_per_mtok: int, output_per_mtok: int) -> None:
    from control_plane.credits.prices import set_price
    from control_plane.credits.pricing import Price

    async with _database(url) as db:
        await set_price(db, model, Price(input_per_mtok, output_per_mtok))


@main.group()
def nodes() -> None:
    """Manage nodes."""


@nodes.command("register")
@click.argument("name")
@click.option("--operator", default=None, help="Operator account name (created if missing)")
@click.option("--max-slots", type=click.IntRange(1, 4096), default=16, show_default=True,
              help="Most jobs at once the node may advertise (larger claims are cut to this)")
@click.option("--model", "models", multiple=True,
              help="A model (glob) you vouch for on this node: served without a check; repeatable; '*' for any. "
                   "Default: none; each model it claims is served once a known-answer probe verified it")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def nodes_register(name: str, operator: str | None, max_slots: int, models: tuple[str, ...],
                   database_url: str | None) -> None:
    """Register a node; prints only its token on stdout (give it to infernet-node: it is also its bus login)."""
    url = _need_db(_settings(database_url=database_url))
    click.echo(asyncio.run(_register_node(url, name, operator, max_slots=max_slots, models=models or None)))


async def _register_node(url: str, name: str, operator: str | None, *, max_slots: int = 16,
                         models: tuple[str, ...] | None = None) -> str:
    from control_plane.accounts.service import ensure_account
    from control_plane.nodes.service import register_node
    from control_plane.store.migrate import apply_migrations

    await asyncio.to_thread(apply_migrations, url)
    async with _database(url) as db:
        grant = _settings().signup_credits
        operator_id = (await ensure_account(db, operator, credits=grant))["id"] if operator else None
        return (await register_node(db, name, operator_id, max_slots=max_slots, models=models)).token


@nodes.command("set-models")
@click.argument("node")
@click.option("--model", "models", multiple=True,
              help="A model (glob) you vouch for on this node; repeatable; '*' for any. None given: the node's "
                   "claims are all measured before it serves them")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def nodes_set_models(node: str, models: tuple[str, ...], database_url: str | None) -> None:
    """Replace the models you vouch for on NODE (id or name); replicas apply it within a minute."""
    url = _need_db(_settings(database_url=database_url))
    row = asyncio.run(_set_models(url, node, models or None))
    if row is None:
        click.echo(f"error: no node {node!r} is registered", err=True)
        sys.exit(1)
    trusted = ", ".join(row["models"]) if row["models"] else "none (every model it claims is measured first)"
    click.echo(f"{row['id']} ({row['name']}): trusted models: {trusted}")


async def _set_models(url: str, node: str, models: tuple[str, ...] | None) -> dict | None:
    from control_plane.nodes.service import set_node_models
    from control_plane.store.migrate import apply_migrations

    await asyncio.to_thread(apply_migrations, url)
    async with _database(url) as db:
        return await set_node_models(db, node, models)


@nodes.command("clear-quarantine")
@click.argument("node_id")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def nodes_clear_quarantine(node_id: str, database_url: str | None) -> None:
    """Lift NODE_ID's quarantine and forget the evidence behind it (it starts on probation again); every
    replica applies it within a second (same as POST /api/v1/nodes/{id}/clear-quarantine)."""
    url = _need_db(_settings(database_url=database_url))
    click.echo(asyncio.run(_clear_quarantine(url, node_id)))


async def _clear_quarantine(url: str, node_id: str) -> str:
    import time

    async with _database(url) as db:
        if await db.fetchone("get_node_token_hash", {"id": node_id}) is None:
            click.echo(f"error: no node {node_id} is registered", err=True)
            sys.exit(1)
        row = await db.fetchone("trust_clear", {"node_id": node_id, "now": time.time()})
        return f"{node_id}: cleared, on probation" if row else f"{node_id}: no trust record; nothing to clear"


@nodes.command("revoke")
@click.argument("node")
@click.option("--database-url", default=None, help="[env INFERNET_DATABASE_URL]")
def nodes_revoke(node: str, database_url: str | None) -> None:
    """Revoke a node (id or name): the bus refuses it from now on; with the control plane's system identity
    configured (INFERNET_NATS_SYSTEM_USER), its live connections are closed at once."""
    settings = _settings(database_url=database_url)
    url = _need_db(settings)
    rows, disconnected = asyncio.run(_revoke_node(url, settings, node))
    if not rows:
        click.echo(f"error: no node {node!r} is registered", err=True)
        sys.exit(1)
    for row in rows:
        click.echo(f"revoked {row['id']} ({row['name']}); {disconnected.get(row['id'], 0)} live connection(s) closed")


async def _revoke_node(url: str, settings: Settings, node: str) -> tuple[list[dict], dict[str, int]]:
    async with _database(url) as db:
        rows = await db.fetchall("revoke_node", {"node": node, "by_name": True})
    disconnected: dict[str, int] = {}
    if rows and settings.nats_system_user:
        from control_plane.bus.system import SystemBus

        system = await SystemBus.connect(settings.nats_url, name="infernet-control-plane revoke",
                                         user=settings.nats_system_user, password=settings.nats_system_password,
                                         account=settings.nats_account, tls_ca=settings.nats_tls_ca)
        try:
            for row in rows:
                disconnected[row["id"]] = await system.kick_user(row["id"])
        finally:
            await system.close()
    return rows, disconnected


@main.command("bus-credentials")
@click.option("--replicas", type=click.IntRange(1, 64), default=2, show_default=True,
              help="Control-plane replicas (each gets its own bus identity)")
@click.option("--plain", is_flag=True, help="KEY=value lines (Docker Compose .env, kubectl --from-env-file)")
def bus_credentials(replicas: int, plain: bool) -> None:
    """Print new bus secrets as shell variables: what deploy/nats/*.conf and the control planes read. Keep the
    output secret (mode 0600); replica i sets INFERNET_NATS_USER=$INFERNET_NATS_CP<i>_USER and so on."""
    from control_plane.bus.natsconf import BusCredentials, deployment_env
    from protocol.devenv import render

    values = deployment_env(BusCredentials.generate(replicas=replicas))
    if plain:  # the values are URL-safe base64 and nkeys: nothing to quote
        click.echo("".join(f"{k}={v}\n" for k, v in values.items()), nl=False)
        return
    click.echo(render(values, header=(
        "Infernet bus secrets: the NATS servers and the control planes read these; nodes never see them.")), nl=False)


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
