"""`/api/v1/webhooks/secret`: the secret an account's webhooks are signed with, and its rotation."""

from __future__ import annotations

from litestar import Controller, get, post
from litestar.di import NamedDependency
from msgspec import Struct

from control_plane.accounts.auth import Principal
from control_plane.jobs.schemas import iso
from control_plane.runtime import Runtime
from control_plane.webhooks import signing
from control_plane.webhooks.worker import account_secret, rotate_secret


class WebhookSecret(Struct):
    secret: str
    created_at: str
    header: str = signing.HEADER


class WebhooksController(Controller):
    path = "/api/v1/webhooks"
    tags = ["webhooks"]

    @get("/secret", summary="The secret this account's webhooks are signed with (created on first use)")
    async def secret(self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> WebhookSecret:
        row = await account_secret(runtime.db, principal.account_id)
        return WebhookSecret(secret=row["secret"], created_at=iso(row["created_at"]))

    @post("/secret/rotate", status_code=200, summary="Replace the webhook signing secret")
    async def rotate(self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> WebhookSecret:
        row = await rotate_secret(runtime.db, principal.account_id)
        return WebhookSecret(secret=row["secret"], created_at=iso(row["created_at"]))
