"""Browser-tier fixtures: one Debian chromium per session (Playwright drives it), one shared stack per package.

Playwright's own browser download cannot work here: the tests launch /usr/bin/chromium (the Makefile
installs it with apt). Without it they are skipped with the reason printed; `make test` installs it first.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from tests.doubles.ollama_double import OllamaDouble
from tests.fixtures.nats import fresh_nats
from tests.harness import Stack

CHROMIUM = os.environ.get("INFERNET_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
#: The model the stack's nodes serve; its 30 tokens come 50 ms apart so a page can see them arrive.
MODEL = "qwen2.5:7b"
#: Where screenshots go: test artifacts under $TMPDIR; INFERNET_CONSOLE_SHOTS overrides (docs/img/console).
SHOTS = Path(os.environ.get("INFERNET_CONSOLE_SHOTS") or Path(tempfile.gettempdir()) / "infernet-console-screenshots")


def _chromium() -> str | None:
    found = CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium")
    return found


@pytest.fixture(scope="session")
async def browser():
    path = _chromium()
    if path is None:
        pytest.skip(f"chromium is not installed ({CHROMIUM}); `make test` installs it with apt-get "
                    "(apt-get install chromium) when apt is available")
    from playwright.async_api import async_playwright

    pw = await async_playwright().start()
    try:
        b = await pw.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()
    finally:
        await pw.stop()


@pytest.fixture(scope="package")
async def console_stack(nats_server, pg_server):
    """A control plane with two nodes (one run by operator account `opco`) on a database of its own."""
    name = f"t_{uuid.uuid4().hex}"
    url = pg_server.create_database(name)
    nats_url = await fresh_nats(nats_server)
    async with OllamaDouble(models=[MODEL], delay_ms=50, token_count=30) as double:
        stack = await Stack(nats_url, url).start()
        stack.double = double
        try:
            await stack.add_node(double.url, name="gpu-shared")
            # Heard every 3 s: once drained and stopped it stays "draining" for 9 s before it counts as offline,
            # time enough for a loaded machine to render the page that shows it.
            stack.operator_node = await stack.add_node(double.url, name="opco-gpu-1", operator="opco", interval=3.0)
            await stack.wait_nodes_serving(MODEL, 2)
            yield stack
        finally:
            await stack.stop()
            pg_server.drop_database(name)


@pytest.fixture
async def context(browser, console_stack):
    """A fresh browser profile (no cookies) per test, at a laptop's size."""
    ctx = await browser.new_context(base_url=console_stack.url, viewport={"width": 1366, "height": 900})
    ctx.set_default_timeout(30_000)
    problems: list[str] = []  # script errors, and anything the Content-Security-Policy blocked
    ctx.on("weberror", lambda e: problems.append(f"script error: {e.error}"))
    ctx.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    try:
        yield ctx
    finally:
        await ctx.close()
    assert problems == [], problems


async def shot(page, name: str) -> Path:
    """Save a full-page screenshot as a test artifact (and for docs/console.md when INFERNET_CONSOLE_SHOTS says)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    path = SHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def sign_in(page, key: str) -> None:
    """Sign in through the login form, as a person would."""
    await page.goto("/console/login")
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/console/**")
    assert "/console/login" not in page.url, await page.content()
