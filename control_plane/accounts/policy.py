"""What a key may set on keys: an admin key anything; any other key nothing wider than it has itself.

A non-admin key mints keys whose limits and expiry are at most its own (absent: its own) and which spend from
its budget (the budget of the key at the root of the minting chain), so minting keys never multiplies an
account's rate budget. On existing keys it may only tighten: lower a limit, bring an expiry earlier. Clearing a
limit or an expiry, raising a limit and un-expiring a key are for admin keys.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from control_plane.accounts.auth import Principal
from control_plane.errors import Forbidden
from control_plane.settings import Settings

_ASK_ADMIN = "ask an administrator (an admin key) to change it"


def _effective(own: int | None, default: int) -> int:
    """A key's limit as enforced: its own, else the plan default; 0 means unlimited."""
    return default if own is None else own


def _within(value: int | None, bound: int, default: int) -> bool:
    """Whether a limit (None: the plan default) is no wider than `bound` (0: unlimited)."""
    if bound == 0:
        return True
    effective = _effective(value, default)
    return effective != 0 and effective <= bound


def minted_key(principal: Principal, fields: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The settings of a key `principal` creates: unchanged for an admin, else bounded by the creator (403)."""
    if principal.is_admin:
        return fields
    out = dict(fields)
    for field, own, default in (("rate_limit_rpm", principal.rate_limit_rpm, settings.rate_limit_rpm),
                                ("rate_limit_tpm", principal.rate_limit_tpm, settings.rate_limit_tpm)):
        bound = _effective(own, default)
        if out.get(field) is None:
            out[field] = own  # the creator's own limit (None: both follow the plan default)
        elif not _within(out[field], bound, default):
            raise Forbidden(f"{field} {out[field]} is wider than the creating key's own limit ({bound}); a key "
                            f"can only create keys with limits no wider than its own; {_ASK_ADMIN}", param=field)
    if principal.expires_at is not None:
        if out.get("expires_at") is None:
            out["expires_at"] = principal.expires_at
        elif out["expires_at"] > principal.expires_at:
            raise Forbidden(f"expires_at is later than the creating key's own expiry "
                            f"({principal.expires_at.isoformat()}); {_ASK_ADMIN}", param="expires_at")
    out["budget_key_id"] = principal.budget_key_id or principal.key_id
    return out


def check_update(principal: Principal, current: dict[str, Any], changes: dict[str, Any], settings: Settings) -> None:
    """403 unless an admin, or the changes only tighten the key's limits and expiry."""
    if principal.is_admin:
        return
    for field, default in (("rate_limit_rpm", settings.rate_limit_rpm), ("rate_limit_tpm", settings.rate_limit_tpm)):
        if field not in changes or changes[field] == current.get(field):
            continue
        bound = _effective(current.get(field), default)
        if changes[field] is None or not _within(changes[field], bound, default):
            raise Forbidden(f"{field} can only be lowered by this key (now {bound or 'unlimited'}); raising or "
                            f"clearing a limit needs an admin key; {_ASK_ADMIN}", param=field)
    if "expires_at" in changes and changes["expires_at"] != current.get("expires_at"):
        new: datetime | None = changes["expires_at"]
        old: datetime | None = current.get("expires_at")
        if new is None or (old is not None and new > old):
            raise Forbidden("expires_at can only be brought earlier by this key; extending or clearing an expiry "
                            f"needs an admin key; {_ASK_ADMIN}", param="expires_at")
