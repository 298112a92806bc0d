-- The web console: server-side sessions (cookie -> key), one-time login links, and the replicas it has seen.

-- A signed-in browser. The cookie holds a random token; only its SHA-256 is stored. The session refers to
-- the API key it was opened with (never the key itself): every request re-checks that key, so revoking it or
-- deactivating its account ends the session at once.
CREATE TABLE console_sessions (
    token_hash   bytea PRIMARY KEY,
    key_id       text NOT NULL REFERENCES api_keys (id),
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX console_sessions_expires ON console_sessions (expires_at);

-- A one-time sign-in link (e.g. printed by `make up` for the dev admin): redeemed once, then dead.
CREATE TABLE console_login_links (
    token_hash   bytea PRIMARY KEY,
    key_id       text NOT NULL REFERENCES api_keys (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);

-- Each control-plane replica stamps itself here every few seconds, so the admin console can show every
-- replica's health, not only the one that serves the page.
CREATE TABLE console_replicas (
    replica_id    text PRIMARY KEY,
    started_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL,
    nats_ok       boolean NOT NULL,
    postgres_ok   boolean NOT NULL DEFAULT true,
    nodes_online  integer NOT NULL DEFAULT 0,
    queued        integer NOT NULL DEFAULT 0
);
