"""The reputation rule: a node's score from weighted, decaying evidence, and the quarantine decision (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from enum import Enum


class Evidence(Enum):
    """What the control plane learned about a node."""

    CHECK_PASSED = "check_passed"  # a spot check (or its third-node tie-break) agreed with the node
    PROBE_PASSED = "probe_passed"  # a known-answer probe came back right
    SERVED = "served"  # a job completed without anything caught: availability, not honesty
    CHECK_FAILED = "check_failed"  # a spot check settled against the node
    PROBE_FAILED = "probe_failed"
    USAGE_CAPPED = "usage_capped"  # claimed more tokens than its text can hold
    ERROR = "error"  # the engine failed a job
    UNANSWERED = "unanswered"  # an assignment offer got no answer in time

    @property
    def weight(self) -> float:
        return WEIGHTS[self][0]

    @property
    def good(self) -> bool:
        return WEIGHTS[self][1]


#: (weight, good) per kind of evidence: a failed check outweighs a passed one, so a cheat cannot buy
#: standing with honest answers in between; errors and silence weigh little (they may be bad luck).
WEIGHTS: dict[Evidence, tuple[float, bool]] = {
    Evidence.CHECK_PASSED: (2.0, True), Evidence.PROBE_PASSED: (2.0, True), Evidence.SERVED: (0.05, True),
    Evidence.CHECK_FAILED: (3.0, False), Evidence.PROBE_FAILED: (3.0, False), Evidence.USAGE_CAPPED: (1.0, False),
    Evidence.ERROR: (0.1, False), Evidence.UNANSWERED: (0.1, False),
}


@dataclass(frozen=True, slots=True)
class Policy:
    """The knobs of the rule (see docs/trust.md)."""

    prior_good: float = 4.0  # a new node starts at prior_good / (prior_good + prior_bad) = 0.8
    prior_bad: float = 1.0
    quarantine_below: float = 0.3
    release_at: float = 0.6  # hysteresis: a quarantined node leaves quarantine only at this score
    probation_evidence: float = 10.0  # total evidence weight below which a node is on probation
    half_life_s: float = 7 * 86400.0  # old evidence fades: a node recovers, and nobody coasts on a distant past


@dataclass(frozen=True, slots=True)
class Standing:
    """A node's accumulated evidence (already decayed to `at`) and its quarantine flag."""

    good: float = 0.0
    bad: float = 0.0
    quarantined: bool = False
    at: float = 0.0  # unix seconds of the last decay


def score(s: Standing, policy: Policy = Policy()) -> float:
    """The reputation in (0, 1): the mean of a Beta posterior over 'the node is honest and up'."""
    return (policy.prior_good + s.good) / (policy.prior_good + policy.prior_bad + s.good + s.bad)


def on_probation(s: Standing, policy: Policy = Policy()) -> bool:
    """Too little evidence yet to judge the node (a new node, or one an admin cleared)."""
    return s.good + s.bad < policy.probation_evidence


def decay(s: Standing, now: float, policy: Policy = Policy()) -> Standing:
    """Evidence faded to `now` (half of it every half-life); the clock never runs backwards."""
    dt = max(0.0, now - s.at)
    if dt == 0.0 or policy.half_life_s <= 0:
        return replace(s, at=max(now, s.at))
    f = math.exp(-math.log(2) * dt / policy.half_life_s)
    return replace(s, good=s.good * f, bad=s.bad * f, at=now)


def judge(s: Standing, policy: Policy = Policy()) -> Standing:
    """Quarantine below the threshold; release only at the (higher) release score."""
    r = score(s, policy)
    if not s.quarantined and r < policy.quarantine_below:
        return replace(s, quarantined=True)
    if s.quarantined and r >= policy.release_at:
        return replace(s, quarantined=False)
    return s


def add(s: Standing, good: float, bad: float, now: float, policy: Policy = Policy()) -> Standing:
    """Fold in new evidence weights (decaying the old first) and re-judge."""
    d = decay(s, now, policy)
    return judge(replace(d, good=d.good + max(good, 0.0), bad=d.bad + max(bad, 0.0)), policy)


def weigh(events: list[Evidence] | tuple[Evidence, ...]) -> tuple[float, float]:
    """The (good, bad) weights of a batch of evidence."""
    good = sum(e.weight for e in events if e.good)
    bad = sum(e.weight for e in events if not e.good)
    return good, bad


def cleared(now: float) -> Standing:
    """What an admin's clear leaves: no evidence, not quarantined, on probation again."""
    return Standing(0.0, 0.0, False, now)
