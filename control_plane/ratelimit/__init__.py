"""Per-key rate limits shared by all control-plane replicas, and the X-RateLimit-* response headers."""
