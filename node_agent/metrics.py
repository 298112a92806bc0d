"""Every Prometheus metric of the node agent, in one registry per agent (served at /metrics by status_http)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "NodeMetrics"]


class NodeMetrics:
    """The agent's counters and gauges; a private registry so that several agents can share a process (tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Counter("infernet_node_jobs", "Jobs finished on this node, by outcome and error code",
                            ["outcome", "error"], registry=r)
        self.tokens = Counter("infernet_node_tokens_generated", "Completion tokens generated, by model",
                              ["model"], registry=r)
        self.tokens_per_second = Gauge("infernet_node_tokens_per_second",
                                       "Rolling tokens/sec measured from the engine's counters, by model",
                                       ["model"], registry=r)
        self.active_slots = Gauge("infernet_node_active_slots", "Jobs running right now", registry=r)
        self.slots = Gauge("infernet_node_slots", "Jobs this node runs at once (max concurrency)", registry=r)
        self.engine_errors = Counter("infernet_node_engine_errors", "Engine errors while running jobs, by code",
                                     ["code"], registry=r)
        self.engine_up = Gauge("infernet_node_engine_up", "1 when the engine answered its last health check",
                               registry=r)
        self.nats_reconnects = Counter("infernet_node_nats_reconnects", "Reconnections to NATS", registry=r)
        self.models = Gauge("infernet_node_models", "Models advertised (after allow/deny lists)", registry=r)

    def job_finished(self, outcome: str, error: str | None = None) -> None:
        self.jobs.labels(outcome=outcome, error=error or "").inc()

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
