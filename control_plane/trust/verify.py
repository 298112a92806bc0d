"""Spot-check verification: re-run a sample of finished jobs on another operator's node, compare, settle.

A check is an ordinary job row of the network account (`INFERNET_VERIFY_ACCOUNT`), pinned to the checking
node, with the original request (so its assignment has exactly the shape of a user job; what makes it a
check lives only in the stored request's `trust` key, which never goes on the bus). It is placed like any
orphaned pending job (the sweeper adopts it within a sweep), charged to the network account at the normal
price (so the checking operator earns its share and the cost shows in that account's /api/v1/usage), and
never charged to the user.

A job that sampled (temperature > 0) is re-run as a pair at temperature 0 with one seed: once on its own
node (a replay, as indistinguishable as any job) and once on another operator's; the two are compared.

Round 1 compares the check with the original answer (or the replay). Agreement is evidence for both nodes. A disagreement
goes to a third node of yet another operator when there is one (round 2): the side it agrees with passes,
the other fails; a failed original has its operator's payout reversed and the user's charge returned.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import structlog

from control_plane.errors import PaymentRequired
from control_plane.lib.ids import new_id
from control_plane.scheduler import placement
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from control_plane.store import Database, StoreError
from control_plane.store.database import jsonb
from control_plane.trust.compare import agree
from control_plane.trust.reputation import Evidence

log = structlog.get_logger("control_plane.trust.verify")

#: Seconds after which a probe that never finished (failed, expired) no longer blocks the node's next probe.
PROBE_TIMEOUT_S = 60.0
#: Request keys a check never copies (they are the user's, not the job's).
_PRIVATE_KEYS = ("webhook_url", "trust")


def comparable(request: dict[str, Any]) -> bool:
    """A plain text job (no tools, no images, no logprobs): two runs at temperature 0 can be compared."""
    params = request.get("params") or {}
    if params.get("tools") or params.get("logprobs"):
        return False
    return not any(m.get("images") for m in request.get("messages") or ())


def deterministic(request: dict[str, Any]) -> bool:
    """A comparable job whose own answer another honest node reproduces: it ran at temperature 0."""
    return comparable(request) and (request.get("params") or {}).get("temperature") in (0, 0.0)


class Verifier:
    """Schedules checks of finished jobs and settles them when they finish."""

    def __init__(self, db: Database, registry: NodeRegistry, settings: Settings, evidence, *,
                 standing=None, rng: random.Random | None = None, claim_settled=None) -> None:
        self._db = db
        self._registry = registry
        self._settings = settings
        self._evidence = evidence  # callable(node_id, Evidence)
        self._rng = rng or random.Random()
        self._tasks: set[asyncio.Task] = set()
        self._account_id: str | None = None
        self._probing: dict[str, tuple[str, float]] = {}  # node id -> (probe or reference job in flight, since)
        #: The standing of a node: set by the trust service (node id -> object with quarantined/probation).
        self._standing = standing or (lambda node_id: None)
        #: async (node id, model, passed): the probe measuring a model claim came back (control_plane/trust/claims.py).
        self._claim_settled = claim_settled

    async def start(self) -> None:
        # Always: model claims outside a node's registration are measured with probes whatever the other knobs.
        from control_plane.accounts.service import ensure_account

        self._account_id = (await ensure_account(self._db, self._settings.verify_account))["id"]

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- hooks ---------------------------------------------------------------------------------
    def completed(self, row: dict[str, Any]) -> None:
        """A job completed: settle it if it is a check, else maybe check it."""
        request = row.get("request") or {}
        meta = request.get("trust")
        if meta is not None:
            if meta.get("probe_ref"):
                self._spawn(self._probe(row, meta))
            elif meta.get("probe_of"):
                self._settle_probe(row, meta)
            elif meta.get("pair"):
                self._spawn(self._settle_pair(row, meta))
            else:
                self._spawn(self._settle(row, meta))
        elif (self._account_id is not None and row.get("kind") == "chat" and comparable(request)
              and self._rng.random() < self._settings.verify_rate):
            if deterministic(request):
                self._spawn(self._check(row, round_=1, suspect=row["node_id"], avoid=[row["node_id"]]))
            else:
                self._spawn(self._pair(row))

    # -- scheduling ----------------------------------------------------------------------------
    async def _check(self, original: dict[str, Any], *, round_: int, suspect: str, avoid: list[str],
                     first_check: str | None = None, request: dict[str, Any] | None = None,
                     replay: str | None = None) -> str | None:
        checker = await self._pick_checker(original["model"], avoid)
        if checker is None:
            log.info("check_skipped", job_id=original["id"], round=round_,
                     detail="no online node of another operator serves the model")
            return None
        request = {k: v for k, v in (request or original.get("request") or {}).items() if k not in _PRIVATE_KEYS}
        request["trust"] = {"check_of": original["id"], "suspect": suspect, "round": round_,
                            "first_check": first_check, "replay": replay}
        job_id = await self._insert(original["model"], request, checker)
        if job_id is not None:
            log.info("check_scheduled", job_id=original["id"], check_id=job_id, round=round_, suspect=suspect,
                     checker=checker)
        return job_id

    async def _pair(self, original: dict[str, Any]) -> None:
        """A job that sampled (temperature > 0) cannot be compared with a re-run; instead the same job at
        temperature 0 with one seed runs again on its own node (a replay) and on another operator's, and those
        two answers are compared."""
        suspect, model = original["node_id"], original["model"]
        if self._registry.score_of(suspect, model) is None:
            return  # gone or quarantined meanwhile
        checker = await self._pick_checker(model, [suspect])
        if checker is None:
            log.info("check_skipped", job_id=original["id"], detail="no online node of another operator serves the model")
            return
        request = {k: v for k, v in (original.get("request") or {}).items() if k not in _PRIVATE_KEYS}
        params = dict(request.get("params") or {})
        params["temperature"] = 0.0
        if params.get("seed") is None:
            params["seed"] = self._rng.randrange(1 << 31)
        request["params"] = params
        replay_id, check_id = new_id("job"), new_id("job")
        meta = {"check_of": original["id"], "suspect": suspect, "round": 1, "pair": [replay_id, check_id]}
        if await self._insert(model, request | {"trust": meta | {"role": "replay"}}, suspect, job_id=replay_id):
            await self._insert(model, request | {"trust": meta | {"role": "check"}}, checker, job_id=check_id)
            log.info("check_scheduled", job_id=original["id"], replay_id=replay_id, check_id=check_id,
                     suspect=suspect, checker=checker)

    async def _settle_pair(self, row: dict[str, Any], meta: dict[str, Any]) -> None:
        """Both runs of a pair finished (settled once, by whichever finished last)."""
        partner_id = next(j for j in meta["pair"] if j != row["id"])
        partner = await self._db.fetchone("get_job_any", {"id": partner_id})
        if partner is None or partner.get("status") != "completed":
            return  # the partner settles it when it finishes
        if await self._db.fetchone("trust_claim_settlement", {"key": ",".join(meta["pair"])}) is None:
            return  # the partner's replica settled it already
        original = await self._db.fetchone("get_job_any", {"id": meta["check_of"]})
        if original is None:
            return
        replay, check = (row, partner) if meta.get("role") == "replay" else (partner, row)
        suspect, checker = meta["suspect"], check["node_id"]
        if agree(_content(replay), _content(check), self._settings.verify_words):
            self._evidence(suspect, Evidence.CHECK_PASSED)
            self._evidence(checker, Evidence.CHECK_PASSED)
            log.info("check_passed", job_id=original["id"], node_id=suspect, checker=checker, replay=replay["id"])
            return
        log.warning("check_disagreed", job_id=original["id"], node_id=suspect, checker=checker, replay=replay["id"],
                    detail="asking a third node")
        third = await self._check(original, round_=2, suspect=suspect, avoid=[suspect, checker],
                                  first_check=check["id"], request=check.get("request"), replay=replay["id"])
        if third is None:
            log.warning("check_inconclusive", job_id=original["id"], node_id=suspect, checker=checker,
                        detail="no third operator's node to settle it; no evidence recorded")

    async def _insert(self, model: str, request: dict[str, Any], node_id: str, *,
                      job_id: str | None = None) -> str | None:
        """A job of the network account pinned to `node_id`, left for any replica's sweeper to place."""
        from control_plane.credits import ledger

        job_id = job_id or new_id("job")
        try:
            async with self._db.transaction() as tx:
                await tx.fetchone("insert_job", {
                    "id": job_id, "account_id": self._account_id, "api_key_id": None, "kind": "chat",
                    "model": model, "request": jsonb(request), "pinned_node_id": node_id,
                    "claimed_by": None, "claim_secs": 0, "wallclock_secs": self._settings.default_max_wallclock_secs,
                    "request_id": None,
                })
                await ledger.reserve(tx, self._settings, account_id=self._account_id, api_key_id=None,
                                     job_id=job_id, model=model, payload=request)
        except PaymentRequired as exc:
            log.warning("check_not_affordable", account=self._settings.verify_account, detail=str(exc),
                        action="top up the network account to keep verifying")
            return None
        return job_id

    # -- known-answer probes -------------------------------------------------------------------
    async def probe_loop(self) -> None:
        """Every `trust_probe_interval_s`, probe the nodes that most need it with a known answer."""
        trusted = [n.strip() for n in self._settings.trust_probe_nodes.split(",") if n.strip()]
        if self._settings.trust_probe_interval_s <= 0 or not trusted or self._account_id is None:
            return
        while True:
            await asyncio.sleep(self._settings.trust_probe_interval_s)
            try:
                await self.probe_once(trusted)
            except asyncio.CancelledError:
                raise
            except StoreError as exc:
                log.warning("probe_failed", error=str(exc), action="retrying next interval")
            except Exception:
                log.exception("probe_error")

    async def probe_once(self, trusted: list[str]) -> None:
        """One probe: the quarantined or least-proven live node that a trusted node can answer for."""
        targets = []
        for view in self._registry.nodes():
            if view.node_id in trusted or view.state == "offline" or self._busy_probing(view.node_id):
                continue
            standing = self._standing(view.node_id)
            targets.append((not standing.quarantined, not standing.probation, self._rng.random(), view))
        for *_, view in sorted(targets, key=lambda t: t[:3]):
            for model in view.models:
                ref = next((t for t in trusted if self._registry.score_of(t, model) is not None), None)
                if ref is None or view.models[model].embeddings:
                    continue
                request = self._probe_request({"probe_ref": True, "target": view.node_id})
                job_id = await self._insert(model, request, ref)
                if job_id is not None:
                    self._probing[view.node_id] = (job_id, time.monotonic())
                    log.info("probe_reference_scheduled", node_id=view.node_id, reference_node=ref, job_id=job_id)
                return

    async def probe_claim(self, target: str, model: str, reference: str) -> str | None:
        """Measure a model claim: a fresh deterministic job on `reference` (a node trusted for the model), then
        the same job on `target`; the answers are compared when both are in (`_settle_probe_async`)."""
        if self._account_id is None:
            return None
        request = self._probe_request({"probe_ref": True, "target": target, "claim": model})
        job_id = await self._insert(model, request, reference)
        if job_id is not None:
            log.info("probe_reference_scheduled", node_id=target, reference_node=reference, job_id=job_id, model=model)
        return job_id

    def _probe_request(self, trust: dict[str, Any]) -> dict[str, Any]:
        """A fresh deterministic prompt (random words, temperature 0, random seed) a node cannot have seen."""
        words = " ".join(self._rng.choice(_PROBE_WORDS) for _ in range(3))
        return {"messages": [{"role": "user", "content": f"Write one short sentence about {words}."}],
                "params": {"max_tokens": 16, "temperature": 0.0, "top_p": 1.0, "seed": self._rng.randrange(1 << 31)},
                "stream": True, "trust": trust}

    def _busy_probing(self, node_id: str) -> bool:
        """A probe for the node is in flight (one that failed or never ran is forgotten after PROBE_TIMEOUT_S)."""
        found = self._probing.get(node_id)
        return found is not None and time.monotonic() - found[1] < PROBE_TIMEOUT_S

    async def _pick_checker(self, model: str, avoid: list[str]) -> str | None:
        """A node serving the model now whose operator runs none of the nodes in `avoid`: a free one if
        possible, else a busy one (the check waits for its slot)."""
        found = [c.node_id for c in placement.candidates(self._registry, model, exclude=avoid, limit=50)]
        if not found:  # every candidate busy: any live, accepting, unquarantined node serving the model
            found = [n for n in self._registry.page_ids(None, 200, model)
                     if n not in avoid and self._registry.score_of(n, model) is not None]
        if not found:
            return None
        rows = {r["id"]: r["operator_account_id"]
                for r in await self._db.fetchall("node_operators", {"ids": found + list(avoid)})}
        taken = {rows.get(n) for n in avoid}
        # Nodes without an operator account are the network's own (the self-hoster's): one operator.
        return next((n for n in found if rows.get(n) not in taken), None)

    async def _probe(self, reference: dict[str, Any], meta: dict[str, Any]) -> None:
        """The trusted node answered: send the same job to the node being probed."""
        target = meta["target"]
        request = {k: v for k, v in (reference.get("request") or {}).items() if k not in _PRIVATE_KEYS}
        request["trust"] = {"probe_of": reference["id"], "target": target, "probe": True}
        if meta.get("claim"):
            request["trust"]["claim"] = meta["claim"]
        job_id = await self._insert(reference["model"], request, target)
        if job_id is None:
            self._probing.pop(target, None)
        else:
            self._probing[target] = (job_id, time.monotonic())
            log.info("probe_scheduled", node_id=target, job_id=job_id)

    def _settle_probe(self, row: dict[str, Any], meta: dict[str, Any]) -> None:
        self._spawn(self._settle_probe_async(row, meta))

    async def _settle_probe_async(self, row: dict[str, Any], meta: dict[str, Any]) -> None:
        target = meta["target"]
        try:
            reference = await self._db.fetchone("get_job_any", {"id": meta["probe_of"]})
            if reference is None:
                return
            passed = agree(_content(reference), _content(row), self._settings.verify_words)
            self._evidence(target, Evidence.PROBE_PASSED if passed else Evidence.PROBE_FAILED)
            if passed:
                log.info("probe_passed", node_id=target, job_id=row["id"])
            else:
                log.warning("probe_failed", node_id=target, job_id=row["id"],
                            detail="its answer differs from a trusted node's to the same deterministic job")
            if meta.get("claim") and self._claim_settled is not None:
                await self._claim_settled(target, meta["claim"], passed)
        finally:
            if self._probing.get(target, (None,))[0] == row["id"]:
                del self._probing[target]

    # -- settling ------------------------------------------------------------------------------
    async def _settle(self, check: dict[str, Any], meta: dict[str, Any]) -> None:
        original = await self._db.fetchone("get_job_any", {"id": meta["check_of"]})
        if original is None or original.get("status") != "completed":
            return
        suspect, checker = meta["suspect"], check["node_id"]
        answer, checked = _content(original), _content(check)
        if meta.get("replay"):  # a sampled job: the suspect's answer is its replay at temperature 0
            replay = await self._db.fetchone("get_job_any", {"id": meta["replay"]})
            if replay is None:
                return
            answer = _content(replay)
        words = self._settings.verify_words
        if meta.get("round") == 1:
            if agree(answer, checked, words):
                self._evidence(suspect, Evidence.CHECK_PASSED)
                self._evidence(checker, Evidence.CHECK_PASSED)
                log.info("check_passed", job_id=original["id"], node_id=suspect, checker=checker)
                return
            log.warning("check_disagreed", job_id=original["id"], node_id=suspect, checker=checker,
                        detail="asking a third node")
            third = await self._check(original, round_=2, suspect=suspect, avoid=[suspect, checker],
                                      first_check=check["id"])
            if third is None:
                log.warning("check_inconclusive", job_id=original["id"], node_id=suspect, checker=checker,
                            detail="no third operator's node to settle it; no evidence recorded")
            return
        first = await self._db.fetchone("get_job_any", {"id": meta.get("first_check")})
        if first is None:
            return
        first_checker = first["node_id"]
        with_original, with_first = agree(answer, checked, words), agree(_content(first), checked, words)
        if with_original and not with_first:
            self._evidence(suspect, Evidence.CHECK_PASSED)
            self._evidence(checker, Evidence.CHECK_PASSED)
            self._evidence(first_checker, Evidence.CHECK_FAILED)
            log.warning("check_settled", job_id=original["id"], failed=first_checker, passed=[suspect, checker])
        elif with_first and not with_original:
            self._evidence(suspect, Evidence.CHECK_FAILED)
            self._evidence(checker, Evidence.CHECK_PASSED)
            self._evidence(first_checker, Evidence.CHECK_PASSED)
            log.warning("check_settled", job_id=original["id"], failed=suspect, passed=[checker, first_checker])
            await self._reverse(original, check["id"])
        else:
            log.warning("check_inconclusive", job_id=original["id"], node_id=suspect,
                        checkers=[first_checker, checker], detail="the third node agreed with both or neither")

    async def _reverse(self, original: dict[str, Any], check_id: str) -> None:
        """Take back the operator's payout for a job whose answer failed verification; return the user's charge."""
        note = f"reversed: the answer of job {original['id']} failed verification (check {check_id})"
        try:
            async with self._db.transaction() as tx:
                await tx.fetchall("reverse_payout", {"job_id": original["id"], "note": note})
                await tx.fetchall("return_charge", {"job_id": original["id"], "note": note})
        except StoreError as exc:
            log.error("reversal_failed", job_id=original["id"], error=str(exc),
                      action="the check stays recorded; reverse the payout by hand")

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(self._guard(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _guard(coro) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except StoreError as exc:
            log.warning("verification_step_failed", error=str(exc), detail="this check is dropped")
        except Exception:
            log.exception("verification_error")


_PROBE_WORDS = ("river", "mountain", "bread", "winter", "a lighthouse", "music", "a garden", "the moon", "coffee",
                "a library", "snow", "a bicycle", "friendship", "the desert", "a clock", "honey", "stars",
                "the wind", "a train", "the sea", "a cat", "trees", "rain", "a city", "the sun")


def _content(row: dict[str, Any]) -> str:
    return str((row.get("result") or {}).get("content") or "")
