"""Pure credit arithmetic: prompt estimates, worst-case reservations, charges and operator payouts (whole credits).

A credit is the smallest unit of account; every figure is an integer, so no float rounding ever loses value.
Prices are credits per 1,000,000 tokens. The same formulas run inside PostgreSQL (`infernet_credit_cost`,
`infernet_settle_job` in migration 0002); tests check that the two agree.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: Tokens a chat template adds around each message (role markers, separators), as an upper bound.
PER_MESSAGE_OVERHEAD = 16
#: Tokens a template adds once (a default system prompt, the assistant header), as an upper bound.
BASE_OVERHEAD = 64
#: Prompt tokens one image may take (vision encoders use a few hundred to a few thousand per image).
IMAGE_TOKENS = 4096
#: max_tokens when a request does not say (the reference API's default).
DEFAULT_MAX_TOKENS = 512
TOKENS_PER_PRICE_UNIT = 1_000_000
BPS = 10_000


@dataclass(frozen=True, slots=True)
class Price:
    """What a model costs: credits per 1M input (prompt) and per 1M output (completion) tokens."""

    input_per_mtok: int
    output_per_mtok: int


def estimate_prompt_tokens(payload: Mapping[str, Any]) -> int:
    """An upper bound on the prompt tokens of a job's request payload.

    Byte-level tokenizers never emit more tokens than the UTF-8 bytes they read, so bytes plus the template
    overhead bounds what the engine will count; the charge is capped at the reservation anyway.
    """
    messages = payload.get("messages") or ()
    texts = [str(m.get("content") or "") for m in messages]
    texts += [str(i) for i in payload.get("inputs") or ()]
    extra = 0
    if any(len(m) > 2 for m in messages):  # tool calls travel as text; images cost their encoder's tokens
        extra += sum((len(json.dumps(m["tool_calls"])) if m.get("tool_calls") else 0)
                     + IMAGE_TOKENS * len(m.get("images") or ()) for m in messages)
    tools = (payload.get("params") or {}).get("tools")
    if tools:  # the tool definitions are part of the prompt the engine renders
        extra += len(json.dumps(tools).encode())
    return (sum(len(t.encode(errors="surrogatepass")) for t in texts) + PER_MESSAGE_OVERHEAD * len(texts)
            + BASE_OVERHEAD + extra)


def max_completion_tokens(payload: Mapping[str, Any], kind: str = "chat") -> int:
    """The most output tokens a job may produce: its max_tokens (embeddings produce none)."""
    if kind == "embed":
        return 0
    params = payload.get("params") or {}
    return int(params.get("max_tokens") or DEFAULT_MAX_TOKENS)


def cost(prompt_tokens: int, completion_tokens: int, price: Price) -> int:
    """Credits for tokens at a price, rounded up to a whole credit (exact integer arithmetic)."""
    numerator = prompt_tokens * price.input_per_mtok + completion_tokens * price.output_per_mtok
    return -(-numerator // TOKENS_PER_PRICE_UNIT)


def charge(reserved: int, prompt_tokens: int, completion_tokens: int, price: Price) -> int:
    """What a completed job is charged: the cost of its tokens, never more than it reserved."""
    return min(reserved, cost(prompt_tokens, completion_tokens, price))


def payout(charged: int, operator_share_bps: int) -> int:
    """The node operator's share of a charge, in basis points, rounded down."""
    return charged * operator_share_bps // BPS
