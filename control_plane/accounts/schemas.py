"""Request and response shapes of `/api/v1/keys` and the admin account endpoints."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from control_plane.errors import BadRequest
from control_plane.jobs.schemas import iso
from control_plane.lib.timestamps import Timestamp, parse_timestamp

OptimizeMode = Literal["balanced", "quality", "cost", "latency"]
ModelId = Annotated[str, Meta(min_length=1, max_length=200)]
ModelPool = Annotated[list[ModelId], Meta(min_length=1, max_length=32)]
KeyName = Annotated[str, Meta(max_length=200)]
PerMinute = Annotated[int, Meta(ge=1, le=1_000_000_000)]
Credits = Annotated[int, Meta(ge=0, le=10**15)]


class KeyCreate(Struct, forbid_unknown_fields=True):
    """POST /api/v1/keys body: every field optional."""

    name: KeyName = ""
    model_pool: ModelPool | None = None
    optimize_mode: OptimizeMode = "balanced"
    expires_at: Timestamp | None = None
    rate_limit_rpm: PerMinute | None = None
    rate_limit_tpm: PerMinute | None = None
    #: Admin scope for the new key; only an admin key may grant it.
    admin: bool = False


class KeyUpdate(Struct, forbid_unknown_fields=True):
    """PATCH /api/v1/keys/{id} body: only the fields present change; null clears pool, limits or expiry."""

    name: KeyName | UnsetType = UNSET
    model_pool: ModelPool | None | UnsetType = UNSET
    optimize_mode: OptimizeMode | UnsetType = UNSET
    expires_at: Timestamp | None | UnsetType = UNSET
    rate_limit_rpm: PerMinute | None | UnsetType = UNSET
    rate_limit_tpm: PerMinute | None | UnsetType = UNSET

    def changes(self) -> dict[str, Any]:
        out = {f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f) is not UNSET}
        if "name" in out and out["name"] is None:
            raise BadRequest("name cannot be null", param="name")
        if "optimize_mode" in out and out["optimize_mode"] is None:
            raise BadRequest("optimize_mode cannot be null", param="optimize_mode")
        if out.get("expires_at") is not None:
            out["expires_at"] = parse_timestamp(out["expires_at"], "expires_at")
        return out


class KeyView(Struct):
    """An API key as listed: its prefix and settings, never the key itself."""

    id: str
    name: str
    prefix: str
    status: Literal["active", "revoked", "expired"]
    admin: bool
    model_pool: list[str] | None
    optimize_mode: str
    rate_limit_rpm: int | None
    rate_limit_tpm: int | None
    created_at: str
    expires_at: str | None
    revoked_at: str | None


class KeyCreated(KeyView):
    """A new key: `key` is shown this once; store it now."""

    key: str = ""


class KeyList(Struct):
    keys: list[KeyView]


def key_view(row: dict[str, Any], *, key: str | None = None) -> KeyView:
    if row.get("revoked_at") is not None:
        status = "revoked"
    elif row.get("expires_at") is not None and row["expires_at"] <= datetime.now(timezone.utc):
        status = "expired"
    else:
        status = "active"
    fields = dict(
        id=row["id"], name=row["name"], prefix=row["prefix"], status=status, admin=row["is_admin"],
        model_pool=list(row["model_pool"]) if row.get("model_pool") is not None else None,
        optimize_mode=row.get("optimize_mode") or "balanced", rate_limit_rpm=row.get("rate_limit_rpm"),
        rate_limit_tpm=row.get("rate_limit_tpm"), created_at=iso(row["created_at"]),
        expires_at=iso(row.get("expires_at")), revoked_at=iso(row.get("revoked_at")),
    )
    return KeyCreated(**fields, key=key) if key is not None else KeyView(**fields)


# -- admin ----------------------------------------------------------------------------------------------------
class AccountCreate(Struct, forbid_unknown_fields=True):
    """POST /api/v1/admin/accounts: a new account, its opening grant and its first key."""

    name: Annotated[str, Meta(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]
    #: Opening grant; the server's INFERNET_SIGNUP_CREDITS when absent. 0 makes an account that must be topped up.
    credits: Credits | None = None
    key_name: KeyName = ""
    admin: bool = False


class AccountUpdate(Struct, forbid_unknown_fields=True):
    """PATCH /api/v1/admin/accounts/{id}: deactivate (every key then answers 403) or reactivate."""

    is_active: bool


class AccountView(Struct):
    id: str
    name: str
    is_active: bool
    created_at: str
    balance: int
    reserved: int
    available: int


class AccountCreated(Struct):
    account: AccountView
    key: KeyCreated


class AccountList(Struct):
    accounts: list[AccountView]


class TopUp(Struct, forbid_unknown_fields=True):
    """POST /api/v1/admin/accounts/{id}/credits: add credits (a deposit entry)."""

    amount: Annotated[int, Meta(ge=1, le=10**15)]
    note: Annotated[str, Meta(max_length=500)] | None = None


class NodeRegister(Struct, forbid_unknown_fields=True):
    """POST /api/v1/admin/nodes: register a node, optionally to an operator account (id or name)."""

    name: Annotated[str, Meta(min_length=1, max_length=200)]
    operator: Annotated[str, Meta(min_length=1, max_length=200)] | None = None
    #: Models (glob patterns, "*" for any) the admin vouches for on this node: served without a check. None or
    #: empty: every model the node claims is served only once a known-answer probe verified it.
    models: Annotated[list[Annotated[str, Meta(min_length=1, max_length=200)]], Meta(max_length=64)] | None = None


class NodeRegistered(Struct):
    """The node's token is shown this once: give it to `infernet-node` (INFERNET_NODE_TOKEN)."""

    node_id: str
    name: str
    token: str
    operator_account_id: str | None
