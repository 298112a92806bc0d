"""Random identifiers and secrets: job/node/account ids, API keys, node tokens, and their hashes."""

from __future__ import annotations

import hashlib
import secrets
import string

from protocol.identity import node_token

_ALPHABET = string.ascii_letters + string.digits


def new_id(prefix: str, nbytes: int = 8) -> str:
    """`prefix_` + random hex, e.g. job_9a3f2c1d5e6f7a8b."""
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def random_secret(length: int = 40) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_api_key() -> str:
    """A raw API key: `inf_` + 40 random alphanumerics. Shown once, stored hashed."""
    return "inf_" + random_secret(40)


def new_node_token(node_id: str) -> str:
    """A raw node token that names its node (see protocol.identity)."""
    return node_token(node_id, random_secret(40))


def secret_hash(raw: str) -> bytes:
    """SHA-256 of a key or token; what the database stores."""
    return hashlib.sha256(raw.encode()).digest()
