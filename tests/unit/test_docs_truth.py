"""The docs say what the code does: the native error table, /v1 failure statuses, the Idempotency-Key charset,
documented request defaults and limits, `make bench`, and the code-layout table, each pinned to the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import control_plane
from control_plane.errors import InfernetError
from control_plane.idempotency import service as idempotency
from control_plane.jobs.schemas import JobCreate
from control_plane.lib.input_guard import HeadersTooLarge
from control_plane.openai import service as openai_service

ROOT = Path(__file__).resolve().parents[2]
API = (ROOT / "docs" / "api.md").read_text()


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def test_the_native_error_table_lists_every_code_with_its_status():
    section = API.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    table = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\| `([a-z_]+)` \| (\d{3}) \|", section, re.M)}
    import control_plane.bus.connection  # noqa: F401  (defines its error classes)
    import control_plane.store.database  # noqa: F401
    raised = {c.code: c.status for c in [InfernetError, *_subclasses(InfernetError), HeadersTooLarge]}
    # Statuses the HTTP layer itself answers (control_plane/lib/responses.py).
    raised |= {"method_not_allowed": 405, "payload_too_large": 413}
    assert table == raised


def test_v1_failure_statuses_are_the_documented_ones():
    sentence = " ".join(API.split("A job that fails answers with OpenAI's error envelope", 1)[1].split(".", 1)[0].split())
    for code, status in openai_service._FAILURE_STATUS.items():
        assert re.search(rf"`{status}` for `{code}`|`{status}` for `[a-z_]+` and `{code}`", sentence), (code, status)
    assert "`502` when the node or its engine failed" in sentence
    assert 502 not in openai_service._FAILURE_STATUS.values()


@pytest.mark.parametrize("key,ok", [("a" * 255, True), ("a" * 256, False), ("abc-123_X.~", True), ("a b", False),
                                    ("caf\u00e9", False), ("", False), ("tab\there", False)])
def test_idempotency_key_charset_is_as_documented(key, ok):
    assert "1–255 printable ASCII characters, no spaces" in API
    assert bool(idempotency._VALID.match(key)) is ok


def test_documented_job_defaults_and_limits():
    import msgspec

    body = msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "x"}]}, JobCreate)
    assert (body.max_tokens, body.temperature, body.top_p, body.stream) == (512, 0.7, 1.0, False)
    assert "| `max_tokens` | integer | no | 512 | 1–131072 |" in API
    assert "| `temperature` | float | no | 0.7 | 0.0–2.0 |" in API
    assert "| `top_p` | float | no | 1.0 | (0, 1] |" in API
    for bad in ({"max_tokens": 0}, {"max_tokens": 131_073}, {"temperature": 2.01}, {"top_p": 0.0}):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert({"model": "m", "messages": [{"role": "user", "content": "x"}]} | bad, JobCreate)


def test_make_bench_runs_what_the_readme_says():
    recipe = (ROOT / "Makefile").read_text().split("\nbench:", 1)[1].split("\n\n", 1)[0]
    ran = set(re.findall(r"-m bench\.(\w+)", recipe))
    assert ran == {"jobs_bench", "streaming_bench", "openai_bench", "vs_litellm"}
    assert ("`make bench` (the jobs, streaming and OpenAI-compatible benchmarks, and Infernet vs. LiteLLM side by side;"
            in (ROOT / "README.md").read_text())
    benchmarks = (ROOT / "docs" / "benchmarks.md").read_text()
    for module in sorted(p.stem for p in (ROOT / "bench").glob("*_bench.py")):
        assert f"bench.{module}" in benchmarks or f"bench/{module}.py" in benchmarks, module


def test_the_code_layout_table_names_every_control_plane_package():
    row = next(line for line in (ROOT / "docs" / "architecture.md").read_text().splitlines()
               if line.startswith("| `control_plane/` |"))
    packages = sorted(p.name for p in Path(control_plane.__file__).parent.iterdir()
                      if p.is_dir() and (p / "__init__.py").exists())
    assert [p for p in packages if f"`{p}/`" not in row] == []
