"""Images in /v1 chat messages with the official `openai` SDK: data URLs and http(s) URLs (fetched by the control
plane under the webhook address rules and a size limit), placed only on vision-capable nodes."""

from __future__ import annotations

import asyncio
import base64

import openai
import pytest

from tests.doubles.ollama_double import OllamaDouble
from tests.doubles.openai_double import OpenAIDouble
from tests.harness import Stack

VISION, PLAIN = "llava:7b", "qwen2.5:7b"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
B64 = base64.b64encode(PNG).decode()


def ask(url: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in this image?"},
                                         {"type": "image_url", "image_url": {"url": url}}]}]


class ImageServer:
    """A plain HTTP server on 127.0.0.1 answering every GET with `body` (an image host for the tests)."""

    def __init__(self, body: bytes) -> None:
        self.body, self.hits = body, 0

    async def __aenter__(self) -> ImageServer:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/cat.png"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.hits += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                     % len(self.body) + self.body)
        await writer.drain()
        writer.close()


async def test_data_url_images_reach_vision_models_only(stack):
    async with OllamaDouble(models=[VISION, PLAIN]) as d:
        key = await stack.ready(d, VISION)
        async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60) as oa:
            c = await oa.chat.completions.create(model=VISION, messages=ask(f"data:image/png;base64,{B64}"))
            sent = d.requests_to("/api/chat")[-1].body["messages"]
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=PLAIN, messages=ask(f"data:image/png;base64,{B64}"))
            assert err.value.code == "capability_unavailable" and err.value.param == "messages"
            assert "image" in err.value.message
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=VISION, messages=ask("data:image/png;base64,@@not base64@@"))
            assert err.value.param == "messages" and "base64" in err.value.message
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=VISION, messages=ask("ftp://example.com/x.png"))
            assert err.value.param == "messages"
    assert c.choices[0].message.content
    assert sent == [{"role": "user", "content": "What is in this image?", "images": [B64]}]


async def test_http_image_urls_follow_the_webhook_address_rules_and_the_size_limit(stack, nats_url, database_url):
    async with OllamaDouble(models=[VISION]) as d, ImageServer(PNG) as host:
        key = await stack.ready(d, VISION)
        async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60) as oa:
            # A loopback image host is refused: the control plane never fetches from private addresses ...
            with pytest.raises(openai.BadRequestError) as err:
                await oa.chat.completions.create(model=VISION, messages=ask(host.url))
            assert err.value.param == "messages" and "non-public" in err.value.message
            assert host.hits == 0
        # ... unless the self-hoster allows it, and then within INFERNET_MAX_IMAGE_BYTES.
        open_stack = await Stack(nats_url, database_url, {"webhook_allow_private": True,
                                                           "max_image_bytes": 2 * len(PNG)}).start()
        try:
            key = await open_stack.ready(d, VISION)
            async with openai.AsyncOpenAI(base_url=f"{open_stack.url}/v1", api_key=key, max_retries=0, timeout=60) as oa:
                await oa.chat.completions.create(model=VISION, messages=ask(host.url))
                assert d.requests_to("/api/chat")[-1].body["messages"][0]["images"] == [B64]
                host.body = PNG * 3
                with pytest.raises(openai.BadRequestError) as err:
                    await oa.chat.completions.create(model=VISION, messages=ask(host.url))
                assert "INFERNET_MAX_IMAGE_BYTES" in err.value.message
        finally:
            await open_stack.stop()


async def test_images_through_the_openai_compatible_engine_as_data_url_parts(stack):
    async with OpenAIDouble(models=["vlm"]) as d:
        d.capabilities = {"vlm": ["completion", "multimodal"]}
        key = await stack.ready(d, "vlm", engine="openai")
        async with openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key=key, max_retries=0, timeout=60) as oa:
            await oa.chat.completions.create(model="vlm", messages=ask(f"data:image/png;base64,{B64}"))
    assert d.requests[-1]["body"]["messages"][0]["content"] == [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}}]
