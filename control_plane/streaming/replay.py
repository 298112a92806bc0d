"""Reads a job's stored token chunks back from the INFERNET_TOKENS JetStream stream with batched direct gets."""

from __future__ import annotations

import asyncio

import msgspec
from nats.aio.client import Client as NATS
from nats.js.api import DEFAULT_PREFIX

import protocol
from protocol import subjects

#: Messages asked for per direct-get request; more are fetched page by page.
BATCH = 1024
_DIRECT_GET = f"{DEFAULT_PREFIX}.DIRECT.GET.{subjects.TOKENS_STREAM}"


class ReplayError(Exception):
    """JetStream did not answer the replay request (down, electing a leader, or the stream is missing)."""


async def stored_chunks(nc: NATS, job_id: str, *, start: int = 1,
                        timeout: float = 5.0) -> tuple[list[protocol.TokenChunk], int]:
    """The chunks stored for the job from stream sequence `start` on, in publish order (all attempts;
    malformed ones skipped), and the stream sequence to start from next time."""
    subject = subjects.job_tokens(job_id)
    chunks: list[protocol.TokenChunk] = []
    while True:
        page, next_start, more = await _page(nc, subject, start, timeout)
        for stored_subject, data in page:
            try:
                chunk = protocol.decode(data, protocol.TokenChunk)
            except protocol.DecodeError:
                continue
            # The subject names the node that published the chunk (server-enforced): it must be the chunk's.
            if subjects.publisher_and_job(stored_subject) == (chunk.node_id, chunk.job_id):
                chunks.append(chunk)
        start = next_start
        if not more:
            return chunks, start


async def _page(nc: NATS, subject: str, start: int, timeout: float) -> tuple[list[tuple[str, bytes]], int, bool]:
    """One batched direct get: (payloads, next stream sequence, whether more remain)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[bool, str | None]] = loop.create_future()
    payloads: list[tuple[str, bytes]] = []
    last_seq = start - 1

    async def on_msg(msg) -> None:
        nonlocal last_seq
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            payloads.append((headers.get("Nats-Subject", ""), msg.data))
            last_seq = int(headers.get("Nats-Sequence", last_seq + 1))
        elif not done.done():
            # 204 EOB ends a batch (Nats-Num-Pending says what is left); 404: nothing (more) stored.
            done.set_result((status == "204" and headers.get("Nats-Num-Pending", "0") != "0", status))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        request = msgspec.json.encode({"seq": start, "next_by_subj": subject, "batch": BATCH})
        await nc.publish(_DIRECT_GET, request, reply=inbox)
        try:
            more, status = await asyncio.wait_for(done, timeout)
        except asyncio.TimeoutError:
            raise ReplayError(f"no answer from JetStream within {timeout}s replaying {subject}") from None
    finally:
        await sub.unsubscribe()
    if status not in ("204", "404"):
        raise ReplayError(f"JetStream answered status {status} replaying {subject}")
    return payloads, last_seq + 1, more
