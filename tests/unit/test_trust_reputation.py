"""The reputation rule: bounded, monotone in evidence, fading, recovering, and its quarantine hysteresis."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from control_plane.trust import reputation as rep
from control_plane.trust.reputation import Evidence, Policy, Standing

weights = st.floats(min_value=0, max_value=1e6, allow_nan=False)
times = st.floats(min_value=0, max_value=1e9, allow_nan=False)
standings = st.builds(Standing, weights, weights, st.booleans(), times)
events = st.lists(st.sampled_from(list(Evidence)), max_size=50)


@given(standings, events, times)
def test_score_stays_in_the_open_unit_interval(s, evs, dt):
    good, bad = rep.weigh(evs)
    after = rep.add(s, good, bad, s.at + dt)
    assert 0 < rep.score(after) < 1


@given(standings, weights, weights)
def test_more_good_evidence_never_lowers_and_more_bad_never_raises(s, extra, base):
    now = s.at
    assert rep.score(rep.add(s, base + extra, 0, now)) >= rep.score(rep.add(s, base, 0, now))
    assert rep.score(rep.add(s, 0, base + extra, now)) <= rep.score(rep.add(s, 0, base, now))


@given(standings, times)
def test_evidence_fades_toward_the_prior_and_never_grows(s, dt):
    later = rep.decay(s, s.at + dt)
    assert later.good <= s.good and later.bad <= s.bad
    prior = rep.score(Standing())
    assert abs(rep.score(later) - prior) <= abs(rep.score(s) - prior) + 1e-9


@given(st.integers(min_value=1, max_value=200))
def test_a_quarantined_node_recovers_with_good_evidence(failures):
    s = Standing()
    for _ in range(failures):
        s = rep.add(s, *rep.weigh([Evidence.CHECK_FAILED]), now=0.0)
    was_quarantined = s.quarantined
    assert was_quarantined == (failures >= 3)  # 4 / (5 + 3k) < 0.3 from the third failed check on
    steps = 0
    while s.quarantined:
        s = rep.add(s, *rep.weigh([Evidence.PROBE_PASSED]), now=0.0)
        steps += 1
        assert steps < 10_000
    if was_quarantined:
        assert rep.score(s) >= Policy().release_at


def test_time_alone_releases_a_quarantined_node_after_enough_half_lives():
    s = Standing()
    while not s.quarantined:
        s = rep.add(s, 0, Evidence.CHECK_FAILED.weight, now=0.0)
    policy = Policy()
    # Fading alone returns the score to the prior (0.8 >= release); judge runs on the next evidence.
    later = rep.add(s, 0, 0, now=20 * policy.half_life_s)
    assert not later.quarantined


def test_quarantine_has_hysteresis():
    policy = Policy(quarantine_below=0.3, release_at=0.6)
    low = Standing(good=0, bad=10, quarantined=False)  # score 4/15 < 0.3
    assert rep.judge(low, policy).quarantined
    middle = Standing(good=2, bad=4, quarantined=True)  # score 6/11 ~ 0.55: stays in
    assert rep.judge(middle, policy).quarantined
    assert not rep.judge(Standing(good=2, bad=4, quarantined=False), policy).quarantined


def test_a_new_node_is_on_probation_at_the_prior_and_one_failed_check_does_not_quarantine_it():
    s = Standing()
    assert rep.on_probation(s) and rep.score(s) == 0.8
    once = rep.add(s, 0, Evidence.CHECK_FAILED.weight, now=0.0)
    assert not once.quarantined
    assert rep.cleared(5.0) == Standing(0.0, 0.0, False, 5.0)
