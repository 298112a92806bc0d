"""Broadcasts key invalidations between control-plane replicas so a revocation holds everywhere at once."""

from __future__ import annotations

from collections.abc import Iterable

import structlog

import protocol
from control_plane.accounts.auth import Authenticator
from control_plane.bus import Bus
from protocol import subjects

log = structlog.get_logger("control_plane.accounts")


class KeyEvents:
    """Invalidates this replica's auth cache at once and tells every other replica to do the same."""

    def __init__(self, bus: Bus, auth: Authenticator, *, replica_id: str) -> None:
        self._bus = bus
        self._auth = auth
        self._replica_id = replica_id

    async def start(self) -> None:
        async def on_event(msg) -> None:
            try:
                event = protocol.decode(msg.data, protocol.KeysInvalidated)
            except protocol.DecodeError:
                return  # another kind of control event: not ours
            self._apply(event)
            log.info("keys_invalidated", key_ids=list(event.key_ids), account_id=event.account_id,
                     origin=event.origin)
        await self._bus.subscribe(subjects.control_events(), on_event)

    def _apply(self, event: protocol.KeysInvalidated) -> None:
        for key_id in event.key_ids:
            self._auth.invalidate(key_id)
        if event.account_id is not None:
            self._auth.invalidate(account_id=event.account_id)

    async def invalidate(self, key_ids: Iterable[str] = (), *, account_id: str | None = None) -> None:
        """Drop keys here now, then broadcast; a lost broadcast is bounded by the cache TTL."""
        event = protocol.KeysInvalidated(key_ids=tuple(key_ids), account_id=account_id, origin=self._replica_id)
        self._apply(event)
        try:
            await self._bus.publish(subjects.control_events(), event)
        except Exception as exc:  # NATS down: other replicas fall back to the cache TTL
            log.warning("key_invalidation_not_broadcast", error=str(exc), key_ids=list(event.key_ids),
                        account_id=account_id, detail="other replicas drop the key when its cache entry expires")
