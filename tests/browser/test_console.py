"""The console's journeys in a real browser (Debian chromium via Playwright) against a real stack."""

from __future__ import annotations

import re

import httpx
from playwright.async_api import expect

from control_plane.accounts.service import ensure_account
from control_plane.console.sessions import SessionStore
from node_agent.agent import NodeAgent
from node_agent.engines.registry import create_engine
from node_agent.settings import NodeSettings
from tests.browser.conftest import MODEL, shot, sign_in
from tests.fixtures.waiting import wait_until


def nav(page, name: str):
    return page.get_by_role("navigation", name="Main").get_by_role("link", name=name, exact=True)


def _accept_dialogs(page) -> None:
    page.on("dialog", lambda dialog: dialog.accept())


async def test_consumer_streams_a_playground_answer_then_finds_the_job_and_its_cost(context, console_stack):
    stack = console_stack
    key = await stack.key("carol")
    page = await context.new_page()
    await sign_in(page, key)
    await expect(page).to_have_url(re.compile(r"/console/playground$"))
    csp = (await page.request.get("/console/playground")).headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp

    await page.get_by_label("Model").select_option(MODEL)
    await page.get_by_label("Message").fill("Tell me about the network")
    await page.get_by_label("Message").press("Control+Enter")
    output = page.locator("#pg-output")
    # Tokens arrive one after another: some text is shown while the answer is still streaming (read in the
    # page at the moment it is so) ...
    partial = await (await page.wait_for_function(
        """() => { const o = document.getElementById("pg-output");
                   return o.dataset.state === "streaming" && o.textContent.length > 0 ? o.textContent : null; }""",
    )).json_value()
    # ... and more follows until the job is done.
    await expect(output).to_have_attribute("data-state", "done", timeout=30_000)
    final = await output.text_content()
    assert len(final) > len(partial) and final.startswith(partial)
    assert int(await output.get_attribute("data-token-events")) > 1
    job_id = (await page.locator('[data-stat="job"]').text_content()).strip()
    api = (await stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))).json()
    assert api["status"] == "completed" and api["result"]["content"] == final
    await expect(page.locator('[data-stat="model"]')).to_have_text(MODEL)
    await expect(page.locator('[data-stat="credits"]')).to_have_text(f"{api['credits_charged']:,}")
    await expect(page.locator('[data-stat="tokens"]')).to_contain_text(str(api["result"]["usage"]["completion_tokens"]))
    await shot(page, "playground")

    await nav(page, "Jobs").click()
    row = page.locator(f'tr[data-job-id="{job_id}"]')
    await expect(row).to_be_visible()
    await expect(row.locator("[data-cost]")).to_have_text(f"{api['credits_charged']:,}")
    await page.get_by_label("Status").select_option("failed")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator(f'tr[data-job-id="{job_id}"]')).to_have_count(0)
    await expect(page.get_by_text("No jobs match these filters")).to_be_visible()
    await page.get_by_label("Status").select_option("completed")
    await page.get_by_role("button", name="Filter").click()
    await shot(page, "jobs")
    await page.get_by_role("link", name=job_id).click()
    await expect(page.locator("[data-job-status]")).to_have_text("completed")
    await expect(page.locator("[data-job-cost]")).to_contain_text(f"{api['credits_charged']:,}")
    await expect(page.locator("[data-job-output]")).to_have_text(final)
    await shot(page, "job")

    await nav(page, "Credits").click()
    credits = (await stack.client.get("/api/v1/credits", headers=stack.auth(key))).json()
    await expect(page.locator("[data-balance]")).to_have_text(f"{credits['balance']:,}")
    await expect(page.get_by_role("img", name="Credits per model")).to_contain_text(MODEL)
    await shot(page, "credits")


async def test_a_job_list_updates_by_itself_when_a_job_ends(context, console_stack):
    stack = console_stack
    key = await stack.key("dave")
    page = await context.new_page()
    await sign_in(page, key)
    await page.goto("/console/jobs")
    await expect(page.get_by_text("No jobs yet")).to_be_visible()
    job = (await stack.submit(key, model=MODEL)).json()
    row = page.locator(f'tr[data-job-id="{job["id"]}"]')
    await expect(row.locator(".status")).to_have_text("completed", timeout=30_000)  # no reload: SSE
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone
    await expect(row).to_be_visible()
    await shot(page, "phone-jobs")


async def test_consumer_creates_and_revokes_a_key(context, console_stack):
    stack = console_stack
    page = await context.new_page()
    _accept_dialogs(page)
    await sign_in(page, await stack.key("erin"))
    await nav(page, "Keys").click()
    create = page.get_by_role("region", name="Create a key")
    await create.get_by_label("Name", exact=True).fill("ci-pipeline")
    await create.get_by_label("Requests / min").fill("120")
    await create.get_by_role("button", name="Create key").click()
    secret = page.locator("[data-secret]")
    new_key = (await secret.text_content()).strip()
    assert new_key.startswith("inf_")
    await context.grant_permissions(["clipboard-read", "clipboard-write"])
    await page.get_by_role("button", name="Copy", exact=True).click()
    await expect(page.get_by_role("button", name="Copied ✓")).to_be_visible()
    assert (await stack.client.get("/api/v1/credits", headers=stack.auth(new_key))).status_code == 200
    await shot(page, "keys")

    await nav(page, "Keys").click()
    await expect(page.locator("[data-secret]")).to_have_count(0)  # shown once: the page never shows it again
    row = page.locator("tr", has_text="ci-pipeline")
    await expect(row).to_contain_text("120 rpm")
    await row.get_by_text("Edit").click()  # rename, set its model pool, tighten its limit
    await row.get_by_label("Name").fill("ci-renamed")
    await row.get_by_label("Model pool").fill(MODEL)
    await row.get_by_label("Requests / min").fill("60")
    await row.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("status")).to_contain_text("saved")
    row = page.locator("tr", has_text="ci-renamed")
    await expect(row).to_contain_text("60 rpm")
    await expect(row).to_contain_text(MODEL)
    api_key = next(k for k in (await stack.client.get("/api/v1/keys", headers=stack.auth(new_key))).json()["keys"]
                   if k["name"] == "ci-renamed")
    assert api_key["model_pool"] == [MODEL] and api_key["rate_limit_rpm"] == 60
    await row.get_by_role("button", name="Revoke").click()
    await expect(page.locator("tr", has_text="ci-renamed").locator(".status")).to_have_text("revoked")
    refused = await stack.client.get("/api/v1/credits", headers=stack.auth(new_key))
    assert refused.status_code == 403 and "revoked" in refused.json()["error_message"]

    # The API's rule holds here too: a key cannot mint a key wider than itself.
    create = page.get_by_role("region", name="Create a key")
    await create.get_by_label("Name", exact=True).fill("too-wide")
    await create.get_by_label("Requests / min").fill(str(stack.settings.rate_limit_rpm * 10))
    await create.get_by_role("button", name="Create key").click()
    await expect(page.get_by_role("alert")).to_contain_text("wider than the creating key's own limit")
    await expect(page.get_by_text("request id")).to_be_visible()
    await shot(page, "error")


async def test_operator_sees_their_node_go_from_online_to_draining(context, console_stack):
    stack = console_stack
    node = stack.operator_node
    page = await context.new_page()
    _accept_dialogs(page)
    await sign_in(page, await stack.key("opco"))
    await nav(page, "My nodes").click()
    row = page.locator(f'tr[data-node-id="{node.node_id}"]')
    await expect(row.locator("[data-state]")).to_have_text("online")
    await expect(page.locator("tr[data-node-id]")).to_have_count(1)  # only their own node, not gpu-shared
    await expect(page.get_by_text("infernet-node start")).to_be_visible()
    api = (await stack.client.get("/api/v1/nodes", headers=stack.auth(await stack.key("opco")))).json()["nodes"]
    if next(n for n in api if n["id"] == node.node_id).get("reputation") is not None:  # with the trust service
        await expect(row.locator("[data-reputation]")).to_contain_text("%")
    await shot(page, "nodes")
    await row.get_by_role("button", name="Drain").click()
    await expect(page.locator(f'tr[data-node-id="{node.node_id}"] [data-state]')).to_have_text("draining")
    # The drain reached the node itself: an idle node that drains stops.
    await wait_until(lambda: node.task.done(), timeout=30, message="the drained node never stopped")


async def test_admin_registers_a_node_sees_it_come_online_and_grants_credits(context, console_stack):
    stack = console_stack
    admin = await ensure_account(stack.runtime.db, "root")
    from control_plane.accounts.service import create_key

    key = await create_key(stack.runtime.db, admin["id"], admin=True)
    link = await SessionStore(stack.runtime.db).create_login_link(key.key_id)
    page = await context.new_page()
    await page.goto(f"/console/login/{link}")  # the one-time link `make up` prints
    await expect(page).to_have_url(re.compile(r"/console/admin$"))
    await expect(page.locator(f'[data-model="{MODEL}"]')).to_be_visible()
    other = await context.browser.new_context(base_url=stack.url)
    reuse = await other.new_page()
    await reuse.goto(f"/console/login/{link}")  # spent: a second use does not sign in
    await expect(reuse.get_by_text("already used or has expired")).to_be_visible()
    await other.close()

    await nav(page, "All nodes").click()
    await page.get_by_label("Name", exact=True).fill("gpu-new")
    await page.get_by_role("button", name="Register node").click()
    token = (await page.locator("[data-node-token]").text_content()).strip()
    node_id = await page.locator("[data-node-token]").get_attribute("data-node-id")
    row = page.locator(f'tr[data-node-id="{node_id}"]')
    await expect(row.locator("[data-state]")).to_have_text("offline")
    settings = NodeSettings(nats_url=stack.nats_url, node_token=token, engine_url=stack.double.url,
                            max_concurrency=1, advertise_interval_s=0.5, log_format="console", log_level="warning")
    agent = NodeAgent(settings, create_engine("ollama", stack.double.url), node_id=node_id)
    import asyncio

    from tests.harness import RunningNode

    stack.nodes.append(RunningNode(agent, asyncio.create_task(agent.run()), "gpu-new"))
    await expect(row.locator("[data-state]")).to_have_text("online", timeout=30_000)  # live, no reload
    await shot(page, "admin-nodes")

    _accept_dialogs(page)
    await row.get_by_role("button", name="Revoke").click()
    await expect(page.get_by_text("Node gpu-new revoked")).to_be_visible()
    await expect(row.locator("[data-state]")).to_have_text("offline")  # its connection closed, not re-admitted
    revoked_at = await stack.runtime.db.fetchone("get_node_token_hash", {"id": node_id})
    assert revoked_at is not None and revoked_at["revoked_at"] is not None
    await wait_until(lambda: not (agent.nc is not None and agent.nc.is_connected), timeout=30,
                     message="the revoked node is still on the bus")

    before = (await stack.client.get("/api/v1/credits", headers=stack.auth(await stack.key("frank")))).json()
    await nav(page, "Accounts").click()
    frank = page.locator('tr[data-account="frank"]')
    await frank.get_by_placeholder("credits").fill("12345")
    await frank.get_by_role("button", name="Grant").click()
    await expect(page.get_by_text("Credits granted to frank")).to_be_visible()
    after = (await stack.client.get("/api/v1/credits", headers=stack.auth(await stack.key("frank")))).json()
    assert after["balance"] - before["balance"] == 12345
    await expect(page.locator('tr[data-account="frank"] [data-balance]')).to_have_text(f"{after['balance']:,}")
    await shot(page, "admin-accounts")
    create = page.get_by_role("region", name="Create an account")
    await create.get_by_label("Name", exact=True).fill("newco")
    await create.get_by_label("Opening credits").fill("5000")
    await create.get_by_role("button", name="Create account").click()
    first_key = (await page.locator("[data-secret]").text_content()).strip()
    newco = (await stack.client.get("/api/v1/credits", headers=stack.auth(first_key))).json()
    assert newco["balance"] == 5000
    await nav(page, "Network").click()
    await expect(page.locator(f'[data-model="{MODEL}"]')).to_be_visible()
    await shot(page, "admin-overview")


async def test_a_consumer_cannot_open_another_accounts_job_by_url(context, console_stack):
    stack = console_stack
    alice = await stack.key("alice")
    job = (await stack.submit(alice, model=MODEL, messages=[{"role": "user", "content": "alice's secret plan"}])).json()
    page = await context.new_page()
    await sign_in(page, await stack.key("mallory"))
    response = await page.goto(f"/console/jobs/{job['id']}")
    assert response.status == 404
    await expect(page.get_by_role("heading", name="Not found")).to_be_visible()
    assert "secret plan" not in await page.content()
    assert (await page.request.get(f"/console/live/jobs/{job['id']}")).status == 404
    cancel = await page.request.post(f"/console/jobs/{job['id']}/cancel",
                                     form={"_csrf": await page.locator('meta[name="csrf-token"]').get_attribute("content")})
    assert cancel.status in (404,)  # never 303: nothing was cancelled
    await shot(page, "not-found")


async def test_a_write_without_the_csrf_token_is_refused(context, console_stack):
    stack = console_stack
    key = await stack.key("grace")
    page = await context.new_page()
    await sign_in(page, key)
    before = (await stack.client.get("/api/v1/keys", headers=stack.auth(key))).json()["keys"]
    # The session cookie goes along (same browser profile), but the form lacks the CSRF token, or has a wrong one.
    missing = await page.request.post("/console/keys", form={"name": "forged"})
    wrong = await page.request.post("/console/keys", form={"name": "forged", "_csrf": "not-the-token"})
    assert missing.status == 403 and wrong.status == 403
    assert "CSRF" in await missing.text()
    after = (await stack.client.get("/api/v1/keys", headers=stack.auth(key))).json()["keys"]
    assert len(after) == len(before)
    # Outside the browser profile there is no session at all: a forged POST is sent to sign in.
    async with httpx.AsyncClient(base_url=stack.url) as anon:
        r = await anon.post("/console/keys", data={"name": "forged"})
        assert r.status_code == 303 and r.headers["location"].startswith("/console/login")


async def test_revoking_the_key_ends_its_console_session(context, console_stack):
    stack = console_stack
    key = await stack.key("heidi")
    page = await context.new_page()
    await sign_in(page, key)
    await nav(page, "Jobs").click()
    key_id = next(k["id"] for k in (await stack.client.get("/api/v1/keys", headers=stack.auth(key))).json()["keys"])
    assert (await stack.client.delete(f"/api/v1/keys/{key_id}", headers=stack.auth(key))).status_code == 200
    # The live view notices within seconds and goes to the sign-in page; so does any next request.
    await expect(page).to_have_url(re.compile(r"/console/login\?expired=1$"), timeout=30_000)
    await expect(page.get_by_role("status")).to_contain_text("Your session ended")
    assert (await page.request.get("/console/keys", max_redirects=0)).status == 303
