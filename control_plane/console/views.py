"""What the console's pages show, assembled from the same services the API uses (registry, ledger, usage)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from control_plane.console import charts
from control_plane.console.history import MetricsHistory
from control_plane.credits.usage import operator_node_stats
from control_plane.scheduler.registry import NodeView

#: Node rows shown on one page at most (the busiest network still renders fast).
MAX_NODE_ROWS = 500
_STATE_ORDER = {"online": 0, "draining": 1, "quarantined": 2, "offline": 3}


@dataclass
class NodeRow:
    id: str
    name: str
    state: str
    engine: str | None = None
    models: list[dict[str, Any]] = field(default_factory=list)
    slots: int = 0
    active: int = 0
    tokens_per_second: float | None = None
    last_seen: str = "never"
    success_rate: float | None = None
    jobs_served: int | None = None
    earnings: int | None = None
    failures: int | None = None
    #: 0..1 (control_plane/trust), shown to admins and to the node's operator; None without the trust service.
    reputation: float | None = None
    probation: bool = False


def ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 2:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _since_iso(iso: str | None) -> str:
    if not iso:
        return "never"
    ts = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return ago((datetime.now(timezone.utc) - ts).total_seconds())


def _row(entry, view: NodeView | None) -> NodeRow:
    """A node as the console shows it, from the API's own NodeEntry (and this replica's view for its health)."""
    tps = [m.tokens_per_second for m in entry.models if m.tokens_per_second]
    return NodeRow(
        id=entry.id, name=entry.name or entry.id, state=entry.state, engine=entry.engine,
        models=[{"name": m.id, "loaded": m.loaded, "tokens_per_second": m.tokens_per_second} for m in entry.models],
        slots=entry.slots, active=entry.active_jobs, tokens_per_second=max(tps) if tps else None,
        last_seen=_since_iso(entry.last_seen), success_rate=view.success_rate if view is not None else None,
        reputation=entry.reputation, probation=bool(entry.trust and entry.trust.probation))


async def all_nodes(runtime) -> list[NodeRow]:
    """The network's nodes for admins: the first page of the API's own node directory, live ones first."""
    page = await runtime.directory.page(account_id=None, limit=MAX_NODE_ROWS, is_admin=True)
    rows = [_row(e, runtime.registry.get(e.id)) for e in page.nodes]
    rows.sort(key=lambda r: (_STATE_ORDER.get(r.state, 3), r.name, r.id))
    return rows


async def operator_nodes(runtime, account_id: str) -> list[NodeRow]:
    """The nodes registered to an operator account, with what they served, earned and failed (last 24 h)."""
    stats = await operator_node_stats(runtime.db, account_id)
    failures = {r["node_id"]: int(r["failures"]) for r in await runtime.db.fetchall(
        "console_node_failures", {"account_id": account_id, "since": datetime.now(timezone.utc) - timedelta(days=1)})}
    now_wall, now_mono = datetime.now(timezone.utc), runtime.registry_clock()
    rows = []
    for s in stats[:MAX_NODE_ROWS]:
        view = runtime.registry.get(s["node_id"])
        if view is None:
            seen = s["last_seen_at"]
            row = NodeRow(id=s["node_id"], name=s["name"], state="offline",
                          last_seen=ago((now_wall - seen).total_seconds()) if seen else "never")
        else:
            tps = [m.tokens_per_second for m in view.models.values() if m.tokens_per_second]
            row = NodeRow(
                id=view.node_id, name=s["name"], state=view.state, engine=view.engine,
                models=[{"name": m.name, "loaded": m.loaded, "tokens_per_second": m.tokens_per_second}
                        for m in view.models.values()],
                slots=view.slots, active=view.estimated_active, tokens_per_second=max(tps) if tps else None,
                last_seen=ago(now_mono - view.last_seen), success_rate=view.success_rate)
        row.jobs_served, row.earnings = int(s["jobs_served"] or 0), int(s["earnings"] or 0)
        row.failures = failures.get(row.id, 0)
        trust = getattr(runtime, "trust", None)
        if trust is not None:  # the operator sees their own nodes' standing, as GET /api/v1/nodes shows it
            standing = trust.view(row.id)
            row.reputation, row.probation = standing.reputation, standing.probation
            if row.state != "offline" and standing.quarantined:
                row.state = "quarantined"
        rows.append(row)
    rows.sort(key=lambda r: (_STATE_ORDER.get(r.state, 3), r.name, r.id))
    return rows


def days_back(n: int, today: date | None = None) -> list[date]:
    today = today or datetime.now(timezone.utc).date()
    return [today - timedelta(days=i) for i in range(n - 1, -1, -1)]


async def earnings_chart(runtime, account_id: str, days: int = 14):
    since = datetime.now(timezone.utc) - timedelta(days=days)
    rows = {r["day"]: int(r["earned"]) for r in await runtime.db.fetchall(
        "console_operator_earnings_by_day", {"account_id": account_id, "since": since})}
    points = [(d.strftime("%b %d"), rows.get(d, 0)) for d in days_back(days)]
    return charts.bar_chart(points, label=f"Earnings per day, last {days} days (credits)", unit=" credits",
                            empty="No earnings yet: they appear when your nodes complete jobs")


def usage_charts(totals: dict[str, Any], days: int = 14):
    by_day = {d["day"]: d for d in totals["by_day"]}
    points = [(d.strftime("%b %d"), by_day.get(d.isoformat(), {}).get("credits", 0)) for d in days_back(days)]
    per_day = charts.bar_chart(points, label=f"Credits spent per day, last {days} days", unit=" credits",
                               empty="No usage yet: run a job in the playground")
    models = sorted(totals["by_model"], key=lambda m: -m["credits"])[:12]
    per_model = charts.hbar_chart([(m["model"], m["credits"]) for m in models], label="Credits per model",
                                  unit=" cr", empty="No usage yet")
    return per_day, per_model


@dataclass
class Overview:
    models: list[dict[str, Any]]
    nodes_online: int
    nodes_total: int
    pending_total: int
    jobs_chart: Any
    ttft_chart: Any
    failures: dict[str, int]
    postgres_ok: bool
    nats_ok: bool
    replicas: list[dict[str, Any]]
    replica_id: str
    jobs_per_s: float | None
    ttft_ms: float | None


async def overview(runtime, history: MetricsHistory) -> Overview:
    """The network at a glance for admins."""
    postgres_ok = await runtime.db.ping()
    pending, replicas = {}, []
    if postgres_ok:
        try:
            pending = {r["model"]: int(r["pending"]) for r in await runtime.db.fetchall("console_pending_by_model")}
            replicas = await runtime.db.fetchall("console_replicas")
        except Exception:  # PostgreSQL went away between the ping and the reads: show what is known
            postgres_ok = False
    summary = {m.name: m for m in runtime.registry.models_summary()}
    models = []
    for name in sorted(set(summary) | set(pending)):
        m = summary.get(name)
        models.append({"name": name, "nodes": m.nodes if m else 0,
                       "tokens_per_second": m.tokens_per_second if m else None,
                       "pending": pending.get(name, 0), "local_queue": runtime.dispatcher.queued_for(name)})
    minutes = history.minutes(60)
    now = time.time()
    ends = (datetime.fromtimestamp(now - 3600, timezone.utc).strftime("%H:%M"),
            datetime.fromtimestamp(now, timezone.utc).strftime("%H:%M UTC"))
    jobs = [m.jobs_per_s for m in minutes]
    ttft = [m.ttft_ms for m in minutes]
    last = lambda values: next((v for v in reversed(values) if v is not None), None)  # noqa: E731
    replica_rows = [r | {"live": r["silent_secs"] < 30, "seen": ago(r["silent_secs"])} for r in replicas]
    nodes = runtime.registry.nodes()
    return Overview(
        models=models, nodes_online=runtime.registry.online_count(), nodes_total=len(nodes),
        pending_total=sum(pending.values()),
        jobs_chart=charts.line_chart(jobs, label="Jobs ended per second, last hour (this replica)", unit=" jobs/s",
                                     x_labels=ends, empty="No jobs in the last hour"),
        ttft_chart=charts.line_chart(ttft, label="Mean time to first token, last hour (this replica)", unit=" ms",
                                     x_labels=ends, empty="No completed jobs in the last hour"),
        failures=history.failures_last_hour(), postgres_ok=postgres_ok, nats_ok=runtime.bus.connected,
        replicas=replica_rows, replica_id=runtime.settings.replica_id, jobs_per_s=last(jobs), ttft_ms=last(ttft))
