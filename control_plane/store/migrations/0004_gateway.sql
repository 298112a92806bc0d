-- Gateway behaviours (issue 6): shared rate-limit windows, idempotency keys, webhook secrets and deliveries.

-- Per key, per fixed window, per dimension (requests | tokens): units leased out to replicas so far.
CREATE TABLE rate_limit_windows (
    key_id        text NOT NULL,
    window_start  bigint NOT NULL,            -- unix seconds, a multiple of the window length
    dim           text NOT NULL CHECK (dim IN ('requests', 'tokens')),
    used          bigint NOT NULL DEFAULT 0,  -- never above the limit: replicas lease, then spend locally
    granted       bigint NOT NULL DEFAULT 0,  -- what the last lease got (read back by the leasing replica)
    PRIMARY KEY (key_id, window_start, dim)
);

-- Idempotency-Key per account: the first request claims the key, then binds the job it created.
CREATE TABLE idempotency_keys (
    account_id   text NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    key          text NOT NULL,
    fingerprint  bytea NOT NULL,               -- sha256 of the canonical request (endpoint + body)
    job_id       text,                         -- NULL while the claiming request is still submitting
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- The secret each account's webhooks are signed with (HMAC-SHA256), created on first use.
CREATE TABLE webhook_secrets (
    account_id  text PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One delivery per job that asked for a webhook; written in the same transaction that ends the job.
CREATE TABLE webhook_deliveries (
    job_id           text PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    id               text NOT NULL UNIQUE,     -- sent as Infernet-Webhook-Id (receivers de-duplicate on it)
    account_id       text NOT NULL,
    url              text NOT NULL,
    event            text NOT NULL,            -- job.completed | job.failed | job.cancelled
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts_made    integer NOT NULL DEFAULT 0,
    attempts         jsonb NOT NULL DEFAULT '[]',  -- [{attempt, at, status_code, error, duration_ms}]
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';

-- Whatever ends a job (recorder, sweeper, dispatcher, cancel), its webhook delivery is queued atomically with it.
CREATE FUNCTION infernet_queue_webhook() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_deliveries (job_id, id, account_id, url, event)
    VALUES (NEW.id, 'whd_' || substr(md5(NEW.id || clock_timestamp()::text), 1, 16), NEW.account_id,
            NEW.request ->> 'webhook_url', 'job.' || NEW.status)
    ON CONFLICT (job_id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_queue_webhook
AFTER UPDATE OF status ON jobs
FOR EACH ROW
WHEN (NEW.status IN ('completed', 'failed', 'cancelled')
      AND OLD.status NOT IN ('completed', 'failed', 'cancelled')
      AND NEW.request ? 'webhook_url')
EXECUTE FUNCTION infernet_queue_webhook();
