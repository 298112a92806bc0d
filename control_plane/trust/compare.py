"""The comparator of spot checks: do two answers to the same deterministic job agree (pure)?

Two honest engines at temperature 0 run the same arithmetic in a different order (threads, SIMD width,
GPU kernels), so a near-tie between two tokens can flip late in a long answer and everything after it
differs. Early tokens almost never do, so the rule compares the first `words` whitespace-separated
words (default 8; docs/trust.md has the measurement behind it). An answer that stops early (the end
token, or max_tokens) is compared over its own length, its last word as a prefix (a cut may fall
inside a word). Whitespace runs count as one space.
"""

from __future__ import annotations

DEFAULT_WORDS = 8


def agree(a: str, b: str, words: int = DEFAULT_WORDS) -> bool:
    """True when the answers agree on their first `words` words (or over the shorter answer's length)."""
    wa, wb = a.split()[:words], b.split()[:words]
    if not wa or not wb:
        return not wa and not wb
    k = min(len(wa), len(wb))
    if wa[:k - 1] != wb[:k - 1]:
        return False
    last_a, last_b = wa[k - 1], wb[k - 1]
    if len(wa) == len(wb):
        return last_a == last_b or (len(wa) < words and (last_a.startswith(last_b) or last_b.startswith(last_a)))
    shorter_last, longer_word = (last_a, last_b) if len(wa) < len(wb) else (last_b, last_a)
    return longer_word.startswith(shorter_last)
