"""The protocol version both sides put on every message; bump on breaking change."""

PROTOCOL_VERSION = 1
