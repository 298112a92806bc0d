"""What an attacker has: an anonymous NATS client, or a registered node's token and raw nats-py."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from control_plane.nodes.service import register_node
from protocol import subjects
from tests.fixtures.nats import public
from tests.fixtures.waiting import wait_until
from tests.sse import Event, SSEReader, read_until

MODEL = "llama3.2:3b"
#: The honest engine's answer, token by token.
GENUINE = ("The", " honest", " answer", " from", " the", " assigned", " node.")
GENUINE_TEXT = "".join(GENUINE)


@dataclass
class Rogue:
    """A registered node's identity used by hand: connects with its token, collects what the server refuses."""

    node_id: str
    token: str
    nc: NATS
    errors: list[str] = field(default_factory=list)
    received: list[tuple[str, bytes]] = field(default_factory=list)

    async def collect(self, msg) -> None:
        self.received.append((msg.subject, msg.data))

    async def try_subscribe(self, subject: str) -> None:
        await self.nc.subscribe(subject, cb=self.collect)
        await self.nc.flush()

    async def publish(self, subject: str, data: bytes) -> None:
        await self.nc.publish(subject, data)
        await self.nc.flush()

    async def violations(self, count: int) -> list[str]:
        """Wait until the server has reported `count` permission violations to this client; return them."""
        await wait_until(lambda: len([e for e in self.errors if "permissions violation" in e]) >= count,
                         timeout=10, message=f"expected {count} permission violations, got {self.errors}")
        return [e for e in self.errors if "permissions violation" in e]


async def connect_as_node(url: str, token: str, node_id: str, **options) -> Rogue:
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(public(url), token=token, inbox_prefix=subjects.node_inbox_prefix(node_id),
                            error_cb=on_error, allow_reconnect=False, connect_timeout=10, **options)
    rogue = Rogue(node_id, token, nc)
    rogue.errors = errors
    return rogue


async def rogue_node(stack, name: str = "rogue") -> Rogue:
    """A node registered like any other, whose operator is hostile."""
    registered = await register_node(stack.runtime.db, name)
    return await connect_as_node(stack.nats_url, registered.token, registered.node_id)


async def assert_anonymous_refused(url: str) -> None:
    """An anonymous client cannot connect at all: the server answers Authorization Violation."""
    with pytest.raises(Exception, match="Authorization Violation"):
        nc = await nats.connect(public(url), allow_reconnect=False, connect_timeout=10, max_reconnect_attempts=0)
        await nc.close()


async def settle(stack, rogue: Rogue) -> None:
    """Everything the control plane published so far has reached the rogue if the server let it: the control
    plane's flush puts its messages through the server, the rogue's flush reads all that was routed to it."""
    await stack.runtime.bus.flush()
    await rogue.nc.flush()


@dataclass
class LiveStream:
    """A user's streamed job on an honest node, a rogue node connected beside it, and the events read so far."""

    key: str
    honest: Any
    rogue: Rogue
    reader: SSEReader
    events: list[Event]

    @property
    def job_id(self) -> str:
        return self.events[0].json()["id"]


@asynccontextmanager
async def live_stream(stack, double, until: str):
    """Alice streams a job placed on an honest node beside `double`, with a rogue node connected; yields once the
    stream has sent its first `until` event ("job": placed; "token": the honest node's first token)."""
    key = await stack.key("alice")
    honest = await stack.add_node(double.url, name="honest")
    await stack.wait_nodes_serving(MODEL)
    rogue = await rogue_node(stack)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "stream please"}], "stream": True}
    async with stack.client.stream("POST", "/api/v1/jobs", json=body, headers=stack.auth(key)) as r:
        reader = SSEReader(r)
        yield LiveStream(key, honest, rogue, reader, await read_until(reader, until))
