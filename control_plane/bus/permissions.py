"""What a node's bus identity may publish and subscribe to: its own subjects, nothing else (server-enforced)."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import subjects


@dataclass(frozen=True, slots=True)
class NodePermissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def node_permissions(node_id: str) -> NodePermissions:
    """Publish: its advertisement, its verify request, chunks and outcomes on its own job subjects (outcomes
    reach the results stream by a plain publish: no `$JS.API` at all). Subscribe: its assignments, cancels,
    drains, the control planes' "advertise now" broadcast, and its own reply inboxes (JetStream acks). Replies to requests it received are allowed by the
    response permission (`resp`), one per request."""
    return NodePermissions(
        publish=(
            subjects.node_advertise(node_id),
            subjects.node_verify(node_id),
            subjects.node_all_job_tokens(node_id),
            subjects.node_all_job_results(node_id),
        ),
        subscribe=(
            subjects.node_assign(node_id),
            subjects.node_cancel(node_id),
            subjects.node_drain(node_id),
            # The one broadcast every node reads: a starting control plane asks for advertisements now.
            subjects.advertisement_requests(),
            subjects.node_inbox_prefix(node_id) + ".>",
        ),
    )
