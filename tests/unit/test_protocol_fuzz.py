"""Every bus message decoder in protocol/ fed malformed bytes (hypothesis): garbage, mutated and truncated valid
messages, invalid UTF-8 inside strings, deep nesting. A decoder only ever raises protocol.DecodeError."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings, strategies as st

import protocol
from protocol import messages

#: Every message kind a replica or node decodes off the bus: each tagged Struct, and the outcome union.
KINDS = sorted((c for c in vars(messages).values() if isinstance(c, type) and issubclass(c, msgspec.Struct)
                and c.__struct_config__.tag is not None), key=lambda c: c.__name__) + [protocol.JobOutcome]

SAMPLES = [
    protocol.TokenChunk("job_1", 1, 2, "hi"),
    protocol.Cancel(job_id="job_1", attempt=1, reason="user"),
    protocol.Drain(node_id="node_1", reason="maintenance"),
    protocol.KeysInvalidated(key_ids=("key_1",), account_id=None, origin="cp_1"),
]


def _decode_only_raises_its_own_error(data: bytes) -> None:
    for kind in KINDS:
        try:
            protocol.decode(data, kind)
        except protocol.DecodeError:
            pass


def test_every_tagged_message_kind_is_fuzzed():
    names = {k.__name__ for k in KINDS}
    assert {"Advertisement", "Assignment", "AssignmentReply", "TokenChunk", "JobResult", "JobFailure", "Cancel",
            "Drain", "NodeVerify", "NodeVerifyReply", "KeysInvalidated"} <= names


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_bytes(data):
    _decode_only_raises_its_own_error(data)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(SAMPLES), st.data())
def test_mutated_and_truncated_valid_messages(message, data):
    raw = bytearray(protocol.encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[at] = data.draw(st.integers(0, 255))
        elif op == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
    _decode_only_raises_its_own_error(bytes(raw))


@pytest.mark.parametrize("data", [
    b'{"type":"token","job_id":"\xff\xfe","attempt":1,"seq":1,"text":"x"}',  # invalid UTF-8 in a string
    b'{"type":"token","job_id":"job_1","attempt":1,"seq":1,"text":"\xc3"}',  # truncated UTF-8 sequence
    b"[" * 100_000,  # deep nesting
    b'{"type":"result","x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # deep nesting in an ignored field
])
def test_known_hostile_inputs(data):
    for kind in KINDS:
        with pytest.raises(protocol.DecodeError):
            protocol.decode(data, kind)
