"""A replica's system-account connection: hears node connects/disconnects at once, and disconnects revoked nodes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec
import nats
import structlog
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError as NatsTimeout

from control_plane.bus.connection import BusError, credentials

log = structlog.get_logger("control_plane.bus.system")

_CONNZ = "$SYS.REQ.SERVER.PING.CONNZ"


class _Server(msgspec.Struct):
    id: str
    name: str = ""


class _Client(msgspec.Struct):
    id: int
    acc: str = ""
    user: str = ""
    name: str = ""


class _ClientEvent(msgspec.Struct):
    server: _Server
    client: _Client
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ClientEvent:
    """A client of the application account connected or disconnected on one server."""

    connected: bool
    server_id: str
    cid: int
    user: str
    reason: str = ""


class _Conn(msgspec.Struct):
    cid: int


class _ConnzData(msgspec.Struct):
    connections: list[_Conn] = []


class _ConnzReply(msgspec.Struct):
    server: _Server
    data: _ConnzData | None = None


class SystemBus:
    """System account: `$SYS.ACCOUNT.<account>.CONNECT|DISCONNECT` events and `$SYS.REQ.SERVER.<id>.KICK`."""

    def __init__(self, nc: NATS, account: str) -> None:
        self.nc = nc
        self.account = account

    @classmethod
    async def connect(cls, url: str, *, name: str, user: str, password: str | None, account: str,
                      tls_ca: str | None = None) -> SystemBus:
        servers = [u.strip() for u in url.split(",") if u.strip()]

        async def on_error(exc: Exception) -> None:
            log.warning("nats_system_error", error=str(exc) or type(exc).__name__)

        try:
            nc = await nats.connect(servers=servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                    connect_timeout=5, error_cb=on_error, allow_reconnect=True,
                                    **credentials(servers, user, password, tls_ca))
        except Exception as exc:  # nats raises several unrelated types on connect failure
            raise BusError(f"cannot connect to NATS at {url} as system user {user!r}: {exc}") from exc
        return cls(nc, account)

    async def client_events(self, handler: Callable[[ClientEvent], Awaitable[None]]) -> None:
        """Call `handler` for every connect and disconnect of a client of the application account."""
        prefix = f"$SYS.ACCOUNT.{self.account}."

        async def on_event(msg) -> None:
            try:
                ev = msgspec.json.decode(msg.data, type=_ClientEvent)
            except msgspec.DecodeError as exc:
                log.warning("malformed_client_event", subject=msg.subject, error=str(exc))
                return
            await handler(ClientEvent(connected=msg.subject.endswith(".CONNECT"), server_id=ev.server.id,
                                      cid=ev.client.id, user=ev.client.user, reason=ev.reason))

        await self.nc.subscribe(prefix + "CONNECT", cb=on_event)
        await self.nc.subscribe(prefix + "DISCONNECT", cb=on_event)
        await self.nc.flush()

    async def kick_user(self, user: str, *, timeout: float = 2.0) -> int:
        """Disconnect every connection of `user` in the application account, on every server; returns how many."""
        inbox = self.nc.new_inbox()
        replies: list[_ConnzReply] = []
        sub = await self.nc.subscribe(inbox, cb=None)
        try:
            await self.nc.publish(_CONNZ, msgspec.json.encode({"acc": self.account, "user": user}), reply=inbox)
            deadline = asyncio.get_running_loop().time() + timeout
            # Every server answers the PING; gather answers until they stop coming.
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    break
                try:
                    msg = await sub.next_msg(timeout=min(remaining, 0.25 if replies else remaining))
                except (NatsTimeout, asyncio.TimeoutError):
                    if replies:
                        break
                    continue
                try:
                    replies.append(msgspec.json.decode(msg.data, type=_ConnzReply))
                except msgspec.DecodeError:
                    continue
        finally:
            await sub.unsubscribe()
        kicked = 0
        for reply in replies:
            for conn in (reply.data.connections if reply.data else []):
                try:
                    await self.nc.request(f"$SYS.REQ.SERVER.{reply.server.id}.KICK",
                                          msgspec.json.encode({"cid": conn.cid}), timeout=timeout)
                    kicked += 1
                except (NatsTimeout, NoRespondersError, asyncio.TimeoutError) as exc:
                    log.warning("kick_failed", user=user, server=reply.server.name, cid=conn.cid,
                                error=str(exc) or type(exc).__name__)
        return kicked

    async def close(self) -> None:
        try:
            await self.nc.close()
        except Exception:  # already closed
            pass
