"""Measures the tokenizer usage bound on the real SmolLM2-135M (the node's built-in llama.cpp engine): how far
an honest engine's counts sit from the control plane's own count (the slack it needs), how tight the bound is
next to the byte bound, and the CPU a job's counting costs. Usage:

    .venv/bin/python -m bench.usage_bound --jobs 60 --max-tokens 64

Jobs cycle through temperature 0, 0.8, 1.5 and 2.0, every fifth with a stop string, every seventh offering a tool
(tool_choice "required": the answer is a call). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from control_plane.trust import usage
from control_plane.trust.tokenizers import BUNDLED_MODEL_NAME, Vocabulary, bundled_model_path, tool_call_texts
from node_agent.engines.base import Completion, Delta
from node_agent.engines.llamacpp import LlamaCppEngine
from protocol import ChatMessage, GenerationParams

SUBJECTS = ["the sea", "a cat", "bread", "the moon", "rain", "a city", "music", "trees", "winter", "a train",
            "coffee", "mountains", "a library", "the sun", "friendship", "a garden", "snow", "the river",
            "a bicycle", "stars", "the desert", "a clock", "honey", "the wind", "a lighthouse"]
FORMS = ["Write a short story about {}.", "What is {}? Explain in detail.", "Give five facts about {}.",
         "Écris un poème sur {} (en français).", "Describe {} to a child, with examples and numbers."]
TOOL = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                        "required": ["city"]}}}


def jobs(n: int) -> list[tuple[str, GenerationParams, dict]]:
    out = []
    for i in range(n):
        prompt = FORMS[i % len(FORMS)].format(SUBJECTS[(i // len(FORMS)) % len(SUBJECTS)])
        temperature = (0.0, 0.8, 1.5, 2.0)[i % 4]
        stop = (".",) if i % 5 == 4 else ()
        tools = (TOOL,) if i % 7 == 6 else None
        params = GenerationParams(max_tokens=0, temperature=temperature, seed=i, stop=stop, tools=tools,
                                  tool_choice="required" if tools else None)
        request = {"messages": [{"role": "user", "content": prompt}],
                   "params": {"stop": list(stop), **({"tools": list(tools)} if tools else {})}}
        out.append((prompt, params, request))
    return out


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--jobs", type=int, default=60)
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args()
    engine = LlamaCppEngine()
    vocab = Vocabulary(bundled_model_path())
    rows, cpu = [], []
    for prompt, params, request in jobs(args.jobs):
        params = GenerationParams(**{**{f: getattr(params, f) for f in params.__struct_fields__},
                                     "max_tokens": args.max_tokens})
        text, done = [], None
        async for item in engine.chat(BUNDLED_MODEL_NAME, (ChatMessage("user", prompt),), params):
            if isinstance(item, Delta):
                text.append(item.text)
            elif isinstance(item, Completion):
                done = item
        content = "".join(text)
        started = time.thread_time()
        template = vocab.count_prompt(usage.template_messages(request["messages"]))
        specs = usage.tool_specs_text(request)
        p_bound = usage.prompt_bound(template, request, vocab.count(specs) if specs else 0)
        calls = [vocab.count(t) for t in tool_call_texts(done.tool_calls)]
        counted = vocab.count(content)
        stop_bytes = max((len(s.encode()) for s in params.stop), default=0)
        c_bound = usage.completion_bound(counted, calls) + stop_bytes  # before max_tokens: what a cheat meets
        cpu.append(time.thread_time() - started)
        byte_c = (len(content.encode()) + sum(len(json.dumps(
            {"id": "call_" + "0" * 24, "type": "function", "function": {"name": c.name, "arguments": c.arguments}})
            .encode()) for c in done.tool_calls) + 1)
        byte_p = len(json.dumps(request).encode()) + 64 + 8 * len(request["messages"])
        rows.append({"temperature": params.temperature, "stop": bool(params.stop), "tools": bool(params.tools),
                     "engine_prompt": done.prompt_tokens, "template": template, "prompt_bound": p_bound,
                     "byte_prompt_bound": byte_p, "engine_completion": done.completion_tokens, "counted": counted
                     + sum(calls), "completion_bound": c_bound, "byte_completion_bound": byte_c})
    await engine.aclose()
    comp = [r for r in rows if r["engine_completion"] > 0]
    out = {
        "jobs": len(rows), "max_tokens": args.max_tokens,
        "prompt_engine_minus_template": sorted({r["engine_prompt"] - r["template"] for r in rows}),
        "completion_engine_minus_counted_max": max(r["engine_completion"] - r["counted"] for r in comp),
        "completion_engine_minus_counted_by_temperature": {
            t: sorted(r["engine_completion"] - r["counted"] for r in comp if r["temperature"] == t)
            for t in (0.0, 0.8, 1.5, 2.0)},
        "completion_engine_over_counted_max": max(r["engine_completion"] / max(r["counted"], 1) for r in comp),
        "completion_slack_used_max": max((r["engine_completion"] - r["counted"]) / (r["completion_bound"] - r["counted"])
                                         for r in comp),
        "prompt_over_bound": sum(r["engine_prompt"] > r["prompt_bound"] for r in rows),
        "completion_over_bound": sum(r["engine_completion"] > r["completion_bound"] for r in rows),
        "byte_completion_bound_over_engine_median": statistics.median(r["byte_completion_bound"] / r["engine_completion"]
                                                                      for r in comp),
        "token_completion_bound_over_engine_median": statistics.median(r["completion_bound"] / r["engine_completion"]
                                                                       for r in comp),
        "byte_completion_bound_over_engine_min": min(r["byte_completion_bound"] / r["engine_completion"] for r in comp),
        "token_completion_bound_over_engine_max": max(r["completion_bound"] / r["engine_completion"] for r in comp),
        "byte_prompt_bound_over_engine_median": statistics.median(r["byte_prompt_bound"] / r["engine_prompt"]
                                                                  for r in rows),
        "token_prompt_bound_over_engine_median": statistics.median(r["prompt_bound"] / r["engine_prompt"] for r in rows),
        "counting_cpu_ms_per_job_median": round(statistics.median(cpu) * 1000, 3),
        "counting_cpu_ms_per_job_max": round(max(cpu) * 1000, 3),
        "completion_tokens_per_job_median": statistics.median(r["engine_completion"] for r in rows),
    }
    # The jobs whose engine count is furthest above the control plane's count (what the slack must cover).
    out["largest_differences"] = sorted(
        ({k: r[k] for k in ("temperature", "stop", "tools", "engine_completion", "counted", "completion_bound")}
         for r in comp), key=lambda r: r["counted"] - r["engine_completion"])[:6]
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main())
