"""Bounded storage: job content retention, ledger folding, old webhook deliveries."""
