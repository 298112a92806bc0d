"""The wire contract between the control plane and node agents: pure, no I/O."""

from protocol.codec import DecodeError, decode, encode
from protocol.messages import (
    Advertisement,
    Assignment,
    AssignmentReply,
    Cancel,
    ChatMessage,
    Drain,
    EmbedOutput,
    GenerationParams,
    GpuInfo,
    JobFailure,
    JobOutcome,
    JobResult,
    ModelInfo,
    Timings,
    TokenChunk,
    Usage,
)
from protocol.version import PROTOCOL_VERSION

__all__ = [
    "PROTOCOL_VERSION",
    "Advertisement",
    "Assignment",
    "AssignmentReply",
    "Cancel",
    "ChatMessage",
    "DecodeError",
    "Drain",
    "EmbedOutput",
    "GenerationParams",
    "GpuInfo",
    "JobFailure",
    "JobOutcome",
    "JobResult",
    "ModelInfo",
    "Timings",
    "TokenChunk",
    "Usage",
    "decode",
    "encode",
]
