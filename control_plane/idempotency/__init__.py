"""Idempotency-Key on submissions: a retried request returns the job the first one created."""
