"""Placement under trust: measured speed replaces the advertised one, tiers demote, quarantine excludes."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from control_plane.scheduler import placement
from control_plane.scheduler.registry import NodeRegistry
from control_plane.trust.service import measured_tps, tier
from tests.unit.test_registry import Clock, ad, model


def best(reg: NodeRegistry, **kw) -> list[str]:
    return [c.node_id for c in placement.candidates(reg, "llama3", limit=3, **kw)]


def test_a_measured_speed_replaces_the_advertised_one_also_in_later_advertisements():
    reg = NodeRegistry(now=Clock())
    reg.observe(ad("liar", models=(model(tps=99_999.0),)))
    reg.observe(ad("fair", models=(model(tps=50.0),)))
    assert best(reg) == ["liar", "fair"]
    reg.set_measured_tps("liar", "llama3", 10.0)
    assert best(reg) == ["fair", "liar"]
    reg.observe(ad("liar", models=(model(tps=99_999.0),)))  # it keeps claiming; placement keeps measuring
    assert best(reg) == ["fair", "liar"]
    assert reg.tps_prior("llama3") == (10.0 + 50.0) / 2  # the prior for new nodes follows measurements too


def test_a_measurement_before_the_first_advertisement_applies_when_the_node_arrives():
    reg = NodeRegistry(now=Clock())
    reg.set_measured_tps("liar", "llama3", 5.0)
    reg.observe(ad("liar", models=(model(tps=99_999.0),)))
    reg.observe(ad("fair", models=(model(tps=50.0),)))
    assert best(reg) == ["fair", "liar"]


def test_a_lower_tier_needs_to_be_more_than_twice_as_fast_and_quarantine_excludes_even_pinned_jobs():
    reg = NodeRegistry(now=Clock())
    reg.observe(ad("a", models=(model(tps=100.0),)))
    reg.observe(ad("b", models=(model(tps=150.0),)))
    assert best(reg) == ["b", "a"]
    reg.set_trust("b", 1, False)
    assert best(reg) == ["a", "b"]
    reg.set_measured_tps("b", "llama3", 300.0)  # 3x faster beats one tier down
    assert best(reg) == ["b", "a"]
    reg.set_trust("b", 0, True)
    assert best(reg) == ["a"] and best(reg, pinned="b") == []
    reg.set_trust("b", 0, False)
    assert best(reg) == ["b", "a"] and best(reg, pinned="b") == ["b"]


def test_tiers_follow_reputation():
    assert [tier(r) for r in (0.95, 0.8, 0.7, 0.69, 0.5, 0.49, 0.1)] == [0, 0, 0, 1, 1, 2, 2]


def test_measured_speed_comes_from_the_control_plane_clock_and_needs_enough_to_measure():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    row = {"completion_tokens": 20, "assigned_at": t0, "first_token_at": None, "completed_at": t0 + timedelta(seconds=2)}
    assert measured_tps(row) == 10.0
    assert measured_tps(row | {"first_token_at": t0 + timedelta(seconds=1)}) == 20.0
    assert measured_tps(row | {"completion_tokens": 1}) is None
    assert measured_tps(row | {"completed_at": None}) is None


def test_an_unverified_claim_takes_probes_only_and_a_registration_trusts_only_what_it_names():
    from control_plane.nodes.service import NodeEntry

    reg = NodeRegistry(now=Clock())
    reg.observe(ad("new", models=()))  # its claim of llama3 was withheld from the advertisement
    reg.set_claims("new", {"llama3": model()})
    assert best(reg) == [] and best(reg, pinned="new") == []  # no user job, also not pinned
    assert best(reg, pinned="new", probe=True) == ["new"]  # the probe that measures the claim
    reg.set_claims("new", {})
    assert best(reg, pinned="new", probe=True) == []

    assert not NodeEntry("n", 4, False, None).trusts("llama3")  # no patterns: every claim is measured
    assert NodeEntry("n", 4, False, ("*",)).trusts("anything:1b")  # the admin vouches for every model
    trusted = NodeEntry("n", 4, False, ("llama3*",))
    assert trusted.trusts("llama3") and not trusted.trusts("qwen2.5:7b")
