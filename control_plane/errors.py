"""Domain errors of the control plane; each carries the API error code and HTTP status it maps to.

    InfernetError               root; code "internal_error", 500
    ├── BadRequest              400 bad_request
    │   ├── CapabilityUnavailable  400 capability_unavailable
    │   └── ContextLengthExceeded  400 context_length_exceeded
    ├── Unauthorized            401 unauthorized
    ├── PaymentRequired         402 insufficient_credits
    ├── Forbidden               403 forbidden
    ├── NotFound                404 not_found
    │   └── ModelNotFound       404 model_not_found
    ├── Conflict                409 conflict
    ├── PayloadTooLarge         413 payload_too_large
    ├── RateLimited             429 rate_limited
    ├── NoCapacity              503 no_capacity
    └── ServiceUnavailable      503 service_unavailable
"""

from __future__ import annotations


class InfernetError(Exception):
    """Root of control-plane errors: `code` and `status` are what the API answers."""

    code = "internal_error"
    status = 500
    #: Whether `message` may be shown to the caller; False for errors carrying a driver's text (logged instead).
    public = True

    def __init__(self, message: str, *, param: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}


class BadRequest(InfernetError):
    """A missing, malformed or out-of-range field; `param` names it."""

    code = "bad_request"
    status = 400


class CapabilityUnavailable(BadRequest):
    """The request needs something (tools, images, logprobs ...) no online node's copy of the model can do."""

    code = "capability_unavailable"


class ContextLengthExceeded(BadRequest):
    """The prompt cannot fit the context window of any online node's copy of the model."""

    code = "context_length_exceeded"


class Unauthorized(InfernetError):
    """No bearer key, or one that is not known."""

    code = "unauthorized"
    status = 401


class PaymentRequired(InfernetError):
    """The account cannot afford the job's worst-case cost; nothing was created."""

    code = "insufficient_credits"
    status = 402


class Forbidden(InfernetError):
    """A known key that may not be used (revoked, expired, account deactivated) or lacks a scope."""

    code = "forbidden"
    status = 403


class NotFound(InfernetError):
    """No such resource for this caller."""

    code = "not_found"
    status = 404


class ModelNotFound(NotFound):
    """No node on the network serves the model."""

    code = "model_not_found"


class Conflict(InfernetError):
    """The resource is in a state that does not allow the operation."""

    code = "conflict"
    status = 409


class PayloadTooLarge(InfernetError):
    """The job is bigger than the bus can carry to a node."""

    code = "payload_too_large"
    status = 413


class RateLimited(InfernetError):
    """Too many requests (or open streams) for this key or account right now; `headers` carry Retry-After."""

    code = "rate_limited"
    status = 429


class NoCapacity(InfernetError):
    """The model exists but no node can take the job."""

    code = "no_capacity"
    status = 503


class ServiceUnavailable(InfernetError):
    """A dependency (PostgreSQL, NATS) is not reachable right now."""

    code = "service_unavailable"
    status = 503
