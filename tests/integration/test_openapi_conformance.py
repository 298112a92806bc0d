"""The live app against its own OpenAPI document (schemathesis): no 5xx, and every response conforms.

Generic over the document: every operation it lists is exercised (no list of paths here), with a bounded number
of examples per operation, as an admin key on a stack with no rate limits."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from tests.harness import Stack

#: Known, accepted failures, each with its reason (see the file); any other failure fails the test. Regenerate with
#: INFERNET_SCHEMATHESIS_BASELINE_UPDATE=1 only when you mean to accept what it adds, and give each entry a reason.
BASELINE = Path(__file__).with_name("schemathesis-baseline.json")

#: Examples per operation and phases: enough to find missing constraints and 5xx, small enough for `make test`.
MAX_EXAMPLES = int(os.environ.get("INFERNET_SCHEMATHESIS_EXAMPLES", "10"))


@pytest.fixture
async def open_stack(nats_url, database_url, double):
    s = await Stack(nats_url, database_url, {"rate_limit_rpm": 0, "rate_limit_tpm": 0}).start()
    try:
        await s.add_node(double.url)
        await s.wait_nodes_serving("qwen2.5:7b")
        yield s
    finally:
        await s.stop()


async def test_the_app_conforms_to_its_openapi_document(open_stack, tmp_path):
    s = open_stack
    admin = await s.key("ops", admin=True)
    st = Path(sys.executable).parent / "st"
    proc = await asyncio.create_subprocess_exec(
        str(st), "run", f"{s.url}/docs/openapi.json", "--url", s.url,
        "--checks", "all", "--exclude-checks", "ignored_auth,object_level_authorization",
        "--max-examples", str(MAX_EXAMPLES), "--phases", "examples,coverage,fuzzing", "--seed", "1",
        "--generation-deterministic", "--generation-allow-x00", "false", "--workers", "1",
        "--request-timeout", "20", "--no-color", "--baseline", str(BASELINE),
        *(["--baseline-update"] if os.environ.get("INFERNET_SCHEMATHESIS_BASELINE_UPDATE") else []), "--header", f"Authorization: Bearer {admin}",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    (tmp_path / "schemathesis.txt").write_text(text)
    assert proc.returncode == 0, f"full output: {tmp_path / 'schemathesis.txt'}\n" + text[-6000:]
