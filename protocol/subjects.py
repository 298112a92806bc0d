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


def advertisements() -> str:
    """Nodes publish their advertisement (heartbeat) here; every replica subscribes."""
    return f"{PREFIX}.nodes.advertise"


def advertisement_requests() -> str:
    """A control plane asks every node to advertise now (after its start), so its registry fills in one round trip."""
    return f"{PREFIX}.nodes.solicit"


def node_verify() -> str:
    """Request/reply: a node asks whether the control plane accepts its token (any one replica answers)."""
    return f"{PREFIX}.nodes.verify"


def node_assign(node_id: str) -> str:
    """Request/reply: a control plane offers one job to one node."""
    return f"{PREFIX}.node.{_token(node_id)}.assign"


def node_cancel(node_id: str) -> str:
    """A control plane tells a node to stop a job."""
    return f"{PREFIX}.node.{_token(node_id)}.cancel"


def node_drain(node_id: str) -> str:
    """A control plane tells a node to drain (take no new jobs, finish in-flight ones)."""
    return f"{PREFIX}.node.{_token(node_id)}.drain"


def job_tokens(job_id: str) -> str:
    """Token chunks of one job, ordered by sequence number."""
    return f"{PREFIX}.job.{_token(job_id)}.tokens"


def job_result(job_id: str) -> str:
    """The final result or failure of one job (captured by the results stream)."""
    return f"{PREFIX}.job.{_token(job_id)}.result"


def all_job_results() -> str:
    """Wildcard the results stream captures."""
    return f"{PREFIX}.job.*.result"


def all_job_tokens() -> str:
    """Wildcard the tokens replay stream captures."""
    return f"{PREFIX}.job.*.tokens"


def control_events() -> str:
    """Control-plane to control-plane broadcasts (key revocation, cache invalidation)."""
    return f"{PREFIX}.control.events"
