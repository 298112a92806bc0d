"""Every Prometheus metric of a control-plane replica, in one registry per Runtime (served at /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ControlPlaneMetrics"]


class ControlPlaneMetrics:
    """Counters and gauges of one replica; a private registry so several replicas can share a process (tests)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = r = registry or CollectorRegistry()
        self.jobs_submitted = Counter("infernet_jobs_submitted", "Jobs accepted by this replica, by kind",
                                      ["kind"], registry=r)
        self.jobs_finished = Counter("infernet_jobs_finished", "Job outcomes recorded by this replica",
                                     ["status", "error"], registry=r)
        self.offers = Counter("infernet_assignment_offers", "Assignments offered to nodes, by answer",
                              ["answer"], registry=r)
        self.requeued = Counter("infernet_jobs_requeued", "Attempts re-placed after a node was lost or failed early",
                                registry=r)
        self.queue_wait = Histogram("infernet_job_queue_seconds", "Seconds from submit to the accepted assignment",
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                             10, 30, 60, 300), registry=r)
        self.ttft = Histogram("infernet_job_ttft_seconds", "Engine time to first token of completed jobs",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r)
        self.queued = Gauge("infernet_jobs_queued", "Pending jobs this replica holds in its queues", registry=r)
        self.nodes_online = Gauge("infernet_nodes_online", "Nodes heard within their offline window", registry=r)
        self.malformed = Counter("infernet_bus_malformed_messages", "Bus messages dropped as malformed, by kind",
                                 ["kind"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
