"""The nodes list, a page at a time: this replica's registry merged with the registered nodes it has not heard.

A page costs O(limit), whatever the size of the network: ids come from the registry's sorted index (a bisect
and a slice) and from one indexed range query on the nodes table; names and the caller's operator figures are
read for the page's ids only (usually one query; a second only when the caller operates nodes on the page).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Literal

from control_plane.credits.usage import operator_node_stats
from control_plane.errors import BadRequest
from control_plane.jobs.schemas import iso
from control_plane.scheduler import capabilities
from control_plane.nodes.schemas import NodeEntry, NodeList, NodeModel, OperatorStats
from control_plane.scheduler.registry import NodeBrief, NodeRegistry
from control_plane.store import Database
from control_plane.store.database import jsonb
from control_plane.trust.service import TrustService
from protocol.messages import Advertisement, ModelInfo

DEFAULT_LIMIT, MAX_LIMIT = 100, 1000
STATES = ("online", "draining", "offline", "quarantined")
#: What `GET /api/v1/nodes?state=` takes.
StateFilter = Literal["online", "draining", "offline", "quarantined"]
#: Ids examined per page at most, as a multiple of `limit`: a filter that matches few nodes returns a short
#: (even empty) page with a cursor rather than walking the whole network in one request.
SCAN_FACTOR = 4
#: Nodes whose shown models are kept at most (a network larger than this rebuilds some per page).
MAX_SHOWN = 100_000


class NodeDirectory:
    """Reads pages of the nodes list for the API and the console."""

    def __init__(self, db: Database, registry: NodeRegistry, *, clock: Callable[[], float] = time.monotonic,
                 trust: TrustService | None = None) -> None:
        self._db = db
        self._registry = registry
        self._trust = trust
        self._clock = clock  # the registry's clock (its last_seen stamps)
        #: node id -> (its advertised models, what the list shows of them), see _models
        self._shown: dict[str, tuple[tuple[ModelInfo, ...], list[NodeModel]]] = {}

    async def page(self, *, account_id: str | None, limit: int | None = None, cursor: str | None = None,
                   model: str | None = None, state: str | None = None, is_admin: bool = False) -> NodeList:
        """Nodes with ids after `cursor`, in id order, at most `limit`; `model`: nodes serving it now
        (online or draining); `state`: online, draining, offline or quarantined. Reputation is shown to
        admins, and to an operator for its own nodes."""
        limit = DEFAULT_LIMIT if limit is None else limit
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be between 1 and {MAX_LIMIT}", param="limit")
        if state is not None and state not in STATES:
            raise BadRequest(f"state must be one of {', '.join(STATES)}", param="state")
        if cursor is not None and not 0 < len(cursor) <= 200:
            raise BadRequest("cursor must be the next_cursor of a previous page", param="cursor")
        # Without a state filter every candidate is taken, so one id past the page is enough to know there are more.
        scan = limit * SCAN_FACTOR if state is not None else limit + 1
        live_only = model is not None or state in ("online", "draining", "quarantined")
        sources = [self._registry.page_ids(cursor, scan, model)]
        rows: dict[str, dict] = {}
        if not live_only:  # registered nodes this replica has not heard are offline
            found = await self._db.fetchall("node_page", {"after": cursor, "limit": scan})
            rows = {r["id"]: r for r in found}
            sources.append(list(rows))
        # Both sources are sorted; past the end of a full one, the other may hold ids it would have held too.
        bound = min((ids[-1] for ids in sources if len(ids) == scan), default=None)
        candidates = sorted({i for ids in sources for i in ids if bound is None or i <= bound})
        picked, stopped = [], None
        brief = self._registry.brief
        for i, node_id in enumerate(candidates):
            view = brief(node_id)  # at most `scan` of them
            if state is None or self._state(node_id, view) == state:
                picked.append((node_id, view))
                if len(picked) == limit:
                    stopped = i
                    break
        if stopped is None:
            next_cursor = bound  # every candidate examined; more lie beyond the bound of a full source
        else:
            next_cursor = None if bound is None and stopped == len(candidates) - 1 else candidates[stopped]
        missing = [node_id for node_id, _ in picked if node_id not in rows]
        if missing:
            rows.update({r["id"]: r for r in await self._db.fetchall("nodes_by_ids", {"ids": jsonb(missing)})})
        wall_minus_mono, seen_at = time.time() - self._clock(), {}
        entries = [self._entry(node_id, view, rows.get(node_id), wall_minus_mono, seen_at) for node_id, view in picked]
        mine = [e for e in entries if account_id is not None and (rows.get(e.id) or {}).get("operator_account_id")
                == account_id]
        if mine:  # the caller operates some of these nodes: their figures, in a second query
            await self._add_operator_stats(account_id, mine)
        if self._trust is not None:
            picked_views = dict(picked)
            for entry in entries:
                entry.state = self._state(entry.id, picked_views[entry.id])
            for entry in entries if is_admin else mine:
                entry.trust = self._trust.view(entry.id)
                entry.reputation = entry.trust.reputation
        return NodeList(nodes=entries, next_cursor=next_cursor)

    def _state(self, node_id: str, view) -> str:
        """online, draining or offline as the registry sees it; quarantined for a live node trust keeps out."""
        if view is None:
            return "offline"
        if view.state != "offline" and self._trust is not None and self._trust.quarantined(node_id):
            return "quarantined"
        return view.state

    def _entry(self, node_id: str, view: NodeBrief | None, row: dict | None, wall_minus_mono: float,
               seen_at: dict[int, str]) -> NodeEntry:
        name = row["name"] if row else None
        if view is None:  # registered, not heard by this replica recently
            return NodeEntry(id=node_id, name=name, state="offline", engine=None, models=[], slots=0, active_jobs=0,
                             last_seen=iso(row["last_seen_at"]) if row else None, labels={})
        # Shown to the second: the nodes of a page were last heard within a few distinct seconds.
        second = int(min(wall_minus_mono + view.last_seen, time.time()))
        last_seen = seen_at.get(second)
        if last_seen is None:
            last_seen = seen_at[second] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
        ad = view.ad
        return NodeEntry(id=node_id, name=name, state=view.state, engine=ad.engine, models=self._models(node_id, ad),
                         slots=view.slots, active_jobs=view.estimated_active, last_seen=last_seen,
                         labels=dict(ad.labels))

    def _models(self, node_id: str, ad: Advertisement) -> list[NodeModel]:
        """The node's models as the list shows them, built again only when its advertised models changed (an
        advertisement usually repeats the previous one's). Entries share the list: it is only encoded."""
        cached = self._shown.get(node_id)
        if cached is not None and cached[0] == ad.models:
            return cached[1]
        shown = [NodeModel(m.name, m.loaded, m.tokens_per_second, m.embeddings, sorted(capabilities.of(m)),
                           m.context_length) for m in {m.name: m for m in ad.models}.values()]
        if len(self._shown) >= MAX_SHOWN:
            self._shown.clear()
        self._shown[node_id] = (ad.models, shown)
        return shown

    async def _add_operator_stats(self, account_id: str, entries: list[NodeEntry]) -> None:
        mine = {r["node_id"]: r for r in await operator_node_stats(self._db, account_id, [e.id for e in entries])}
        for entry in entries:
            stats = mine.get(entry.id)
            if stats is not None:
                entry.operator = OperatorStats(
                    jobs_served=int(stats["jobs_served"] or 0), prompt_tokens=int(stats["prompt_tokens"] or 0),
                    completion_tokens=int(stats["completion_tokens"] or 0),
                    credits_charged=int(stats["credits_charged"] or 0), earnings=int(stats["earnings"] or 0))
