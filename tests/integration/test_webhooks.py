"""Webhooks on the real stack: signed POST when a job ends, retries with backoff, attempts on the job,
private targets refused, delivery surviving a control-plane restart, and giving up after the window."""

from __future__ import annotations

import json
import socket

import pytest

from control_plane.webhooks import signing
from control_plane.webhooks.targets import is_public
from tests.doubles.ollama_double import OllamaDouble
from tests.doubles.webhook_receiver import WebhookReceiver
from tests.fixtures.waiting import wait_until
from tests.harness import Stack

FAST = {"webhook_allow_private": True, "webhook_backoff_s": 0.2, "webhook_poll_s": 0.05}
#: The production setting: private targets refused at submission and again after each DNS resolution.
STRICT = FAST | {"webhook_allow_private": False}


@pytest.fixture
async def hooks_stack(nats_url, database_url):
    s = await Stack(nats_url, database_url, dict(FAST)).start()
    try:
        yield s
    finally:
        await s.stop()


async def delivery(stack: Stack, key: str, job_id: str, status: str, timeout: float = 30) -> dict:
    async def done():
        job = (await stack.client.get(f"/api/v1/jobs/{job_id}", headers=stack.auth(key))).json()
        return job if job.get("webhook", {}).get("status") == status else None
    return await wait_until(done, timeout=timeout, message=f"webhook of {job_id} never became {status}")


async def test_signed_delivery_retried_until_accepted(hooks_stack, double):
    s = hooks_stack
    key = await s.ready(double, "qwen2.5:7b")
    secret = (await s.client.get("/api/v1/webhooks/secret", headers=s.auth(key))).json()
    assert secret["secret"].startswith("whsec_") and secret["header"] == "Infernet-Signature"

    async with WebhookReceiver(fail_first=2) as rx:
        r = await s.submit(key, model="qwen2.5:7b", webhook_url=rx.url)
        assert r.status_code == 200, r.text
        job_id = r.json()["id"]
        job = await delivery(s, key, job_id, "delivered")

    assert job["status"] == "completed"
    attempts = job["webhook"]["attempts"]
    assert [a["attempt"] for a in attempts] == [1, 2, 3]
    assert [a["status_code"] for a in attempts] == [500, 500, 200]
    assert attempts[0]["error"] == "HTTP 500" and attempts[2]["error"] is None
    assert job["webhook"]["url"] == rx.url and "next_attempt_at" not in job["webhook"]
    assert len(rx.received) == 3
    ids = {m.headers["infernet-webhook-id"] for m in rx.received}
    assert len(ids) == 1 and ids == {job["webhook"]["id"]}
    assert [m.headers["infernet-webhook-attempt"] for m in rx.received] == ["1", "2", "3"]
    for m in rx.received:
        assert m.path == "/hooks/infernet" and m.headers["content-type"] == "application/json"
        assert signing.verify(secret["secret"], m.body, m.headers["infernet-signature"])
        assert not signing.verify(secret["secret"], m.body + b" ", m.headers["infernet-signature"])
        assert not signing.verify("whsec_wrong", m.body, m.headers["infernet-signature"])
    event = json.loads(rx.received[-1].body)
    assert event["type"] == "job.completed" and event["id"] == job["webhook"]["id"]
    assert event["data"]["id"] == job_id and event["data"]["status"] == "completed"
    assert event["data"]["result"]["content"] == job["result"]["content"]

    # Rotating the secret signs later deliveries with the new one.
    rotated = (await s.client.post("/api/v1/webhooks/secret/rotate", headers=s.auth(key))).json()
    assert rotated["secret"] != secret["secret"]
    async with WebhookReceiver() as rx:
        job_id = (await s.submit(key, model="nope:1b", webhook_url=rx.url)).json().get("id")
        assert job_id is None  # refused at submission: no job, no webhook
        job_id = (await s.submit(key, model="qwen2.5:7b", webhook_url=rx.url)).json()["id"]
        await delivery(s, key, job_id, "delivered")
        assert signing.verify(rotated["secret"], rx.received[0].body, rx.received[0].headers["infernet-signature"])


async def test_failed_and_cancelled_jobs_are_delivered_too(hooks_stack):
    s = hooks_stack
    key = await s.key()
    async with OllamaDouble(models=["qwen2.5:7b"], stall_after=0) as d, WebhookReceiver() as rx:
        await s.add_node(d.url)
        await s.wait_nodes_serving("qwen2.5:7b")
        running = (await s.submit(key, model="qwen2.5:7b", webhook_url=rx.url)).json()["id"]
        await d.wait_active(1)
        queued = (await s.submit(key, model="qwen2.5:7b", webhook_url=rx.url)).json()["id"]
        job = (await s.client.get(f"/api/v1/jobs/{queued}", headers=s.auth(key))).json()
        assert job["webhook"] == {"url": rx.url, "status": "waiting"}
        await s.client.delete(f"/api/v1/jobs/{queued}", headers=s.auth(key))
        await delivery(s, key, queued, "delivered")
        d.configure(error_after=0, stall_after=None)
        d.release()
        job = await s.wait_job(key, running)
        await delivery(s, key, running, "delivered")
    events = {json.loads(m.body)["data"]["id"]: json.loads(m.body)["type"] for m in rx.received}
    assert events == {queued: "job.cancelled", running: "job." + job["status"]}


async def test_private_targets_are_refused_unless_allowed(stack, double):
    key = await stack.ready(double, "qwen2.5:7b")
    for url in ("http://127.0.0.1:9/x", "http://localhost/x", "http://10.1.2.3/x", "http://[::1]/x",
                "http://169.254.169.254/latest/meta-data", "http://[64:ff9b::7f00:1]/", "http://[64:ff9b::a9fe:a9fe]/",
                "http://[2002:7f00:1::1]/", "http://[::127.0.0.1]/", "http://[::ffff:10.0.0.1]/", "http://127.1/",
                "ftp://example.com/x", "http://user:pw@example.com/x",
                "not a url"):
        r = await stack.submit(key, model="qwen2.5:7b", webhook_url=url)
        assert (r.status_code, r.json()["error"]) == (400, "bad_request"), (url, r.text)
        assert "webhook_url" in r.json()["error_message"]
    r = await stack.submit(key, model="qwen2.5:7b", webhook_url="https://hooks.example.com/infernet")
    assert r.status_code == 200


async def test_a_name_resolving_to_a_private_address_is_refused_at_delivery(nats_url, database_url, double):
    # This machine's own host name: a DNS name (so submission cannot judge it) that the system resolver maps
    # to a loopback or private address (/etc/hosts), where a receiver listens.
    host = socket.gethostname()
    resolved = sorted({info[4][0] for info in socket.getaddrinfo(host, None, socket.AF_INET, socket.SOCK_STREAM)})
    assert resolved and not any(is_public(a) for a in resolved), f"{host} resolves to {resolved} here"
    async with WebhookReceiver(host=resolved[0]) as rx:
        url = f"http://{host}:{rx.port}/hooks/infernet"
        s = await Stack(nats_url, database_url, dict(STRICT)).start()
        try:
            key = await s.ready(double, "qwen2.5:7b")
            r = await s.submit(key, model="qwen2.5:7b", webhook_url=url)
            assert r.status_code == 200, r.text  # a name passes submission...
            job = await delivery(s, key, r.json()["id"], "failed")  # ...and is refused once resolved, for good
        finally:
            await s.stop()
        [attempt] = job["webhook"]["attempts"]
        assert "non-public address" in attempt["error"] and attempt["status_code"] is None
        assert rx.received == []
        # The control: the same URL reaches the receiver when private targets are allowed, so the refusal
        # above was the address check, not an unreachable target.
        s = await Stack(nats_url, database_url, dict(FAST)).start()
        try:
            await s.add_node(double.url)
            await s.wait_nodes_serving("qwen2.5:7b")
            job_id = (await s.submit(key, model="qwen2.5:7b", webhook_url=url)).json()["id"]
            await delivery(s, key, job_id, "delivered")
        finally:
            await s.stop()
        assert len(rx.received) == 1


async def test_delivery_survives_a_control_plane_restart(nats_url, database_url, double):
    a = await Stack(nats_url, database_url, dict(FAST)).start()
    async with WebhookReceiver() as rx:
        rx.always = 503
        try:
            key = await a.ready(double, "qwen2.5:7b")
            job_id = (await a.submit(key, model="qwen2.5:7b", webhook_url=rx.url)).json()["id"]
            await wait_until(lambda: len(rx.received) >= 2, timeout=30, message="no webhook attempts")
        finally:
            await a.stop()
        rx.always = None
        b = await Stack(nats_url, database_url, dict(FAST)).start()
        try:
            job = await delivery(b, key, job_id, "delivered")
        finally:
            await b.stop()
    codes = [x["status_code"] for x in job["webhook"]["attempts"]]
    assert codes[-1] == 200 and set(codes[:-1]) == {503} and len(codes) >= 3


async def test_delivery_gives_up_after_the_retry_window(nats_url, database_url, double):
    s = await Stack(nats_url, database_url, FAST | {"webhook_retry_window_s": 1.0}).start()
    try:
        async with WebhookReceiver() as rx:
            rx.always = 500
            key = await s.ready(double, "qwen2.5:7b")
            job_id = (await s.submit(key, model="qwen2.5:7b", webhook_url=rx.url)).json()["id"]
            job = await delivery(s, key, job_id, "failed")
        assert len(job["webhook"]["attempts"]) == len(rx.received) >= 2
        assert all(a["status_code"] == 500 for a in job["webhook"]["attempts"])
    finally:
        await s.stop()
