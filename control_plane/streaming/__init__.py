"""Token streaming: the relay (NATS -> per-job watches), JetStream replay, ordered job streams, SSE framing."""

from control_plane.streaming.relay import JobWatch, TokenRelay

__all__ = ["JobWatch", "TokenRelay"]
