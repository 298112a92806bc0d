"""The control plane's side of NATS: connection, streams, assignments, advertisements, results."""

from control_plane.bus.connection import Bus, BusError, NoResponders

__all__ = ["Bus", "BusError", "NoResponders"]
