-- Accounts, API keys, nodes and jobs: the walking skeleton's schema.

CREATE TABLE accounts (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    account_id  text NOT NULL REFERENCES accounts (id),
    name        text NOT NULL DEFAULT '',
    prefix      text NOT NULL,
    key_hash    bytea NOT NULL UNIQUE,
    is_admin    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    expires_at  timestamptz
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE nodes (
    id                   text PRIMARY KEY,
    name                 text NOT NULL,
    operator_account_id  text REFERENCES accounts (id),
    token_hash           bytea NOT NULL UNIQUE,
    created_at           timestamptz NOT NULL DEFAULT now(),
    first_seen_at        timestamptz,
    last_seen_at         timestamptz,
    last_advertisement   jsonb
);

CREATE TABLE jobs (
    id                text PRIMARY KEY,
    account_id        text NOT NULL REFERENCES accounts (id),
    api_key_id        text REFERENCES api_keys (id),
    kind              text NOT NULL DEFAULT 'chat',
    model             text NOT NULL,
    request           jsonb NOT NULL,
    pinned_node_id    text,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'cancelled')),
    attempt           integer NOT NULL DEFAULT 0,
    lease             text,
    node_id           text,
    claimed_by        text,
    claim_expires_at  timestamptz,
    deadline          timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    first_token_at    timestamptz,
    completed_at      timestamptz,
    result            jsonb,
    prompt_tokens     integer,
    completion_tokens integer,
    error             text,
    error_message     text,
    request_id        text
);
CREATE INDEX jobs_account_created ON jobs (account_id, created_at DESC);
CREATE INDEX jobs_pending ON jobs (created_at) WHERE status = 'pending';
CREATE INDEX jobs_processing_node ON jobs (node_id) WHERE status = 'processing';
