"""Slot and attempt accounting over shuffled event orders: dispatcher, sweeper, registry and the node's slot table.

Every message between the control plane and the node (offer, reply, cancel, outcome, advertisement) is held
in flight and delivered when hypothesis says, in any order a real network allows (advertisements from one
node stay in order). The real Dispatcher, NodeRegistry, SlotTable and Assignments run on an event loop this
test steps; the only stand-ins are at the interfaces the dispatcher owns: an in-memory job table honouring the
named queries it uses, a bus whose offers wait for the test, and an engine run that ends when the test says.
"""

from __future__ import annotations

import asyncio
import itertools

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import protocol
from control_plane.bus import BusError, NoResponders
from control_plane.jobs.dispatcher import Dispatcher, QueuedJob
from control_plane.jobs.sweeper import Sweeper
from control_plane.scheduler.registry import NodeRegistry
from control_plane.settings import Settings
from node_agent.assignments import Assignments
from node_agent.metrics import NodeMetrics
from node_agent.slots import RunningJob, SlotTable
from protocol import subjects

NODE = "node_a"
MODEL = "m"
PICK = st.integers(min_value=0, max_value=1_000)


class JobTable:
    """The job rows, honouring the named queries the dispatcher and sweeper run (status, attempt, lease, node)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}
        self.highest_attempt: dict[str, int] = {}

    async def fetchall(self, name: str, params: dict) -> list[dict]:
        assert name == "processing_on_nodes"
        return [{"id": job_id, "attempt": r["attempt"], "node_id": r["node_id"], "first_token_at": r["first_token_at"],
                 "started_at": None} for job_id, r in self.rows.items()
                if r["status"] == "processing" and r["node_id"] in params["node_ids"]]

    async def fetchone(self, name: str, params: dict) -> dict | None:
        if name == "get_job_any":
            row = self.rows.get(params["id"])
            return None if row is None else {"id": params["id"], **row}
        assert name == "requeue_attempt"
        row = self.rows.get(params["id"])
        if row is None or row["status"] != "processing" or row["attempt"] != params["attempt"]:
            return None
        if row["first_token_at"] is not None:
            return None
        if params["lease"] is not None and row["lease"] != params["lease"]:
            return None
        row.update(status="pending", lease=None, node_id=None)
        return {"id": params["id"], "model": MODEL, "attempt": row["attempt"], "pinned_node_id": None, "kind": "chat",
                "request": {"messages": []}, "deadline": 1e12}

    async def execute(self, name: str, params: dict) -> int:
        row = self.rows.get(params["id"])
        if row is None:
            return 0
        if name == "start_attempt" and row["status"] == "pending":
            row.update(status="processing", attempt=params["attempt"], lease=params["lease"], node_id=params["node_id"])
            self.highest_attempt[params["id"]] = max(self.highest_attempt.get(params["id"], 0), params["attempt"])
            return 1
        if name == "fail_processing" and row["status"] == "processing" and row["attempt"] == params["attempt"]:
            row.update(status="failed")
            return 1
        if (name == "fail_processing_streamed" and row["status"] == "processing" and row["attempt"] == params["attempt"]
                and row["first_token_at"] is not None):
            row.update(status="failed")
            return 1
        if (name == "revert_attempt" and row["status"] == "processing" and row["lease"] == params["lease"]
                and row["first_token_at"] is None):
            row.update(status="pending", lease=None, node_id=None)
            return 1
        if name == "fail_pending" and row["status"] == "pending":
            row.update(status="failed")
            return 1
        return 0


class HeldBus:
    """Offers wait until the test delivers the node's reply or times them out; cancels are held in flight."""

    def __init__(self, machine: CapacityMachine) -> None:
        self.m = machine

    async def assign(self, node_id: str, assignment: protocol.Assignment, timeout: float):
        fut = asyncio.get_running_loop().create_future()
        self.m.offers.append(Offer(assignment, fut))
        return await fut

    async def publish(self, subject: str, message: object) -> None:  # cancels only
        assert subject == subjects.node_cancel(NODE)
        self.m.cancels.append(message)
        self.m.cancels_sent.append(message)


class Offer:
    def __init__(self, assignment: protocol.Assignment, fut: asyncio.Future) -> None:
        self.assignment = assignment
        self.fut = fut
        self.received = False  # the node handled it
        self.reply: protocol.AssignmentReply | None = None


class ReplyMsg:
    def __init__(self, data: bytes, offer: Offer) -> None:
        self.data = data
        self.offer = offer

    async def respond(self, data: bytes) -> None:
        self.offer.reply = protocol.decode(data, protocol.AssignmentReply)


class Msg:
    def __init__(self, data: bytes) -> None:
        self.data = data


class HeldRunner:
    """An engine run that ends when the test says (or is stopped by a cancel)."""

    def __init__(self, machine: CapacityMachine) -> None:
        self.m = machine

    async def run(self, job: RunningJob) -> protocol.JobOutcome:
        a = job.assignment
        fut = asyncio.get_running_loop().create_future()
        self.m.engine[job.key] = fut
        try:
            if job.cancel_reason is not None:
                raise asyncio.CancelledError
            await fut
            return protocol.JobResult(job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=NODE, content="x")
        except asyncio.CancelledError:
            return protocol.JobFailure(job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=NODE,
                                       error=job.cancel_reason or "node_shutdown", message="stopped")
        finally:
            self.m.engine.pop(job.key, None)


class HeldPublisher:
    def __init__(self, machine: CapacityMachine) -> None:
        self.m = machine

    async def outcome(self, outcome: protocol.JobOutcome) -> bool:
        self.m.outcomes.append(outcome)
        return True


class CapacityMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.offers: list[Offer] = []
        self.cancels: list[protocol.Cancel] = []
        self.cancels_sent: list[protocol.Cancel] = []
        self.outcomes: list[protocol.JobOutcome] = []
        self.ads: list[tuple[int, protocol.Advertisement]] = []  # in flight, delivered in order
        self.engine: dict[tuple[str, int], asyncio.Future] = {}
        self.ids = itertools.count()
        self.releases: dict[tuple[str, int, str], int] = {}
        self.db = JobTable()
        self.registry = NodeRegistry(now=lambda: 0.0)
        settings = Settings(assign_timeout_s=1.0, replica_id="r1", max_attempts=3)
        self.dispatcher = Dispatcher(self.db, HeldBus(self), self.registry,  # type: ignore[arg-type]
                                     settings, clock=lambda: 0.0)
        self.sweeper = Sweeper(self.db, self.registry, self.dispatcher, settings, clock=lambda: 0.0)  # type: ignore[arg-type]
        #: Per job, the events that may raise its attempt number: only a lost attempt sent back to the queue.
        #: Refusals, offers nobody received and offers the node did not answer in time never do.
        self.may_raise: dict[str, int] = {}
        #: Per job whose first token reached a client: how many offers it had then (it must never get another).
        self.offers_when_shown: dict[str, int] = {}
        #: Leases of runs whose first token reached a client.
        self.shown: set[str] = set()
        self.declared_lost: set[str] = set()
        self.last_delivered_ad: frozenset[str] = frozenset()
        self.lost_outcomes = False
        self.lost: dict[str, int] = {}
        self.ads_built = 0

    def teardown(self) -> None:
        if hasattr(self, "slots"):
            self.everything_settles()  # every example ends by checking that nothing leaked

        async def close() -> None:
            for offer in self.offers:
                offer.fut.cancel()
            for fut in list(self.engine.values()):
                fut.cancel()
            await self.dispatcher.close()
            await self.node.wait_all()
        self.loop.run_until_complete(close())
        self.loop.close()

    def step(self, coro=None) -> None:
        async def go() -> None:
            if coro is not None:
                await coro
            for _ in range(20):  # let every task run until it waits on something the test holds
                await asyncio.sleep(0)
        self.loop.run_until_complete(go())

    @initialize(slots=st.integers(1, 3))
    def start_node(self, slots: int) -> None:
        self.slots = SlotTable(slots)
        release = self.slots.release

        def counted_release(job: RunningJob) -> bool:  # a slot is freed exactly once per admitted job
            freed = release(job)
            if freed:
                key = (*job.key, job.assignment.lease)
                self.releases[key] = self.releases.get(key, 0) + 1
            return freed
        self.slots.release = counted_release  # type: ignore[method-assign]
        self.node = Assignments(NODE, self.slots, HeldRunner(self), HeldPublisher(self), NodeMetrics(),  # type: ignore[arg-type]
                                draining=lambda: False, serves=lambda model: model == MODEL)
        self.advertise()
        self.deliver_ad()

    # -- control plane ---------------------------------------------------------------------------
    @rule()
    def submit(self) -> None:
        job_id = f"job_{next(self.ids)}"
        self.db.rows[job_id] = {"status": "pending", "attempt": 1, "lease": None, "node_id": None,
                                "first_token_at": None}
        self.dispatcher.enqueue(QueuedJob(job_id, MODEL, "chat", {"messages": []}, deadline=1e12), wake=False)

    @rule()
    def dispatch(self) -> None:
        self.step(self.dispatcher._drain())

    @rule(pick=PICK)
    def api_cancel(self, pick: int) -> None:
        live = [j for j, r in self.db.rows.items() if r["status"] in ("pending", "processing")]
        if live:
            job_id = live[pick % len(live)]
            row = self.db.rows[job_id]
            was = row["status"]
            row["status"] = "cancelled"
            self.dispatcher.forget(job_id)
            if was == "processing":
                self.step(self.dispatcher.cancel_on_node(NODE, job_id, row["attempt"]))

    # -- the network -----------------------------------------------------------------------------
    @rule(pick=PICK)
    def node_receives_offer(self, pick: int) -> None:
        waiting = [o for o in self.offers if not o.received and not o.fut.done()]
        if waiting:
            self.receive(waiting[pick % len(waiting)])

    def receive(self, offer: Offer) -> None:
        offer.received = True
        self.step(self.node.on_assign(ReplyMsg(protocol.encode(offer.assignment), offer)))

    @rule(pick=PICK)
    def reply_arrives(self, pick: int) -> None:
        answered = [o for o in self.offers if o.reply is not None and not o.fut.done()]
        if answered:
            offer = answered[pick % len(answered)]
            offer.fut.set_result(offer.reply)
            self.step()

    @rule(pick=PICK, how=st.sampled_from(["timeout", "bus_error", "no_responders"]))
    def offer_fails(self, pick: int, how: str) -> None:
        pending = [o for o in self.offers if not o.fut.done()]
        if pending:
            offer = pending[pick % len(pending)]
            job_id = offer.assignment.job_id
            if how == "no_responders":
                offer.fut.set_exception(NoResponders("no agent listening"))
            else:
                if how == "bus_error":
                    offer.fut.set_exception(BusError("connection closed"))
                else:
                    offer.fut.set_result(None)
            self.step()
            if how == "no_responders":
                self.advertise()  # the agent is connected again (in this test it always was): it advertises
                self.deliver_all_ads()

    @rule()
    def node_lost(self) -> None:
        """The sweeper re-places the node's processing jobs (silent node, or a restart), offers in flight or not."""
        before = {j: r["status"] for j, r in self.db.rows.items()}
        self.step(self.sweeper.nodes_lost([NODE]))
        for job_id, was in before.items():
            if was == "processing" and self.db.rows[job_id]["status"] in ("pending", "failed"):
                self.may_raise[job_id] = self.may_raise.get(job_id, 0) + 1
                self.declared_lost.add(job_id)  # the registry stops counting it, even if this node still runs it

    def deliver_all_ads(self) -> None:
        while self.ads:
            self.deliver_ad()

    @rule(pick=PICK)
    def cancel_arrives(self, pick: int) -> None:
        if self.cancels:
            cancel = self.cancels.pop(pick % len(self.cancels))
            self.step(self.node.on_cancel(Msg(protocol.encode(cancel))))

    @rule(pick=PICK)
    def engine_finishes(self, pick: int) -> None:
        running = [f for f in self.engine.values() if not f.done()]
        if running:
            running[pick % len(running)].set_result(None)
            self.step()

    @rule(pick=PICK)
    def outcome_arrives(self, pick: int) -> None:
        if self.outcomes:
            outcome = self.outcomes.pop(pick % len(self.outcomes))
            self.dispatcher.job_ended(outcome.job_id, outcome.node_id, outcome.attempt, outcome.lease)
            self.step()

    @rule(pick=PICK)
    def first_token_reaches_a_client(self, pick: int) -> None:
        """A run on the node publishes its first chunk and a stream shows it: mark_first_token matches the row's
        attempt, lease and node (the node may be running an offer whose reply has not arrived, or never will)."""
        running = [j for j in self.slots.running.values() if j.started and j.cancel_reason is None]
        if running:
            a = running[pick % len(running)].assignment
            row = self.db.rows[a.job_id]
            if (row["status"] == "processing" and row["attempt"] == a.attempt and row["lease"] == a.lease
                    and row["node_id"] == NODE):
                if row["first_token_at"] is None:
                    row["first_token_at"] = 1.0
                    self.offers_when_shown[a.job_id] = sum(o.assignment.job_id == a.job_id for o in self.offers)
                self.shown.add(a.lease)

    @rule(pick=PICK)
    def outcome_lost(self, pick: int) -> None:
        """Core NATS drops it (a NATS restart): only a later advertisement can tell the slot is free."""
        if self.outcomes:
            outcome = self.outcomes.pop(pick % len(self.outcomes))
            self.lost_outcomes = True
            self.lost[outcome.job_id] = self.ads_built  # counted until an advertisement built after this arrives

    @rule()
    def advertise(self) -> None:
        self.ads_built += 1
        self.ads.append((self.ads_built, protocol.Advertisement(
            node_id=NODE, agent_version="1", engine="ollama", state="online", slots=self.slots.slots,
            active_jobs=len(self.slots), models=(protocol.ModelInfo(MODEL, loaded=True),),
            running=tuple(self.slots.unsettled), admitted=self.slots.admitted, interval_s=3600.0)))

    @precondition(lambda self: self.ads)
    @rule()
    def deliver_ad(self) -> None:
        serial, ad = self.ads.pop(0)
        self.registry.observe(ad)
        self.lost = {job: built for job, built in self.lost.items() if built >= serial}
        self.last_delivered_ad = frozenset(ad.running or ())
        self.step()

    # -- what must always hold -------------------------------------------------------------------
    def in_flight_jobs(self) -> set[str]:
        return ({o.assignment.job_id for o in self.offers if not o.fut.done()}
                | {o.job_id for o in self.outcomes})

    @invariant()
    def node_never_over_its_slots_and_frees_each_slot_once(self) -> None:
        if not hasattr(self, "slots"):
            return
        assert len(self.slots) <= self.slots.slots
        assert all(n == 1 for n in self.releases.values()), self.releases
        for job in self.slots.running.values():  # a job holding a slot is still running or about to
            assert job.task is not None and not job.task.done()

    @invariant()
    def registry_neither_loses_nor_double_counts(self) -> None:
        if not hasattr(self, "slots"):
            return
        view = self.registry.get(NODE)
        assert view is not None
        # Never double-counted: every job counted is one the node holds or one on its way to or from it.
        possible = set(self.slots.running) | self.slots.unsettled | self.in_flight_jobs() | set(self.lost)
        assert view.estimated_active <= len(possible), (view, possible)
        # Never lost: a running job the control plane knows of (accepted reply or advertised) is counted.
        accepted = {o.assignment.job_id for o in self.offers
                    if o.fut.done() and not o.fut.cancelled() and o.fut.exception() is None
                    and o.fut.result() is not None and o.fut.result().accepted}
        known = (set(self.slots.running) & (accepted | self.last_delivered_ad)) - self.declared_lost
        assert view.estimated_active >= len(known), (view, known)

    @invariant()
    def a_job_is_queued_at_most_once_and_never_while_offered(self) -> None:
        queued = [j.id for q in self.dispatcher._queues.values() for j in q]
        assert len(queued) == len(set(queued))
        assert not [j for j in queued if self.dispatcher.offering(j)]
        for job_id in queued:  # the queued copy is the one held (claims are renewed for it)
            assert self.dispatcher._held.get(job_id) is not None

    @invariant()
    def a_job_whose_tokens_were_shown_never_moves(self) -> None:
        """A client never sees two runs: after a first token is shown the job is not offered again, and its row
        keeps that run (or ends)."""
        for job_id, offers in self.offers_when_shown.items():
            assert sum(o.assignment.job_id == job_id for o in self.offers) == offers, job_id
            row = self.db.rows[job_id]
            assert row["status"] != "pending" and (row["lease"] in self.shown or row["status"] != "processing")
        # ...and a run the client is watching is never stopped for an unanswered offer.
        assert not [c for c in self.cancels_sent if c.reason == "unanswered" and c.lease in self.shown]

    @invariant()
    def attempts_never_inflate(self) -> None:
        for job_id, highest in self.db.highest_attempt.items():
            assert highest <= 1 + self.may_raise.get(job_id, 0), (job_id, highest, self.may_raise)

    @rule()
    def everything_settles(self) -> None:
        """Deliver every message and finish every run: the node and the registry both end at zero."""
        for _ in range(50):
            if not (self.offers and any(not o.fut.done() for o in self.offers) or self.cancels or self.outcomes
                    or self.engine):
                break
            for offer in [o for o in self.offers if not o.fut.done()]:
                if not offer.received:
                    self.receive(offer)
                if offer.reply is not None and not offer.fut.done():
                    offer.fut.set_result(offer.reply)
                elif not offer.fut.done():
                    offer.fut.set_result(None)
                self.step()
            while self.cancels:
                self.cancel_arrives(0)
            for fut in list(self.engine.values()):
                if not fut.done():
                    fut.set_result(None)
            self.step()
            while self.outcomes:
                self.outcome_arrives(0)
        assert not self.slots.running and not self.slots.unsettled
        if not self.lost_outcomes:  # every end was seen: no advertisement needed
            assert self.registry.get(NODE).estimated_active == 0, self.registry.get(NODE)
        self.advertise()
        while self.ads:
            self.deliver_ad()
        assert self.registry.get(NODE).estimated_active == 0


TestCapacityMachine = CapacityMachine.TestCase
TestCapacityMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_a_cancel_before_the_job_task_first_runs_still_frees_the_slot_and_reports_it() -> None:
    """The early-close bug: the cancel reaches the job in the same loop turn as its assignment."""
    outcomes: list[protocol.JobOutcome] = []

    class Publisher:
        async def outcome(self, outcome):
            outcomes.append(outcome)
            return True

    class Runner:
        async def run(self, job):
            if job.cancel_reason is not None:
                a = job.assignment
                return protocol.JobFailure(job_id=a.job_id, attempt=a.attempt, lease=a.lease, node_id=NODE,
                                           error=job.cancel_reason, message="stopped")
            raise AssertionError("the job ran although it was cancelled first")

    async def go() -> None:
        slots = SlotTable(1)
        node = Assignments(NODE, slots, Runner(), Publisher(), NodeMetrics(),  # type: ignore[arg-type]
                           draining=lambda: False, serves=lambda m: True)
        a = protocol.Assignment(job_id="job_1", attempt=1, lease="l", model=MODEL)
        node.start(a)
        await node.on_cancel(Msg(protocol.encode(protocol.Cancel("job_1", 1))))  # no await point in between
        await node.wait_all()
        for _ in range(5):
            await asyncio.sleep(0)
        assert not slots.running and not slots.unsettled and slots.idle.is_set()
        assert [(o.job_id, o.error) for o in outcomes] == [("job_1", "cancelled")]
    asyncio.run(go())


def test_a_cancel_that_overtakes_its_assignment_refuses_it() -> None:
    slots = SlotTable(1)
    assert slots.cancel("job_1", 1, "cancelled") is None
    a = protocol.Assignment(job_id="job_1", attempt=1, lease="l", model=MODEL)
    assert slots.refusal(a, draining=False, serves=lambda m: True) == (
        "cancelled", "the job was cancelled before its assignment arrived")
    other_offer = protocol.Assignment(job_id="job_2", attempt=1, lease="l2", model=MODEL)
    slots.cancel("job_2", 1, "unanswered", lease="old")  # cancels one earlier offer only
    assert slots.refusal(other_offer, draining=False, serves=lambda m: True) is None


def test_an_outcome_lost_on_core_nats_frees_the_slot_at_the_next_advertisement() -> None:
    m = CapacityMachine()
    m.start_node(slots=1)
    m.submit()
    m.dispatch()
    m.node_receives_offer(0)
    m.reply_arrives(0)
    m.engine_finishes(0)
    m.outcome_lost(0)
    assert m.registry.get(NODE).free_slots == 0  # nothing said it ended yet
    m.advertise()
    m.deliver_ad()
    assert m.registry.get(NODE).free_slots == 1
    m.teardown()


def test_an_outcome_seen_before_the_offers_reply_frees_the_slot() -> None:
    m = CapacityMachine()
    m.start_node(slots=1)
    m.submit()
    m.dispatch()
    m.node_receives_offer(0)
    m.engine_finishes(0)
    m.outcome_arrives(0)  # before the reply: the old dispatcher found no reservation and leaked the slot
    m.reply_arrives(0)
    assert m.registry.get(NODE).free_slots == 1
    m.teardown()


def test_a_node_lost_while_its_offer_is_in_flight_places_the_job_once() -> None:
    m = CapacityMachine()
    m.start_node(slots=1)
    m.submit()
    m.dispatch()
    m.node_lost()  # the sweeper leaves it to the offer in flight
    assert m.db.rows["job_0"]["status"] == "processing" and not m.dispatcher.queued_count()
    m.offer_fails(0, "timeout")
    assert m.dispatcher.queued_count() == 1 and m.db.rows["job_0"]["status"] == "pending"
    m.dispatch()
    # The silent node may have run the first offer: the next one is told apart by its lease, not its attempt.
    assert m.offers[-1].assignment.attempt == 1 and m.offers[-1].assignment.lease != m.offers[0].assignment.lease
    assert m.cancels and m.cancels[-1].lease == m.offers[0].assignment.lease  # the silent run is told to stop
    m.teardown()


def test_a_node_that_runs_an_offer_it_did_not_answer_in_time_is_stopped_and_never_recorded() -> None:
    """The silent node started the job; its reply is late. The job is offered again under attempt 1 with a new
    lease; the stale run is cancelled by its lease and its outcome matches nothing; the new run completes."""
    m = CapacityMachine()
    m.start_node(slots=2)
    m.submit()
    m.dispatch()
    stale = m.offers[0].assignment
    m.node_receives_offer(0)  # the node admits it and starts it, but its reply never arrives in time
    m.offer_fails(0, "timeout")
    assert m.db.rows["job_0"]["status"] == "pending" and m.cancels[-1].lease == stale.lease
    m.advertise()
    m.deliver_all_ads()
    m.dispatch()
    fresh = m.offers[-1].assignment
    assert (fresh.attempt, m.db.rows["job_0"]["lease"]) == (1, fresh.lease) and fresh.lease != stale.lease
    m.cancel_arrives(0)  # stops the stale run only
    m.node_receives_offer(0)
    m.reply_arrives(0)
    m.engine_finishes(0)
    leases = {o.lease: o for o in m.outcomes}
    assert leases[stale.lease].error == "unanswered"  # its failure carries its lease: it matches no row
    assert isinstance(leases[fresh.lease], protocol.JobResult)
    m.teardown()


def test_an_unanswered_offer_whose_first_token_was_shown_stays_on_its_node() -> None:
    """Its reply was lost but its tokens reached a client: moving the job would show the client two runs."""
    m = CapacityMachine()
    m.start_node(slots=1)
    m.submit()
    m.dispatch()
    m.node_receives_offer(0)
    m.first_token_reaches_a_client(0)
    m.offer_fails(0, "timeout")
    row = m.db.rows["job_0"]
    assert row["status"] == "processing" and row["lease"] == m.offers[0].assignment.lease and not m.cancels
    assert not m.dispatcher.queued_count() and m.dispatcher.placement_of("job_0").accepted
    m.teardown()


def test_an_offer_nobody_received_uses_no_attempt_and_the_node_gets_none_until_it_advertises() -> None:
    m = CapacityMachine()
    m.start_node(slots=1)
    m.submit()
    m.dispatch()
    m.offers[0].fut.set_exception(NoResponders("no agent listening"))
    m.step()
    assert m.registry.get(NODE).free_slots == 0 and m.dispatcher.queued_count() == 1
    m.dispatch()
    assert len(m.offers) == 1  # no offer to an unreachable node
    m.advertise()
    m.deliver_all_ads()
    m.dispatch()
    assert len(m.offers) == 2 and m.offers[-1].assignment.attempt == 1
    m.teardown()
