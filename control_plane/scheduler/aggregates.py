"""Registry figures kept current on every change, so reads never walk the nodes: live count, model summaries, id order."""

from __future__ import annotations

import bisect
from typing import NamedTuple


class Contribution(NamedTuple):
    """What one node adds to the aggregates; the registry recomputes it whenever the node changes."""

    live: bool  # heard within its offline window (online or draining)
    accepting: bool  # live, engine up, not draining: counted in the model summaries
    models: tuple[tuple[str, int | None], ...]  # (model, measured tokens/sec in thousandths or None) it serves


NOTHING = Contribution(False, False, ())


def _remove(ordered: list[str], item: str) -> None:
    i = bisect.bisect_left(ordered, item)
    if i < len(ordered) and ordered[i] == item:
        del ordered[i]


class RegistryAggregates:
    """Sums over every node's Contribution, updated by difference: O(models of one node) per change.

    Node ids are also kept sorted (all of them, and per served model) so a page of the node list is a
    bisect and a slice. Insertions into a sorted list move memory (microseconds at 10,000 ids), no Python work.
    """

    __slots__ = ("live", "_summary", "_order", "_by_model")

    def __init__(self) -> None:
        self.live = 0
        #: model -> [accepting nodes, sum of known tokens/sec in thousandths, how many of them know it]
        self._summary: dict[str, list[int]] = {}
        self._order: list[str] = []
        self._by_model: dict[str, list[str]] = {}

    # -- membership ------------------------------------------------------------------------------
    def added(self, node_id: str) -> None:
        """A node the registry did not hold before."""
        bisect.insort(self._order, node_id)

    def removed(self, node_id: str) -> None:
        """A node the registry forgot (its contribution must already be NOTHING)."""
        _remove(self._order, node_id)

    # -- contributions ---------------------------------------------------------------------------
    def apply(self, node_id: str, old: Contribution, new: Contribution) -> None:
        """Replace one node's contribution."""
        if old == new:
            return
        self.live += int(new.live) - int(old.live)
        if old.accepting:
            self._count(old.models, -1)
        if new.accepting:
            self._count(new.models, 1)
        if old.models != new.models:
            before = {name for name, _ in old.models}
            after = {name for name, _ in new.models}
            for name in before - after:
                ids = self._by_model[name]
                _remove(ids, node_id)
                if not ids:
                    del self._by_model[name]
            for name in after - before:
                bisect.insort(self._by_model.setdefault(name, []), node_id)

    def _count(self, models: tuple[tuple[str, int | None], ...], sign: int) -> None:
        summary = self._summary
        for name, milli in models:
            entry = summary.get(name)
            if entry is None:
                entry = summary[name] = [0, 0, 0]
            entry[0] += sign
            if milli is not None:
                entry[1] += sign * milli
                entry[2] += sign
            if not entry[0]:
                del summary[name]

    # -- reading ---------------------------------------------------------------------------------
    def summary(self) -> list[tuple[str, int, float | None]]:
        """(model, accepting nodes, mean known tokens/sec or None), by model name."""
        return [(name, n, milli / known / 1000 if known else None)
                for name, (n, milli, known) in sorted(self._summary.items())]

    def page(self, after: str | None, limit: int, model: str | None = None) -> list[str]:
        """Up to `limit` node ids greater than `after`, in order; with `model`, only nodes serving it."""
        ordered = self._order if model is None else self._by_model.get(model, [])
        start = 0 if after is None else bisect.bisect_right(ordered, after)
        return ordered[start:start + max(limit, 0)]

    def __len__(self) -> int:
        return len(self._order)
