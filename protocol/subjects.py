"""Every NATS subject and JetStream name Infernet uses, built in one place."""

from __future__ import annotations

import re

PREFIX = "infernet.v1"

#: JetStream stream holding job results and failures until a control plane records them.
RESULTS_STREAM = "INFERNET_RESULTS"
#: Durable consumer shared by every control-plane replica (work-queue semantics).
RESULTS_CONSUMER = "control-plane-results"
#: JetStream memory stream that keeps token chunks for replay (late joiners, Last-Event-ID).
TOKENS_STREAM = "INFERNET_TOKENS"

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


class InvalidSubjectToken(ValueError):
    """An id that cannot be used as a NATS subject token (dots, wildcards, spaces)."""


def _token(value: str) -> str:
    if not _TOKEN.match(value):
        raise InvalidSubjectToken(f"not a valid subject token: {value!r}")
    return value


#: The wildcard for one subject token (any node, any job).
_ANY = "*"


def _node_scoped(node: str, kind: str) -> str:
    """infernet.v1.node.<node>.<kind>; `node` is a checked id or `_ANY`."""
    return f"{PREFIX}.node.{node}.{kind}"


def _job_scoped(node: str, job: str, kind: str) -> str:
    """infernet.v1.node.<node>.job.<job>.<kind>; each id is a checked one or `_ANY`."""
    return _node_scoped(node, f"job.{job}.{kind}")


def advertisements() -> str:
    """Every node's advertisement (a wildcard): each replica subscribes, with no queue group."""
    return _node_scoped(_ANY, "advertise")


def advertisement_requests() -> str:
    """A control plane asks every node to advertise now (after its start), so its registry fills in one round trip."""
    return f"{PREFIX}.nodes.solicit"


def node_advertise(node_id: str) -> str:
    """A node publishes its advertisement (heartbeat) here; only that node may (server-enforced)."""
    return _node_scoped(_token(node_id), "advertise")


def node_verify(node_id: str) -> str:
    """Request/reply: a node asks the control plane how it sees it (infernet-node doctor); one replica answers."""
    return _node_scoped(_token(node_id), "verify")


def all_node_verify() -> str:
    """Wildcard the control plane answers verify requests on (a queue group)."""
    return _node_scoped(_ANY, "verify")


def node_assign(node_id: str) -> str:
    """Request/reply: a control plane offers one job to one node."""
    return _node_scoped(_token(node_id), "assign")


def node_cancel(node_id: str) -> str:
    """A control plane tells a node to stop a job."""
    return _node_scoped(_token(node_id), "cancel")


def node_drain(node_id: str) -> str:
    """A control plane tells a node to drain (take no new jobs, finish in-flight ones)."""
    return _node_scoped(_token(node_id), "drain")


def node_job_tokens(node_id: str, job_id: str) -> str:
    """Token chunks one node publishes for one job; the node id in the subject names the publisher."""
    return _job_scoped(_token(node_id), _token(job_id), "tokens")


def node_job_result(node_id: str, job_id: str) -> str:
    """The outcome one node publishes for one job (captured by the results stream)."""
    return _job_scoped(_token(node_id), _token(job_id), "result")


def node_all_job_tokens(node_id: str) -> str:
    """Every job's token subject of one node (that node's publish permission)."""
    return _job_scoped(_token(node_id), _ANY, "tokens")


def node_all_job_results(node_id: str) -> str:
    """Every job's outcome subject of one node (that node's publish permission)."""
    return _job_scoped(_token(node_id), _ANY, "result")


def job_tokens(job_id: str) -> str:
    """Token chunks of one job from any node (a filter: replay reads a job's chunks with it)."""
    return _job_scoped(_ANY, _token(job_id), "tokens")


def job_result(job_id: str) -> str:
    """Outcomes of one job from any node (a filter)."""
    return _job_scoped(_ANY, _token(job_id), "result")


def all_job_results() -> str:
    """Wildcard the results stream captures."""
    return _job_scoped(_ANY, _ANY, "result")


def all_job_tokens() -> str:
    """Wildcard the tokens replay stream captures."""
    return _job_scoped(_ANY, _ANY, "tokens")


#: Positions of the node id and job id in node-scoped job subjects (infernet.v1.node.<node>.job.<job>.<kind>).
NODE_FIELD = 3
JOB_FIELD = 5


def publisher_and_job(subject: str) -> tuple[str, str] | None:
    """(node id, job id) of a node-scoped job subject, or None when the subject is not one."""
    parts = subject.split(".")
    if len(parts) != 7 or parts[4] != "job":
        return None
    return parts[NODE_FIELD], parts[JOB_FIELD]


def node_of(subject: str) -> str | None:
    """The node id of any node-scoped subject (infernet.v1.node.<node>...), or None."""
    parts = subject.split(".", 4)
    if len(parts) < 4 or parts[2] != "node":
        return None
    return parts[NODE_FIELD]


def node_inbox_prefix(node_id: str) -> str:
    """A node's reply inboxes (its JetStream publish acks) live under this prefix, the only inboxes it may read."""
    return f"_INBOX.{_token(node_id)}"


def control_events() -> str:
    """Control-plane to control-plane broadcasts (key revocation, cache invalidation)."""
    return f"{PREFIX}.control.events"
