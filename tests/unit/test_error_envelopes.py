"""Every error reaches the caller in its envelope, and a crash never leaks a stack trace."""

from __future__ import annotations

from litestar import Litestar, get
from litestar.testing import TestClient

from control_plane.errors import ModelNotFound
from control_plane.lib.request_id import request_id_middleware
from control_plane.lib.responses import EXCEPTION_HANDLERS


@get("/api/v1/boom")
async def boom() -> None:
    raise RuntimeError("secret internal detail at /srv/app.py line 42")


@get("/api/v1/missing-model")
async def missing() -> None:
    raise ModelNotFound("Model x:1b is not registered on the network")


@get("/v1/boom")
async def openai_boom() -> None:
    raise RuntimeError("secret")


app = Litestar([boom, missing, openai_boom], exception_handlers=EXCEPTION_HANDLERS,
               middleware=[request_id_middleware])


def test_unexpected_errors_are_500_internal_error_without_details():
    with TestClient(app) as client:
        r = client.get("/api/v1/boom")
    assert r.status_code == 500
    body = r.json()
    assert body["error"] == "internal_error"
    assert "secret" not in r.text and "Traceback" not in r.text and ".py" not in r.text
    assert r.headers["x-request-id"]


def test_domain_errors_keep_their_code_in_every_envelope():
    with TestClient(app) as client:
        v1 = client.get("/api/v1/missing-model")
        v2 = client.get("/api/v1/missing-model", headers={"X-API-Version": "2"})
        oai = client.get("/v1/boom")
    assert (v1.status_code, v1.json()) == (404, {"error": "model_not_found",
                                                 "error_message": "Model x:1b is not registered on the network"})
    assert v2.headers["content-type"].startswith("application/problem+json")
    assert v2.json()["type"].endswith("/model_not_found") and v2.json()["status"] == 404
    assert oai.status_code == 500 and oai.json()["error"]["type"] == "server_error" and "secret" not in oai.text


def test_caller_request_id_is_kept():
    with TestClient(app) as client:
        r = client.get("/api/v1/missing-model", headers={"X-Request-Id": "trace-abc.123"})
    assert r.headers["x-request-id"] == "trace-abc.123"
