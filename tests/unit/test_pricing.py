"""Credit arithmetic: whole credits, rounding up, reservations bound charges, payouts never exceed charges."""

from __future__ import annotations

from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from control_plane.credits import pricing
from control_plane.credits.pricing import Price

tokens = st.integers(min_value=0, max_value=10_000_000)
prices = st.builds(Price, st.integers(0, 10**12), st.integers(0, 10**12))


@given(tokens, tokens, prices)
def test_cost_is_the_exact_price_rounded_up_to_a_whole_credit(prompt, completion, price):
    exact = Fraction(prompt * price.input_per_mtok + completion * price.output_per_mtok, 1_000_000)
    cost = pricing.cost(prompt, completion, price)
    assert isinstance(cost, int)
    assert cost - 1 < exact <= cost


@given(tokens, tokens, tokens, tokens, prices)
def test_cost_grows_with_tokens_so_a_worst_case_reservation_covers_any_smaller_job(p, c, dp, dc, price):
    assert pricing.cost(p, c, price) <= pricing.cost(p + dp, c + dc, price)


@given(st.integers(0, 10**9), tokens, tokens, prices)
def test_a_charge_never_exceeds_its_reservation(reserved, prompt, completion, price):
    charged = pricing.charge(reserved, prompt, completion, price)
    assert 0 <= charged <= reserved
    assert charged == min(reserved, pricing.cost(prompt, completion, price))


@given(st.integers(0, 10**15), st.integers(0, 10_000))
def test_payout_is_the_operator_share_rounded_down(charged, bps):
    payout = pricing.payout(charged, bps)
    assert 0 <= payout <= charged
    assert payout == charged * bps // 10_000
    assert pricing.payout(charged, 10_000) == charged


def test_known_figures():
    price = Price(100_000, 200_000)
    assert pricing.cost(0, 0, price) == 0
    assert pricing.cost(1, 0, price) == 1  # 0.1 credit rounds up
    assert pricing.cost(10, 100, price) == 21
    assert pricing.cost(1_000_000, 1_000_000, price) == 300_000
    assert pricing.payout(21, 8000) == 16


@given(st.lists(st.text(max_size=300), min_size=1, max_size=8), st.lists(st.text(max_size=50), max_size=4))
def test_prompt_estimate_bounds_a_byte_level_tokenizer(contents, inputs):
    payload = {"messages": [{"role": "user", "content": c} for c in contents], "inputs": inputs}
    estimate = pricing.estimate_prompt_tokens(payload)
    # A byte-level BPE never produces more tokens than bytes; templates add at most the documented overhead.
    utf8 = sum(len(c.encode()) for c in contents) + sum(len(i.encode()) for i in inputs)
    assert estimate >= utf8 + pricing.BASE_OVERHEAD
    assert estimate == utf8 + pricing.PER_MESSAGE_OVERHEAD * (len(contents) + len(inputs)) + pricing.BASE_OVERHEAD


def test_max_completion_tokens():
    assert pricing.max_completion_tokens({"params": {"max_tokens": 7}}) == 7
    assert pricing.max_completion_tokens({"params": {}}) == pricing.DEFAULT_MAX_TOKENS
    assert pricing.max_completion_tokens({}) == pricing.DEFAULT_MAX_TOKENS
    assert pricing.max_completion_tokens({"params": {"max_tokens": 7}}, "embed") == 0


def test_prompt_estimate_counts_tools_tool_calls_and_images():
    from control_plane.credits.pricing import BASE_OVERHEAD, IMAGE_TOKENS, PER_MESSAGE_OVERHEAD, estimate_prompt_tokens

    plain = {"messages": [{"role": "user", "content": "hi"}]}
    base = estimate_prompt_tokens(plain)
    assert base == 2 + PER_MESSAGE_OVERHEAD + BASE_OVERHEAD
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert estimate_prompt_tokens({**plain, "params": {"tools": tools}}) > base + 40
    image = {"messages": [{"role": "user", "content": "hi", "images": ["aGk="]}]}
    assert estimate_prompt_tokens(image) == base + IMAGE_TOKENS
