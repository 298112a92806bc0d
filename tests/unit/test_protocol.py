"""Protocol round-trips (hypothesis), strict decoding of garbage, and subject building."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

import protocol
from protocol import subjects
from protocol.identity import node_id_from_token, node_token

ids = st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True)
text = st.text(max_size=200)
floats = st.floats(allow_nan=False, allow_infinity=False, width=64)
opt_float = st.none() | st.floats(min_value=0, max_value=1e6, allow_nan=False)

models = st.builds(
    protocol.ModelInfo, name=ids, loaded=st.booleans(), size_bytes=st.none() | st.integers(0, 2**40),
    context_length=st.none() | st.integers(0, 10**6), tokens_per_second=opt_float, embeddings=st.booleans(),
)
gpus = st.builds(protocol.GpuInfo, name=text, vram_total_mb=st.none() | st.integers(0, 10**6))
advertisements = st.builds(
    protocol.Advertisement, node_id=ids, agent_version=text, engine=text,
    state=st.sampled_from(["online", "draining"]), slots=st.integers(0, 1000), active_jobs=st.integers(0, 1000),
    models=st.lists(models, max_size=5).map(tuple), gpus=st.lists(gpus, max_size=3).map(tuple),
    labels=st.dictionaries(ids, text, max_size=3), boot_id=ids, interval_s=st.floats(0.1, 60), sent_at=floats,
)
messages = st.builds(protocol.ChatMessage, role=st.sampled_from(["system", "user", "assistant"]), content=text)
params = st.builds(
    protocol.GenerationParams, max_tokens=st.integers(1, 100_000), temperature=st.floats(0, 2),
    top_p=st.floats(0.01, 1), stop=st.lists(text, max_size=3).map(tuple), seed=st.none() | st.integers(0, 2**31),
    format=st.none() | st.just("json") | st.dictionaries(ids, st.integers(), max_size=2),
)
assignments = st.builds(
    protocol.Assignment, job_id=ids, attempt=st.integers(1, 3), lease=ids, model=ids,
    kind=st.sampled_from(["chat", "embed"]), messages=st.lists(messages, max_size=4).map(tuple),
    inputs=st.lists(text, max_size=3).map(tuple), params=params, deadline=floats, stream=st.booleans(),
)
usage = st.builds(protocol.Usage, prompt_tokens=st.integers(0, 10**6), completion_tokens=st.integers(0, 10**6))
results = st.builds(
    protocol.JobResult, job_id=ids, attempt=st.integers(1, 3), lease=ids, node_id=ids, content=text,
    finish_reason=st.sampled_from(["stop", "length", "cancelled"]), usage=usage,
    timings=st.builds(protocol.Timings, ttft_ms=opt_float, duration_ms=opt_float, tokens_per_second=opt_float),
    chunks=st.integers(0, 10**5),
)
failures = st.builds(
    protocol.JobFailure, job_id=ids, attempt=st.integers(1, 3), lease=ids, node_id=ids, error=ids, message=text,
    partial_content=text, usage=usage, chunks=st.integers(0, 100), retryable=st.booleans(),
)
chunks = st.builds(protocol.TokenChunk, job_id=ids, attempt=st.integers(1, 3), seq=st.integers(1, 10**6), text=text)
replies = st.builds(
    protocol.AssignmentReply, job_id=ids, attempt=st.integers(0, 3), accepted=st.booleans(), node_id=ids,
    reason=st.none() | st.sampled_from(["at_capacity", "model_unavailable", "draining"]),
)

ROUND_TRIPS = [
    (advertisements, protocol.Advertisement),
    (assignments, protocol.Assignment),
    (replies, protocol.AssignmentReply),
    (chunks, protocol.TokenChunk),
    (results, protocol.JobResult),
    (failures, protocol.JobFailure),
    (st.builds(protocol.Cancel, job_id=ids, attempt=st.integers(1, 3), reason=text), protocol.Cancel),
    (st.builds(protocol.Drain, node_id=ids, reason=text), protocol.Drain),
    (st.builds(protocol.NodeVerify, node_id=ids, sent_at=floats), protocol.NodeVerify),
    (st.builds(protocol.NodeVerifyReply, node_id=ids, accepted=st.booleans(), reason=st.none() | text,
               name=st.none() | text, server_time=floats), protocol.NodeVerifyReply),
]


@pytest.mark.parametrize("strategy,kind", ROUND_TRIPS, ids=[k.__name__ for _, k in ROUND_TRIPS])
def test_round_trip(strategy, kind):
    @settings(max_examples=60, deadline=None)
    @given(strategy)
    def check(message):
        assert protocol.decode(protocol.encode(message), kind) == message

    check()


@settings(max_examples=80, deadline=None)
@given(st.one_of(results, failures))
def test_outcome_union_decodes_to_the_right_type(outcome):
    decoded = protocol.decode(protocol.encode(outcome), protocol.JobOutcome)
    assert type(decoded) is type(outcome)
    assert decoded == outcome


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_bytes_raise_decode_error_only(data):
    for kind in (protocol.Advertisement, protocol.Assignment, protocol.JobOutcome, protocol.TokenChunk):
        try:
            protocol.decode(data, kind)
        except protocol.DecodeError:
            pass


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=10), st.one_of(st.integers(), st.text(max_size=10), st.none()), max_size=6))
def test_wrong_shapes_raise_decode_error(obj):
    data = msgspec.json.encode(obj)
    with pytest.raises(protocol.DecodeError):
        protocol.decode(data, protocol.Assignment)


def test_wrong_tag_is_rejected():
    chunk = protocol.encode(protocol.TokenChunk("job_1", 1, 1, "hi"))
    with pytest.raises(protocol.DecodeError):
        protocol.decode(chunk, protocol.JobOutcome)


def test_oversized_message_is_rejected_before_parsing():
    with pytest.raises(protocol.DecodeError, match="exceeds"):
        protocol.decode(b" " * (protocol.codec.MAX_MESSAGE_BYTES + 1), protocol.TokenChunk)


def test_unknown_fields_are_ignored_for_forward_compatibility():
    data = b'{"type":"token","job_id":"job_1","attempt":1,"seq":2,"text":"x","future_field":true}'
    assert protocol.decode(data, protocol.TokenChunk) == protocol.TokenChunk("job_1", 1, 2, "x")


def test_subjects_are_namespaced_and_validated():
    assert subjects.node_assign("node_ab12") == "infernet.v1.node.node_ab12.assign"
    assert subjects.node_job_tokens("node_ab12", "job_1") == "infernet.v1.node.node_ab12.job.job_1.tokens"
    assert subjects.node_job_result("node_ab12", "job_1") == "infernet.v1.node.node_ab12.job.job_1.result"
    assert subjects.publisher_and_job(subjects.node_job_result("node_ab12", "job_1")) == ("node_ab12", "job_1")
    assert subjects.publisher_and_job(subjects.node_job_tokens("node_ab12", "job_1")) == ("node_ab12", "job_1")
    assert subjects.node_of(subjects.node_advertise("node_ab12")) == "node_ab12"
    assert subjects.publisher_and_job("infernet.v1.control.events") is None
    for bad in ("a.b", "*", ">", "has space", ""):
        with pytest.raises(subjects.InvalidSubjectToken):
            subjects.node_assign(bad)
    every = [subjects.advertisements(), subjects.node_cancel("n"), subjects.node_drain("n"),
             subjects.all_job_results(), subjects.all_job_tokens(), subjects.control_events(), subjects.node_verify("n")]
    assert all(s.startswith("infernet.v1.") for s in every)


@given(st.from_regex(r"[0-9a-f]{4,24}", fullmatch=True), st.from_regex(r"[A-Za-z0-9]{8,40}", fullmatch=True))
def test_node_token_names_its_node(hexid, secret):
    assert node_id_from_token(node_token(f"node_{hexid}", secret)) == f"node_{hexid}"


@pytest.mark.parametrize("bad", ["", "inf_abc", "infnode_xyz_secret", "infnode__secret", "infnode_ab12_", "infnode_ab_cd_ef"])
def test_malformed_node_tokens(bad):
    assert node_id_from_token(bad) is None
