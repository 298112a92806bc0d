"""OpenAI chat messages as job messages: text parts joined, images (data URLs, or http(s) URLs fetched here
under the webhook address rules and a size limit) as base64, assistant tool calls and tool results kept."""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from control_plane.errors import BadRequest
from control_plane.jobs import tools as tool_rules
from control_plane.webhooks import targets

_ROLES = {"developer": "system"}
_DATA_URL = re.compile(r"^data:(image/[A-Za-z0-9.+-]+)?(;[^,]*)?;base64,(.*)$", re.S)
_IMAGE_PARTS = ("image_url", "input_image")


def _image_url(part: dict[str, Any]) -> Any:
    url = part.get("image_url")
    return url.get("url") if isinstance(url, dict) else url


def remote_image_urls(messages: list[Any]) -> list[str]:
    """The http(s) image URLs in a request's messages (to fetch before the job is built)."""
    found = []
    for m in messages:
        for part in m.content if isinstance(m.content, list) else ():
            if isinstance(part, dict) and part.get("type") in _IMAGE_PARTS:
                url = _image_url(part)
                if isinstance(url, str) and url.split(":", 1)[0].lower() in ("http", "https"):
                    found.append(url)
    return found


async def fetch_images(urls: list[str], *, allow_private: bool, max_bytes: int, timeout: float) -> dict[str, str]:
    """url -> base64 of its body; a URL that is refused, fails or is too large is a 400 naming it."""
    fetched: dict[str, str] = {}
    total = 0
    if not urls:
        return fetched
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        for url in dict.fromkeys(urls):
            body = await _fetch(client, url, allow_private=allow_private, limit=max_bytes - total)
            total += len(body)
            fetched[url] = base64.b64encode(body).decode()
    return fetched


async def _fetch(client: httpx.AsyncClient, url: str, *, allow_private: bool, limit: int) -> bytes:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host or parts.username or parts.password or len(url) > targets.MAX_URL_LENGTH:
        raise BadRequest("image_url must be an http(s) URL with a host and no credentials", param="messages")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        address = await targets.resolve(host, port, allow_private=allow_private)
    except targets.TargetRefused as exc:
        raise BadRequest(f"image_url {url[:200]}: {str(exc).replace('webhooks', 'images')}", param="messages") from None
    except (OSError, ValueError) as exc:
        raise BadRequest(f"image_url {url[:200]} could not be fetched: {exc}", param="messages") from None
    netloc = (f"[{address}]" if ":" in address else address) + (f":{parts.port}" if parts.port else "")
    pinned = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    try:
        async with client.stream("GET", pinned, headers={"Host": parts.netloc}, extensions=extensions) as response:
            if response.status_code != 200:
                raise BadRequest(f"image_url {url[:200]} answered HTTP {response.status_code}", param="messages")
            chunks, size = [], 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > limit:
                    raise BadRequest(f"images are larger than {limit} bytes in all (INFERNET_MAX_IMAGE_BYTES)",
                                     param="messages")
                chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise BadRequest(f"image_url {url[:200]} could not be fetched: {type(exc).__name__}", param="messages") from None
    return b"".join(chunks)


def _decode_data_url(url: str, where: str) -> str:
    found = _DATA_URL.match(url)
    if found is None:
        raise BadRequest(f"{where}: an image must be a data:image/...;base64, URL or an http(s) URL", param="messages")
    data = re.sub(r"\s+", "", found.group(3))
    try:
        base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{where}: the image's base64 data is malformed", param="messages") from None
    return data


def job_messages(messages: list[Any], fetched: dict[str, str], *, max_image_bytes: int) -> list[dict[str, Any]]:
    """The job payload's messages: role, content and, when present, images, tool_calls, tool_call_id, name."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for tool results
    image_bytes = 0
    for i, m in enumerate(messages):
        texts, images = [], []
        content = m.content
        if isinstance(content, list):
            for j, part in enumerate(content):
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("text", "input_text", "output_text") and isinstance(part.get("text"), str):
                    texts.append(part["text"])
                elif kind in _IMAGE_PARTS and isinstance(_image_url(part), str):
                    url = _image_url(part)
                    data = fetched.get(url) or _decode_data_url(url, f"messages[{i}].content[{j}]")
                    image_bytes += len(data) * 3 // 4
                    images.append(data)
                else:
                    raise BadRequest(f"messages[{i}].content[{j}] is a {kind!r} part; text and image_url parts are "
                                     "supported", param=f"messages[{i}].content")
        elif isinstance(content, str):
            texts.append(content)
        msg: dict[str, Any] = {"role": _ROLES.get(m.role, m.role), "content": "\n".join(texts)}
        if images:
            if m.role != "user":
                raise BadRequest(f"messages[{i}]: images are allowed in user messages only", param="messages")
            msg["images"] = images
        calls = getattr(m, "tool_calls", None)
        if calls:
            if m.role != "assistant":
                raise BadRequest(f"messages[{i}]: only assistant messages carry tool_calls", param="messages")
            msg["tool_calls"] = tool_rules.message_calls(calls, i)
            names.update({c["id"]: c["name"] for c in msg["tool_calls"]})
        if m.role == "tool":
            call_id = getattr(m, "tool_call_id", None)
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"messages[{i}]: a tool message needs tool_call_id", param=f"messages[{i}].tool_call_id")
            msg["tool_call_id"] = call_id
            name = names.get(call_id) or m.name
            if name:
                msg["name"] = name
        out.append(msg)
    if image_bytes > max_image_bytes:
        raise BadRequest(f"images are larger than {max_image_bytes} bytes in all (INFERNET_MAX_IMAGE_BYTES)",
                         param="messages")
    return out
