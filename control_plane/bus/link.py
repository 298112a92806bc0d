"""Whether this replica's NATS connection is up, since when it is down, and who is told when that changes."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("control_plane.bus")


class BusLink:
    """Fed by nats-py's disconnected/reconnected callbacks; read by whatever must act on a lost bus (streams,
    the sweeper). Listeners are plain callables taking `up` (True: back, False: lost), called on the event loop."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        #: When the connection was lost (monotonic); None while it is up.
        self.lost_since: float | None = None
        #: When it last came back (monotonic); None if it never went away.
        self.restored_at: float | None = None
        self._listeners: list[Callable[[bool], None]] = []

    @property
    def up(self) -> bool:
        return self.lost_since is None

    def down_for(self) -> float:
        """Seconds the connection has been down (0 while it is up)."""
        return 0.0 if self.lost_since is None else self._clock() - self.lost_since

    def back_for(self) -> float | None:
        """Seconds since the connection came back; None while it is down or if it never went away."""
        if self.lost_since is not None or self.restored_at is None:
            return None
        return self._clock() - self.restored_at

    def listen(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def lost(self) -> None:
        if self.lost_since is None:
            self.lost_since = self._clock()
            self._notify(False)

    def restored(self) -> None:
        if self.lost_since is not None:
            self.lost_since = None
            self.restored_at = self._clock()
            self._notify(True)

    def _notify(self, up: bool) -> None:
        for listener in list(self._listeners):
            try:
                listener(up)
            except Exception:  # one broken listener must not keep the others from hearing it
                log.exception("bus_link_listener_failed")
