"""A small SSE reader for tests: parses an httpx streaming response into events (comments kept apart)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Event:
    event: str = "message"
    data: str = ""
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSEReader:
    """Iterate `events()` (again after a `break`: it goes on where it stopped); `comments` collects
    comment lines (heartbeats) seen so far."""

    response: httpx.Response
    comments: list[str] = field(default_factory=list)
    _lines: Any = None

    async def events(self, *, comments: bool = False):
        """Events as they complete; with `comments`, comment lines too, as Event(event=":", data=text)."""
        if self._lines is None:
            self._lines = self.response.aiter_lines()
        event = Event()
        lines: list[str] = []
        async for line in self._lines:
            if line == "":
                if lines or event.id is not None or event.event != "message":
                    event.data = "\n".join(lines)
                    yield event
                event, lines = Event(), []
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                if comments:
                    yield Event(event=":", data=line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "data":
                lines.append(value)
            elif name == "event":
                event.event = value
            elif name == "id":
                event.id = value


async def read_until(reader: SSEReader, kind: str) -> list[Event]:
    """The events up to and including the first `kind` event; reading `reader` again goes on after it."""
    events = []
    async for event in reader.events():
        events.append(event)
        if event.event == kind:
            break
    return events


async def collect(response: httpx.Response) -> list[Event]:
    """Every event until the server closes the stream."""
    return [e async for e in SSEReader(response).events()]


def tokens(events: list[Event]) -> list[tuple[int, str]]:
    """(id, text) of the token events."""
    return [(int(e.id), e.json()["text"]) for e in events if e.event == "token"]
