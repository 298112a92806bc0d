"""What a node's model can do, read from its advertisement; older nodes that report nothing chat or embed."""

from __future__ import annotations

from collections.abc import Iterable

from protocol.messages import ModelInfo

_CHAT = frozenset({"chat"})
_EMBED = frozenset({"embeddings"})


def of(info: ModelInfo) -> frozenset[str]:
    """The capabilities a model advertises (protocol.CAPABILITIES names)."""
    if info.capabilities:
        return frozenset(info.capabilities)
    return _EMBED if info.embeddings else _CHAT


def has(info: ModelInfo, needs: Iterable[str]) -> bool:
    """Does the model have every capability in `needs`."""
    return not needs or of(info).issuperset(needs)
