"""Node tokens name their node: `infnode_<hex>_<secret>` belongs to node `node_<hex>`."""

from __future__ import annotations

NODE_TOKEN_PREFIX = "infnode"


def node_token(node_id: str, secret: str) -> str:
    """Compose a node token from a node id (`node_<hex>`) and a random secret."""
    return f"{NODE_TOKEN_PREFIX}_{node_id.removeprefix('node_')}_{secret}"


def node_id_from_token(token: str) -> str | None:
    """The node id a token names, or None if the string is not a node token."""
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != NODE_TOKEN_PREFIX or not parts[1] or not parts[2]:
        return None
    if not all(c in "0123456789abcdef" for c in parts[1]):
        return None
    return f"node_{parts[1]}"
