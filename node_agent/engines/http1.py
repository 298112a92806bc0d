"""A small HTTP/1.1 client over persistent asyncio connections: the node's hot path to a local engine.

Why not httpx: a job's engine call is one POST and a short NDJSON stream, and with a fast engine the
general-purpose client's per-request work (request and response models, header objects, the transport
stack) cost the node agent more CPU than everything else a job does. This client does only what an engine
API needs: `POST`/`GET` with a body, a status line, headers, and a body that is fixed-length, chunked or
read to EOF, streamed line by line; idle connections are kept and reused.

Errors: transport failures (refused, reset, EOF mid-response, timeouts) raise `ConnectionError` (a
`TimeoutError` for timeouts); a response is returned whatever its status, for the caller to map.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

__all__ = ["HttpClient", "Response"]

_MAX_HEADER_LINE = 64 * 1024
_MAX_IDLE = 64


class Response:
    """One response: status and headers read; the body is read with `read()` or `lines()`, once."""

    __slots__ = ("status", "headers", "_client", "_reader", "_writer", "_length", "_chunked", "_left",
                 "_done", "_reusable")

    def __init__(self, client: HttpClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 status: int, headers: dict[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._client, self._reader, self._writer = client, reader, writer
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._length = int(length) if length is not None and not self._chunked else None
        self._left = 0
        self._done = False
        self._reusable = headers.get("connection", "").lower() != "close" and (self._chunked or self._length is not None)

    async def _pieces(self, timeout: float | None) -> AsyncIterator[bytes]:
        """The body as it arrives (chunk framing removed)."""
        reader = self._reader
        try:
            if self._chunked:
                while True:
                    async with asyncio.timeout(timeout):
                        size_line = await reader.readline()
                        if not size_line.endswith(b"\n"):
                            raise ConnectionError("connection closed mid-response")
                        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                        if size == 0:
                            while (trailer := await reader.readline()) not in (b"\r\n", b"\n"):
                                if not trailer:
                                    raise ConnectionError("connection closed mid-response")
                            break
                        data = await reader.readexactly(size + 2)
                    yield data[:-2]
            elif self._length is not None:
                left = self._length
                while left:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(min(left, 65536))
                    if not data:
                        raise ConnectionError("connection closed mid-response")
                    left -= len(data)
                    yield data
            else:
                while True:
                    async with asyncio.timeout(timeout):
                        data = await reader.read(65536)
                    if not data:
                        break
                    yield data
        except asyncio.IncompleteReadError as exc:
            raise ConnectionError("connection closed mid-response") from exc
        except ValueError as exc:  # a malformed chunk size, or a line past the reader's limit
            raise ConnectionError(f"malformed response body: {exc}") from exc
        self._done = True

    async def read(self, timeout: float | None = None) -> bytes:
        """The whole body; the connection goes back to the pool."""
        try:
            parts = [piece async for piece in self._pieces(timeout)]
        finally:
            self.close()
        return b"".join(parts)

    async def lines(self, timeout: float | None = None) -> AsyncIterator[bytes]:
        """The body split on newlines (without them); a last unterminated line is yielded too."""
        rest = b""
        try:
            async for piece in self._pieces(timeout):
                if rest:
                    piece = rest + piece
                *complete, rest = piece.split(b"\n")
                for line in complete:
                    yield line
            if rest:
                yield rest
        finally:
            self.close()

    async def drain(self, timeout: float) -> None:
        """Read (and drop) what is left of the body once the caller has what it needs (e.g. the chunked body's
        end after a stream's last line), so the connection goes back to the pool; it is closed instead when
        the rest does not come within `timeout`."""
        try:
            async for _ in self._pieces(timeout):
                pass
        except (ConnectionError, TimeoutError):
            pass

    def close(self) -> None:
        """Give the connection back when the body was read whole; otherwise close it (the server sees that)."""
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        if self._done and self._reusable:
            self._client._release(self._reader, writer)
        else:
            writer.close()


class HttpClient:
    """Persistent connections to one `http://host:port` (or https) server."""

    def __init__(self, base_url: str, *, connect_timeout: float = 5.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"an engine URL must be http:// or https://, not {base_url!r}")
        self._ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self._ssl else 80)
        self._prefix = parts.path.rstrip("/")
        self._host_header = parts.netloc.encode()
        self._connect_timeout = connect_timeout
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def request(self, method: str, path: str, body: bytes | None = None, *,
                      content_type: bytes = b"application/json", timeout: float | None = None) -> Response:
        """Send one request and read its status and headers; the body is left to the Response."""
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), (self._prefix + path).encode(), self._host_header)
        if body is not None:
            head += b"Content-Type: %s\r\nContent-Length: %d\r\n" % (content_type, len(body))
        data = head + b"\r\n" + (body or b"")
        while self._idle:
            reader, writer = self._idle.pop()
            if reader.at_eof() or writer.is_closing():
                writer.close()
                continue
            try:  # a kept connection the server closed meanwhile fails before any byte comes back: retry fresh
                return await self._exchange(reader, writer, data, timeout)
            except _StaleConnection:
                continue
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(self.host, self.port, limit=_MAX_HEADER_LINE,
                                                               ssl=self._ssl)
        except TimeoutError as exc:
            raise TimeoutError(f"connecting to {self.host}:{self.port} timed out") from exc
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        try:
            return await self._exchange(reader, writer, data, timeout)
        except _StaleConnection as exc:
            raise ConnectionError(str(exc)) from None

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes,
                        timeout: float | None) -> Response:
        try:
            writer.write(data)
            async with asyncio.timeout(timeout):
                status_line = await reader.readline()
                if not status_line:
                    raise _StaleConnection("connection closed before the response")
                headers: dict[str, str] = {}
                while (line := await reader.readline()) not in (b"\r\n", b"\n"):
                    if not line:
                        raise ConnectionError("connection closed in the response headers")
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
        except (ConnectionResetError, BrokenPipeError) as exc:
            writer.close()
            raise _StaleConnection(f"{self.host}:{self.port}: {exc}") from exc
        except (ConnectionError, TimeoutError, asyncio.CancelledError):
            writer.close()
            raise
        except (OSError, ValueError) as exc:
            writer.close()
            raise ConnectionError(f"{self.host}:{self.port}: {exc}") from exc
        try:
            status = int(status_line.split(None, 2)[1])
        except (IndexError, ValueError):
            writer.close()
            raise ConnectionError(f"malformed status line {status_line[:80]!r}") from None
        return Response(self, reader, writer, status, headers)

    def _release(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._idle) < _MAX_IDLE and not writer.is_closing():
            self._idle.append((reader, writer))
        else:
            writer.close()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []
        for _, writer in idle:
            writer.close()


class _StaleConnection(ConnectionError):
    """A kept-alive connection was closed by the server before it answered."""
