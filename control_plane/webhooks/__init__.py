"""Webhooks: a signed POST to a job's `webhook_url` when it ends, retried from PostgreSQL until delivered."""
