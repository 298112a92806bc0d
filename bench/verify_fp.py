"""Measures the spot-check comparator: how often two honest nodes disagree (false positives) and how often a
dishonest one agrees by luck (misses), on the real SmolLM2-135M through two llama.cpp engines.

The two engines run with different thread counts (1 and 2), so llama.cpp sums in a different order, as two
machines would. Usage:

    .venv/bin/python -m bench.verify_fp --jobs 50 --max-tokens 32

Prints one JSON object: per comparator length N (words), the disagreement rate of honest pairs, and
the agreement rate of an honest answer with a random-words answer of the same length.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time

from control_plane.trust.compare import agree
from node_agent.engines.base import Completion, Delta
from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, LlamaCppEngine
from protocol import ChatMessage, GenerationParams

SUBJECTS = ["the sea", "a cat", "bread", "the moon", "rain", "a city", "music", "trees", "winter", "a train",
            "coffee", "mountains", "a library", "the sun", "friendship", "a garden", "snow", "the river",
            "a bicycle", "stars", "the desert", "a clock", "honey", "the wind", "a lighthouse"]
FORMS = ["Write one sentence about {}.", "What is {}? Answer briefly.", "Give two facts about {}."]


def prompts(n: int) -> list[str]:
    return [FORMS[i % len(FORMS)].format(SUBJECTS[(i // len(FORMS)) % len(SUBJECTS)]) + f" ({i})" for i in range(n)]


async def answer(engine: LlamaCppEngine, prompt: str, max_tokens: int) -> str:
    params = GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=42)
    text = []
    async for item in engine.chat(BUNDLED_MODEL_NAME, (ChatMessage("user", prompt),), params):
        if isinstance(item, Delta):
            text.append(item.text)
        elif isinstance(item, Completion):
            pass
    return "".join(text)


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=50)
    p.add_argument("--max-tokens", type=int, default=32)
    args = p.parse_args()
    a, b = LlamaCppEngine(n_threads=1), LlamaCppEngine(n_threads=2)
    rng = random.Random(7)
    vocab = "the a of to and in is it that for on with as was at by an be this from or".split()
    pairs, started = [], time.monotonic()
    for prompt in prompts(args.jobs):
        pairs.append((await answer(a, prompt, args.max_tokens), await answer(b, prompt, args.max_tokens)))
    seconds = time.monotonic() - started
    await a.aclose()
    await b.aclose()
    result = {"jobs": args.jobs, "max_tokens": args.max_tokens, "generation_seconds": round(seconds, 1),
              "identical_text": sum(x == y for x, y in pairs) / len(pairs), "by_words": {}}
    for n in (2, 4, 8, 16, 32):
        fp = sum(not agree(x, y, n) for x, y in pairs) / len(pairs)
        luck = sum(agree(x, " ".join(rng.choice(vocab) for _ in x.split()), n) for x, _ in pairs) / len(pairs)
        result["by_words"][n] = {"honest_disagree": fp, "random_agrees": luck}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    asyncio.run(main())
