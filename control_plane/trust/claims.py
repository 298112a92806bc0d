"""Model claims verified by measurement: a model a node advertises outside what its registration trusts is served
only after a known-answer probe against a node already trusted or verified for that model agreed.

A node's registration names the models an admin vouches for (`nodes register NAME --model GLOB`, '*' for any);
everything else it advertises is a *claim*. The heartbeat handler withholds unverified claims from placement
(the registry keeps them for probes only), so a job for a model only unverified claims offer is `404
model_not_found`. For each new claim one replica takes the measurement in PostgreSQL (`node_model_claims`), and
the verifier runs a fresh deterministic prompt on a reference node, then the same job on the claimant, both
ordinary jobs of the network account (control_plane/trust/verify.py). Agreement verifies the claim (shared with
every replica, kept across restarts) and counts for the node; disagreement fails it and counts against it
(`probe_failed`); a failed or unfinished measurement is retried after `INFERNET_MODEL_CLAIM_RETRY_S`, doubling.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

import structlog

from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database

log = structlog.get_logger("control_plane.trust.claims")

#: Longest wait between two measurements of one claim (the doubling stops here).
MAX_WAIT_S = 86_400.0
#: Seconds before a claim nobody can measure (no reference node serves the model) is looked at again.
NO_REFERENCE_RETRY_S = 2.0
#: Seconds between two `model_claim_unverifiable` lines for one claim.
LOG_EVERY_S = 600.0
#: Claims remembered at most (an attacker may invent many models; the oldest are forgotten first).
MAX_CLAIMS = 100_000
#: Rows written by other replicas are read back with this much overlap (commit order vs now()).
SYNC_OVERLAP = timedelta(seconds=5)

Key = tuple[str, str]  # (node id, model)


class ModelClaims:
    """This replica's view of every measured claim, and the scheduling of new measurements."""

    def __init__(self, db: Database, registry: NodeRegistry, settings: Settings, *,
                 probe: Callable[[str, str, str], Any], rng: random.Random | None = None,
                 clock=time.monotonic) -> None:
        self._db = db
        self._registry = registry
        self._retry_s = settings.model_claim_retry_s
        self._trusted = [n.strip() for n in settings.trust_probe_nodes.split(",") if n.strip()]
        self._probe = probe  # async (target node, model, reference node) -> probe reference job id or None
        self._rng = rng or random.Random()
        self._clock = clock
        self._state: dict[Key, str] = {}  # 'pending' | 'verified' | 'failed', as last read or written
        self._not_before: dict[Key, float] = {}  # this replica looks at the claim again no earlier than this
        self._logged: dict[Key, float] = {}
        self._listeners: list[Callable[[str, str], None]] = []
        self._since: datetime | None = None

    # -- reads (the advertisement path: memory only) ---------------------------------------------
    def verified(self, node_id: str, model: str) -> bool:
        return self._state.get((node_id, model)) == "verified"

    def state(self, node_id: str, model: str) -> str | None:
        """'pending', 'verified', 'failed', or None when the control plane never set out to measure it."""
        return self._state.get((node_id, model))

    def on_verified(self, listener: Callable[[str, str], None]) -> None:
        """Call `listener(node_id, model)` when a claim becomes verified (here or, read back, on another replica)."""
        self._listeners.append(listener)

    def due(self, node_id: str, models: Iterable[str]) -> list[str]:
        """Of the node's unverified claims, those this replica should try to measure now (cheap; no I/O)."""
        now = self._clock()
        return [m for m in models if self._not_before.get((node_id, m), 0.0) <= now]

    # -- measuring -------------------------------------------------------------------------------
    async def measure(self, node_id: str, models: Iterable[str]) -> None:
        """Start the measurement of each claim that is due and has a reference node; one query per claim started
        (claims are rare: a node's models, once)."""
        for model in self.due(node_id, models):
            key = (node_id, model)
            reference = self._reference(node_id, model)
            if reference is None:
                self._hold(key, NO_REFERENCE_RETRY_S)
                now = self._clock()
                if now - self._logged.get(key, -LOG_EVERY_S) >= LOG_EVERY_S:
                    self._logged[key] = now
                    log.warning("model_claim_unverifiable", node_id=node_id, model=model,
                                detail="no node the control plane trusts (registered for it, or verified) serves "
                                       "the model, so nothing can check the claim; no jobs for it on this node",
                                action="register the node with --model if you vouch for it, or add a trusted "
                                       "node serving the model")
                continue
            self._hold(key, self._retry_s)  # whatever happens next, not again before this
            row = await self._db.fetchone("model_claim_start", {
                "node_id": node_id, "model": model, "reference": reference, "retry_s": self._retry_s,
                "max_wait_s": MAX_WAIT_S})
            if row is None:
                continue  # verified, measured elsewhere, or not due: the sync brings the state
            self._apply(row)
            self._hold(key, min(MAX_WAIT_S, self._retry_s * 2 ** min(int(row["attempts"]) - 1, 30)))
            job_id = await self._probe(node_id, model, reference)
            log.info("model_claim_measuring", node_id=node_id, model=model, reference_node=reference,
                     attempt=row["attempts"], job_id=job_id)

    async def settled(self, node_id: str, model: str, passed: bool) -> None:
        """The probe of a claim came back (agreeing with the reference or not)."""
        row = await self._db.fetchone("model_claim_settle", {"node_id": node_id, "model": model,
                                                             "state": "verified" if passed else "failed"})
        if row is None:
            return  # not being measured any more (an older attempt's answer): the newer one decides
        if passed:
            log.info("model_claim_verified", node_id=node_id, model=model)
        else:
            log.warning("model_claim_failed", node_id=node_id, model=model,
                        detail="its answer to a known-answer probe differs from a trusted node's; no jobs for "
                               "the model on this node", retry_after_s=self._retry_s * 2 ** (int(row["attempts"]) - 1))
        self._apply(row)

    def _reference(self, target: str, model: str) -> str | None:
        """A node whose answer for the model the control plane believes: one the self-hoster named for probes,
        else one whose registration vouches for the model, else one verified for it; never the claimant."""
        found = [n for n in self._registry.page_ids(None, 200, model)
                 if n != target and self._registry.score_of(n, model) is not None]
        if not found:
            return None
        return min(found, key=lambda n: (n not in self._trusted, self.verified(n, model), self._rng.random()))

    def _hold(self, key: Key, seconds: float) -> None:
        if key not in self._not_before and len(self._not_before) >= MAX_CLAIMS:
            del self._not_before[next(iter(self._not_before))]
        self._not_before[key] = self._clock() + seconds

    # -- shared state ----------------------------------------------------------------------------
    async def start(self) -> None:
        """Read every measured claim (verified ones are served at once after a restart)."""
        self._since = (await self._db.fetchone("trust_now"))["now"]
        for row in await self._db.fetchall("model_claims_changed_since", {"since": None}):
            self._apply(row)

    async def sync(self) -> None:
        """Read what other replicas measured since the last read (called from the trust loop)."""
        now = (await self._db.fetchone("trust_now"))["now"]
        since = None if self._since is None else self._since - SYNC_OVERLAP
        for row in await self._db.fetchall("model_claims_changed_since", {"since": since}):
            self._apply(row)
        self._since = now

    def _apply(self, row: dict[str, Any]) -> None:
        key = (row["node_id"], row["model"])
        before = self._state.get(key)
        if before is None and row["state"] != "verified" and len(self._state) >= MAX_CLAIMS:
            return  # verified claims are always kept (each took a real measurement); others are only a hint
        self._state[key] = row["state"]
        if row["state"] == "verified" and before != "verified":
            for listener in self._listeners:
                try:
                    listener(*key)
                except Exception:
                    log.exception("model_claim_listener_error")


__all__ = ["ModelClaims"]
