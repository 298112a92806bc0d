"""HTTP routes of `/api/v1/keys`: create (raw key shown once), list, update, revoke the caller's own keys."""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from control_plane.accounts import policy, service
from control_plane.accounts.auth import Principal, require_admin
from control_plane.accounts.schemas import KeyCreate, KeyCreated, KeyList, KeyUpdate, KeyView, key_view
from control_plane.lib.timestamps import parse_timestamp
from control_plane.runtime import Runtime


class KeysController(Controller):
    path = "/api/v1/keys"
    tags = ["keys"]

    @post("/", status_code=201, summary="Create an API key (the raw key is returned once), no wider than the creating key")
    async def create_key(self, data: JSONBody[KeyCreate], principal: NamedDependency[Principal],
                         runtime: NamedDependency[Runtime]) -> KeyCreated:
        if data.admin:
            require_admin(principal, "creating an admin key")
        expires_at = parse_timestamp(data.expires_at, "expires_at")
        bounded = policy.minted_key(principal, {"expires_at": expires_at, "rate_limit_rpm": data.rate_limit_rpm,
                                                "rate_limit_tpm": data.rate_limit_tpm}, runtime.settings)
        created = await service.create_key(
            runtime.db, principal.account_id, name=data.name, admin=data.admin, model_pool=data.model_pool,
            optimize_mode=data.optimize_mode, **bounded,
        )
        return key_view(created.row, key=created.key)

    @get("/", summary="List your API keys (prefixes and settings only)")
    async def list_keys(self, principal: NamedDependency[Principal], runtime: NamedDependency[Runtime]) -> KeyList:
        return KeyList(keys=[key_view(r) for r in await service.list_keys(runtime.db, principal.account_id)])

    @get("/{key_id:str}", summary="One of your API keys")
    async def get_key(self, key_id: FromPath[str], principal: NamedDependency[Principal],
                      runtime: NamedDependency[Runtime]) -> KeyView:
        return key_view(await service.get_key(runtime.db, principal.account_id, key_id))

    @patch("/{key_id:str}", summary="Update a key's name, model pool or optimize mode; tighten its limits or expiry (admin keys: any)")
    async def update_key(self, key_id: FromPath[str], data: JSONBody[KeyUpdate], principal: NamedDependency[Principal],
                         runtime: NamedDependency[Runtime]) -> KeyView:
        changes = data.changes()
        row = await service.update_key(runtime.db, principal.account_id, key_id, changes,
                                       check=lambda current: policy.check_update(principal, current, changes,
                                                                                 runtime.settings))
        await runtime.key_events.invalidate([key_id])
        return key_view(row)

    @delete("/{key_id:str}", status_code=200, summary="Revoke a key permanently, on every replica at once")
    async def revoke_key(self, key_id: FromPath[str], principal: NamedDependency[Principal],
                         runtime: NamedDependency[Runtime]) -> KeyView:
        row = await service.revoke_key(runtime.db, principal.account_id, key_id)
        await runtime.key_events.invalidate([key_id])
        return key_view(row)
