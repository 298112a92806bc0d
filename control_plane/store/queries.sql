-- Every SQL statement the control plane runs, named. `-- name: x` starts one; the next line
-- describes it. Parameters use psycopg's %(name)s style.

-- name: ping
-- Cheap liveness check for /readyz.
SELECT 1 AS ok;

-- name: insert_account
-- Create an account; returns it.
INSERT INTO accounts (id, name) VALUES (%(id)s, %(name)s)
RETURNING id, name, is_active, created_at;

-- name: get_account_by_name
-- Look an account up by its unique name.
SELECT id, name, is_active, created_at FROM accounts WHERE name = %(name)s;

-- name: insert_api_key
-- Store a new API key (hash only) with its routing and rate-limit settings.
INSERT INTO api_keys (id, account_id, name, prefix, key_hash, is_admin, expires_at, model_pool, optimize_mode,
                      rate_limit_rpm, rate_limit_tpm, budget_key_id)
VALUES (%(id)s, %(account_id)s, %(name)s, %(prefix)s, %(key_hash)s, %(is_admin)s, %(expires_at)s, %(model_pool)s,
        %(optimize_mode)s, %(rate_limit_rpm)s, %(rate_limit_tpm)s, %(budget_key_id)s)
RETURNING id, account_id, name, prefix, is_admin, created_at, expires_at, revoked_at, model_pool, optimize_mode,
          rate_limit_rpm, rate_limit_tpm;

-- name: get_principal_by_key_hash
-- Resolve a bearer key's hash to its key and account state, and the limits of the key whose budget it shares.
SELECT k.id AS key_id, k.account_id, k.key_hash, k.prefix, k.is_admin, k.revoked_at, k.expires_at,
       k.model_pool, k.optimize_mode, k.rate_limit_rpm, k.rate_limit_tpm,
       k.budget_key_id, b.rate_limit_rpm AS budget_rpm, b.rate_limit_tpm AS budget_tpm,
       a.is_active AS account_active, a.name AS account_name
FROM api_keys k JOIN accounts a ON a.id = k.account_id
LEFT JOIN api_keys b ON b.id = k.budget_key_id
WHERE k.key_hash = %(key_hash)s;

-- name: insert_node
-- Register a node (token hash only) for an optional operator account, with the most slots it may claim and
-- the models an admin trusts it with (glob patterns; NULL: none, each model it claims is measured first).
INSERT INTO nodes (id, name, operator_account_id, token_hash, max_slots, models)
VALUES (%(id)s, %(name)s, %(operator_account_id)s, %(token_hash)s, %(max_slots)s, %(models)s)
RETURNING id, name, created_at;

-- name: get_node_token_hash
-- The stored token hash of a node, to verify its token.
SELECT id, name, token_hash, revoked_at, max_slots FROM nodes WHERE id = %(id)s;

-- name: get_node_registrations
-- What several nodes were registered with (name, slot limit, models, revocation), to bound what they
-- advertise (first advertisements after a start arrive in a burst); the ids come as one jsonb array.
SELECT id, name, max_slots, models, revoked_at FROM nodes
WHERE id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb));

-- name: revoke_node
-- Revoke a node (by id, or also by name): the bus refuses it from now on.
UPDATE nodes SET revoked_at = COALESCE(revoked_at, now())
WHERE id = %(node)s OR (%(by_name)s AND name = %(node)s)
RETURNING id, name, revoked_at;

-- name: set_node_max_slots
-- Change how many slots a node may claim.
UPDATE nodes SET max_slots = %(max_slots)s WHERE id = %(id)s RETURNING id;

-- name: set_node_models
-- Change the models an admin trusts a node with (glob patterns; NULL: none, every claim is measured), by id or name.
UPDATE nodes SET models = %(models)s WHERE id = %(node)s OR (%(by_name)s AND name = %(node)s)
RETURNING id, name, models;

-- name: touch_nodes_seen
-- Batch-record that nodes were seen (their advertisement, already stored, did not change); one jsonb array
-- [{"id", "t": unix seconds}] rather than SQL arrays, whose per-element escaping costs the event loop more.
UPDATE nodes AS n
SET last_seen_at = v.seen_at, first_seen_at = COALESCE(n.first_seen_at, v.seen_at)
FROM (SELECT e ->> 'id' AS id, to_timestamp((e ->> 't')::float8) AS seen_at
      FROM jsonb_array_elements(%(rows)s::jsonb) AS e) AS v
WHERE n.id = v.id AND (n.last_seen_at IS NULL OR n.last_seen_at < v.seen_at);

-- name: touch_nodes_changed
-- Batch-record nodes whose advertisement changed: [{"id", "t": unix seconds, "ad": advertisement}] as jsonb.
UPDATE nodes AS n
SET last_seen_at = v.seen_at, first_seen_at = COALESCE(n.first_seen_at, v.seen_at), last_advertisement = v.ad
FROM (SELECT e ->> 'id' AS id, to_timestamp((e ->> 't')::float8) AS seen_at, e -> 'ad' AS ad
      FROM jsonb_array_elements(%(rows)s::jsonb) AS e) AS v
WHERE n.id = v.id;

-- name: node_page
-- Registered nodes after a cursor, in id order (the nodes list merges them with what this replica heard).
SELECT id, name, last_seen_at, operator_account_id FROM nodes
WHERE (%(after)s::text IS NULL OR id > %(after)s) ORDER BY id LIMIT %(limit)s;

-- name: nodes_by_ids
-- Names and last seen of the given nodes (one page of the nodes list).
SELECT id, name, last_seen_at, operator_account_id FROM nodes
WHERE id IN (SELECT jsonb_array_elements_text(%(ids)s::jsonb));

-- name: list_nodes
-- Every registered node with what it last advertised.
SELECT id, name, created_at, first_seen_at, last_seen_at, last_advertisement FROM nodes ORDER BY id;

-- name: insert_job
-- Commit a new job (pending, claimed by the submitting replica while it places it).
INSERT INTO jobs (id, account_id, api_key_id, kind, model, request, pinned_node_id, status,
                  claimed_by, claim_expires_at, deadline, request_id)
VALUES (%(id)s, %(account_id)s, %(api_key_id)s, %(kind)s, %(model)s, %(request)s, %(pinned_node_id)s,
        'pending', %(claimed_by)s, now() + make_interval(secs => %(claim_secs)s),
        now() + make_interval(secs => %(wallclock_secs)s), %(request_id)s)
RETURNING id, status, model, created_at, deadline;

-- name: get_job
-- One job of one account (the API's view), with its webhook delivery when it asked for one.
SELECT j.*, CASE WHEN j.request ? 'webhook_url' THEN (
           SELECT jsonb_build_object('id', d.id, 'status', d.status, 'attempts', d.attempts,
                                     'next_attempt_at', CASE WHEN d.status = 'pending' THEN d.next_attempt_at END)
           FROM webhook_deliveries d WHERE d.job_id = j.id) END AS webhook
FROM jobs j WHERE j.id = %(id)s AND j.account_id = %(account_id)s;

-- name: get_job_any
-- One job regardless of account (internal use: placement, recording).
SELECT * FROM jobs WHERE id = %(id)s;

-- name: list_jobs
-- An account's recent jobs, newest first, optionally filtered by status and creation time (webhooks as get_job).
SELECT j.*, CASE WHEN j.request ? 'webhook_url' THEN (
           SELECT jsonb_build_object('id', d.id, 'status', d.status, 'attempts', d.attempts,
                                     'next_attempt_at', CASE WHEN d.status = 'pending' THEN d.next_attempt_at END)
           FROM webhook_deliveries d WHERE d.job_id = j.id) END AS webhook
FROM jobs j
WHERE account_id = %(account_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: start_attempt
-- Record an offer of the job to a node before it is sent: processing there under a new lease (reverted if the
-- node does not take it); every offer is counted, accepted or not.
UPDATE jobs
SET status = 'processing', attempt = %(attempt)s, lease = %(lease)s, node_id = %(node_id)s, offers = offers + 1,
    started_at = COALESCE(started_at, now()), assigned_at = now(), claimed_by = NULL, claim_expires_at = NULL
WHERE id = %(id)s AND status = 'pending'
RETURNING id;

-- name: complete_job
-- Record a result; only for the current attempt, lease and node, and only once (typed jobs: complete_typed_job).
UPDATE jobs
SET status = 'completed', completed_at = now(), result = %(result)s,
    prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s,
    first_token_at = COALESCE(first_token_at, %(first_token_at)s), completion_bounds = %(completion_bounds)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease = %(lease)s AND node_id = %(node_id)s
  AND status = 'processing' AND NOT (request ? 'response_schema')
RETURNING *;

-- name: fail_attempt
-- Record a failure of the current attempt; only for its lease and node, and only once.
UPDATE jobs
SET status = 'failed', completed_at = now(), error = %(error)s, error_message = %(error_message)s,
    result = %(result)s, prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease = %(lease)s AND node_id = %(node_id)s
  AND status = 'processing'
RETURNING *;

-- name: requeue_attempt
-- Put a processing job back to pending for another attempt (node lost or retryable failure) unless a token
-- already reached a client (then it must fail instead: a client never sees two attempts).
UPDATE jobs
SET status = 'pending', node_id = NULL, lease = NULL,
    claimed_by = %(claimed_by)s, claim_expires_at = now() + make_interval(secs => %(claim_secs)s)
WHERE id = %(id)s AND attempt = %(attempt)s AND status = 'processing' AND first_token_at IS NULL
  AND (%(lease)s::text IS NULL OR lease = %(lease)s)
RETURNING id, model, attempt, pinned_node_id, kind, request, deadline, created_at;

-- name: fail_pending
-- Fail a job that is still pending (no capacity before its deadline, or no node accepted it).
UPDATE jobs
SET status = 'failed', completed_at = now(), error = %(error)s, error_message = %(error_message)s,
    claimed_by = NULL, claim_expires_at = NULL
WHERE id = %(id)s AND status = 'pending'
RETURNING id;

-- name: renew_claims
-- Keep this replica's claim on the pending jobs it is holding in its queue.
UPDATE jobs SET claim_expires_at = now() + make_interval(secs => %(claim_secs)s)
WHERE id = ANY(%(ids)s) AND status = 'pending' AND claimed_by = %(claimed_by)s;

-- name: release_claim
-- Give up this replica's claim on a pending job so any replica may place it.
UPDATE jobs SET claimed_by = NULL, claim_expires_at = NULL
WHERE id = %(id)s AND status = 'pending' AND claimed_by = %(claimed_by)s;

-- name: claim_orphaned_pending
-- Take over pending jobs nobody holds (their replica died or released them), oldest first.
UPDATE jobs SET claimed_by = %(claimed_by)s, claim_expires_at = now() + make_interval(secs => %(claim_secs)s)
WHERE id IN (
    SELECT id FROM jobs
    WHERE status = 'pending' AND (claim_expires_at IS NULL OR claim_expires_at < now())
    ORDER BY created_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id, model, attempt, pinned_node_id, kind, request, deadline, created_at;

-- name: processing_on_nodes
-- Jobs currently processing on any of the given nodes (to re-place them when the nodes are lost).
SELECT id, attempt, node_id, first_token_at, started_at FROM jobs
WHERE status = 'processing' AND node_id = ANY(%(node_ids)s);

-- name: stale_processing
-- Jobs processing past their deadline plus a grace period (their outcome never came).
SELECT id, attempt, node_id, lease FROM jobs
WHERE status = 'processing' AND deadline < now() - make_interval(secs => %(grace_secs)s)
LIMIT 500;

-- name: expire_processing
-- Fail one processing job whose deadline passed long ago without any outcome.
UPDATE jobs
SET status = 'failed', completed_at = now(), error = 'timeout',
    error_message = 'the job passed its wall-clock deadline without a result from node ' || COALESCE(node_id, '?')
WHERE id = %(id)s AND attempt = %(attempt)s AND status = 'processing'
RETURNING id;

-- name: revert_attempt
-- Undo an assignment the node did not accept: back to pending, held by this replica; not once that offer's
-- first token reached a client (the node runs it although its reply never came: a client never sees two runs).
UPDATE jobs
SET status = 'pending', node_id = NULL, lease = NULL,
    claimed_by = %(claimed_by)s, claim_expires_at = now() + make_interval(secs => %(claim_secs)s)
WHERE id = %(id)s AND lease = %(lease)s AND status = 'processing' AND first_token_at IS NULL
RETURNING id;

-- name: fail_processing_streamed
-- Fail a processing attempt whose first token already reached a client (it cannot be placed again); nothing
-- when the row moved on meanwhile (re-placed by another replica, or sent back by a refused offer).
UPDATE jobs
SET status = 'failed', completed_at = now(), error = %(error)s, error_message = %(error_message)s
WHERE id = %(id)s AND attempt = %(attempt)s AND status = 'processing' AND first_token_at IS NOT NULL
RETURNING id;

-- name: fail_processing
-- Fail a processing job's current attempt regardless of lease (node lost after tokens reached a client).
UPDATE jobs
SET status = 'failed', completed_at = now(), error = %(error)s, error_message = %(error_message)s
WHERE id = %(id)s AND attempt = %(attempt)s AND status = 'processing'
RETURNING id;

-- ==== cancel, drain, network view (issue 4) ====

-- name: cancel_job
-- Cancel an account's job if it has not ended; returns where it was running (if anywhere).
UPDATE jobs AS j
SET status = 'cancelled', completed_at = now(), error = 'cancelled',
    error_message = 'cancelled by the caller', claimed_by = NULL, claim_expires_at = NULL
FROM (SELECT id, status AS previous_status, node_id AS previous_node_id, attempt AS previous_attempt
      FROM jobs WHERE id = %(id)s AND account_id = %(account_id)s FOR UPDATE) AS before
WHERE j.id = before.id AND j.status IN ('pending', 'processing')
RETURNING j.*, before.previous_status, before.previous_node_id, before.previous_attempt;

-- name: keep_cancelled_partial
-- Keep what a cancelled attempt generated before it stopped (only for the attempt that was running).
UPDATE jobs
SET result = %(result)s, prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease = %(lease)s AND status = 'cancelled' AND result IS NULL
RETURNING id;

-- name: node_names
-- Names and first/last seen of every registered node.
SELECT id, name, first_seen_at, last_seen_at FROM nodes;

-- ==== streaming and the OpenAI-compatible API (issue 3) ====

-- name: mark_first_token
-- Record when the first token of the running attempt reached a client (one write per job); no row when that
-- run (attempt, offer lease, node) is not the job's: re-placed meanwhile, an offer the node did not answer in
-- time, or another node, so its tokens must not be shown. It sits on the time-to-first-token path,
-- so it commits without waiting for the WAL flush (set_config: synchronous_commit off for this transaction
-- only): visible to every replica at once; only a crash of PostgreSQL itself right after could undo it.
UPDATE jobs SET first_token_at = COALESCE(first_token_at, now())
WHERE id = %(id)s AND attempt = %(attempt)s AND status <> 'pending' AND node_id = %(node_id)s
  AND lease = %(lease)s
  AND set_config('synchronous_commit', 'off', true) IS NOT NULL
RETURNING first_token_at;

-- name: fail_overtaken_stream
-- A stream showed the first tokens of an attempt (this replica placed it there) and the job was sent back for
-- another attempt before mark_first_token landed (its node declared lost in that instant): fail it, node_lost, as
-- the sweeper would have once the write landed, so no client sees a second attempt. Returns where a newer attempt
-- runs (to stop it); nothing when the job ended meanwhile.
UPDATE jobs AS j
SET status = 'failed', completed_at = now(), error = 'node_lost', error_message = %(error_message)s,
    claimed_by = NULL, claim_expires_at = NULL
FROM (SELECT id, status AS previous_status, node_id AS previous_node_id, attempt AS previous_attempt
      FROM jobs WHERE id = %(id)s FOR UPDATE) AS before
WHERE j.id = before.id AND j.status IN ('pending', 'processing') AND j.attempt >= %(attempt)s
RETURNING before.previous_status, before.previous_node_id, before.previous_attempt;

-- name: ended_jobs
-- Which of the given jobs have ended (jobs finalised without an outcome message: node lost, deadline, cancel).
SELECT id FROM jobs WHERE id = ANY(%(ids)s) AND status IN ('completed', 'failed', 'cancelled');

-- ==== keys, credits and usage (issue 5) ====

-- name: create_account
-- Create an account with its opening grant (a deposit) unless the name is taken; returns it when created.
WITH account AS (
    INSERT INTO accounts (id, name) VALUES (%(id)s, %(name)s)
    ON CONFLICT (name) DO NOTHING
    RETURNING id, name, is_active, created_at
), grant_entry AS (
    INSERT INTO credit_ledger (account_id, kind, amount, note)
    SELECT id, 'deposit', %(credits)s, 'sign-up grant' FROM account WHERE %(credits)s::bigint > 0
)
SELECT * FROM account;

-- name: get_account
-- One account by id.
SELECT id, name, is_active, created_at FROM accounts WHERE id = %(id)s;

-- name: list_accounts
-- Every account, oldest first (admin view).
SELECT id, name, is_active, created_at FROM accounts ORDER BY created_at, id LIMIT %(limit)s;

-- name: set_account_active
-- Activate or deactivate an account; returns it.
UPDATE accounts SET is_active = %(is_active)s WHERE id = %(id)s
RETURNING id, name, is_active, created_at;

-- name: list_api_keys
-- An account's keys, newest first (prefixes and settings, never hashes).
SELECT id, account_id, name, prefix, is_admin, created_at, expires_at, revoked_at, model_pool, optimize_mode,
       rate_limit_rpm, rate_limit_tpm
FROM api_keys WHERE account_id = %(account_id)s ORDER BY created_at DESC, id DESC;

-- name: get_api_key
-- One key of one account.
SELECT id, account_id, name, prefix, is_admin, created_at, expires_at, revoked_at, model_pool, optimize_mode,
       rate_limit_rpm, rate_limit_tpm
FROM api_keys WHERE id = %(id)s AND account_id = %(account_id)s;

-- name: update_api_key
-- Change a live key's name, pool, mode, limits or expiry (each only when its flag says so).
UPDATE api_keys SET
    name = CASE WHEN %(set_name)s THEN %(name)s ELSE name END,
    model_pool = CASE WHEN %(set_model_pool)s THEN %(model_pool)s ELSE model_pool END,
    optimize_mode = CASE WHEN %(set_optimize_mode)s THEN %(optimize_mode)s ELSE optimize_mode END,
    rate_limit_rpm = CASE WHEN %(set_rate_limit_rpm)s THEN %(rate_limit_rpm)s ELSE rate_limit_rpm END,
    rate_limit_tpm = CASE WHEN %(set_rate_limit_tpm)s THEN %(rate_limit_tpm)s ELSE rate_limit_tpm END,
    expires_at = CASE WHEN %(set_expires_at)s THEN %(expires_at)s ELSE expires_at END
WHERE id = %(id)s AND account_id = %(account_id)s AND revoked_at IS NULL
RETURNING id, account_id, name, prefix, is_admin, created_at, expires_at, revoked_at, model_pool, optimize_mode,
          rate_limit_rpm, rate_limit_tpm;

-- name: revoke_api_key
-- Revoke a key of one account (idempotent: an already revoked key keeps its first revocation time).
UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now())
WHERE id = %(id)s AND account_id = %(account_id)s
RETURNING id, account_id, name, prefix, is_admin, created_at, expires_at, revoked_at, model_pool, optimize_mode,
          rate_limit_rpm, rate_limit_tpm;

-- name: account_key_ids
-- Ids of every key of an account (to drop them from caches when the account changes).
SELECT id FROM api_keys WHERE account_id = %(account_id)s;

-- name: lock_account_credits
-- Serialise reservations of one account until commit (other accounts never wait on it).
SELECT pg_advisory_xact_lock(1229866597, hashtext(%(account_id)s));

-- name: reserve_credits
-- Hold a job's worst-case cost if the account can afford it; returns the cost, the terms and whether it was held.
WITH terms AS (
    SELECT COALESCE(p.input_per_mtok, %(default_input)s::bigint) AS price_input,
           COALESCE(p.output_per_mtok, %(default_output)s::bigint) AS price_output
    FROM (VALUES (1)) AS one LEFT JOIN model_prices p ON p.model = %(model)s
), cost AS (
    SELECT price_input, price_output,
           infernet_credit_cost(%(prompt_tokens)s, %(max_tokens)s, price_input, price_output) AS amount
    FROM terms
), credits AS (
    SELECT (COALESCE((SELECT balance FROM credit_rollups WHERE account_id = %(account_id)s), 0)
            + COALESCE(sum(amount), 0))::bigint AS balance,
           (COALESCE((SELECT held FROM credit_rollups WHERE account_id = %(account_id)s), 0)
            + COALESCE(sum(held), 0))::bigint AS reserved
    FROM credit_ledger
    WHERE account_id = %(account_id)s AND txid >= (SELECT horizon FROM credit_rollup_state)
), hold AS (
    INSERT INTO credit_ledger (account_id, kind, held, job_id, api_key_id, price_input, price_output,
                               operator_share_bps)
    SELECT %(account_id)s, 'reserve', cost.amount, %(job_id)s, %(api_key_id)s, cost.price_input,
           cost.price_output, %(operator_share_bps)s
    FROM cost, credits WHERE credits.balance - credits.reserved >= cost.amount
    RETURNING id
)
SELECT cost.amount, cost.price_input, cost.price_output, credits.balance, credits.reserved,
       EXISTS (SELECT 1 FROM hold) AS held
FROM cost, credits;

-- name: account_credits
-- An account's balance and reserved credits: its rollup plus its entries at or above the rollup horizon.
SELECT (COALESCE((SELECT balance FROM credit_rollups WHERE account_id = %(account_id)s), 0)
        + COALESCE(sum(amount), 0))::bigint AS balance,
       (COALESCE((SELECT held FROM credit_rollups WHERE account_id = %(account_id)s), 0)
        + COALESCE(sum(held), 0))::bigint AS reserved
FROM credit_ledger
WHERE account_id = %(account_id)s AND txid >= (SELECT horizon FROM credit_rollup_state);

-- name: try_lock_rollup
-- Only one replica rolls the ledger up at a time (transaction-scoped; false when another is at it).
SELECT pg_try_advisory_xact_lock(1229866598, 0) AS locked;

-- name: roll_up_credits
-- Fold every entry of finished transactions between the old and the new horizon into per-account rollups.
WITH state AS (
    SELECT horizon AS old, pg_snapshot_xmin(pg_current_snapshot()) AS new FROM credit_rollup_state FOR UPDATE
), tail AS (
    SELECT account_id, sum(amount) AS amount, sum(held) AS held
    FROM credit_ledger
    WHERE txid >= (SELECT old FROM state) AND txid < (SELECT new FROM state)
    GROUP BY account_id
), folded AS (
    INSERT INTO credit_rollups AS r (account_id, balance, held)
    SELECT account_id, amount, held FROM tail
    ON CONFLICT (account_id) DO UPDATE SET balance = r.balance + excluded.balance, held = r.held + excluded.held
    RETURNING 1
), moved AS (
    UPDATE credit_rollup_state SET horizon = state.new, rolled_at = now() FROM state
    RETURNING 1
)
SELECT (SELECT count(*) FROM folded) AS accounts, (SELECT count(*) FROM moved) AS moved;

-- name: deposit_credits
-- Add credits to an account (a top-up or grant); returns the entry.
INSERT INTO credit_ledger (account_id, kind, amount, note)
VALUES (%(account_id)s, 'deposit', %(amount)s, %(note)s)
RETURNING id, account_id, kind, amount, held, job_id, node_id, api_key_id, note, created_at;

-- name: list_credit_transactions
-- An account's ledger entries, newest first, by kind, job and time, before a cursor id.
SELECT id, account_id, kind, amount, held, job_id, node_id, api_key_id, note, created_at
FROM credit_ledger
WHERE account_id = %(account_id)s
  AND (%(before)s::bigint IS NULL OR id < %(before)s)
  AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s))
  AND (%(job_id)s::text IS NULL OR job_id = %(job_id)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: get_credit_transaction
-- One ledger entry of one account.
SELECT id, account_id, kind, amount, held, job_id, node_id, api_key_id, note, created_at
FROM credit_ledger WHERE id = %(id)s AND account_id = %(account_id)s;

-- name: upsert_model_price
-- Set a model's prices (credits per 1M input and output tokens).
INSERT INTO model_prices (model, input_per_mtok, output_per_mtok) VALUES (%(model)s, %(input)s, %(output)s)
ON CONFLICT (model) DO UPDATE SET input_per_mtok = excluded.input_per_mtok,
                                  output_per_mtok = excluded.output_per_mtok, updated_at = now()
RETURNING model, input_per_mtok, output_per_mtok, updated_at;

-- name: delete_model_price
-- Drop a model's price so the default applies again.
DELETE FROM model_prices WHERE model = %(model)s RETURNING model;

-- name: list_model_prices
-- Every priced model.
SELECT model, input_per_mtok, output_per_mtok, updated_at FROM model_prices ORDER BY model;

-- name: list_usage
-- An account's ended jobs (one usage record each), newest first, by time, model and key, before a cursor.
SELECT id, model, node_id, api_key_id, status, error, prompt_tokens, completion_tokens, credits_charged,
       created_at, completed_at, first_token_at, started_at, result -> 'ttft_ms' AS ttft_ms
FROM jobs
WHERE account_id = %(account_id)s AND status IN ('completed', 'failed', 'cancelled')
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(model)s::text IS NULL OR model = %(model)s)
  AND (%(key_id)s::text IS NULL OR api_key_id = %(key_id)s)
  AND (%(before_ts)s::timestamptz IS NULL OR (created_at, id) < (%(before_ts)s, %(before_id)s))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: usage_totals
-- Totals of an account's ended jobs per model and per UTC day, under the same filters as list_usage.
SELECT model, (created_at AT TIME ZONE 'UTC')::date AS day, count(*) AS jobs,
       COALESCE(sum(prompt_tokens), 0)::bigint AS prompt_tokens,
       COALESCE(sum(completion_tokens), 0)::bigint AS completion_tokens, COALESCE(sum(credits_charged), 0)::bigint AS credits
FROM jobs
WHERE account_id = %(account_id)s AND status IN ('completed', 'failed', 'cancelled')
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
  AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s)
  AND (%(model)s::text IS NULL OR model = %(model)s)
  AND (%(key_id)s::text IS NULL OR api_key_id = %(key_id)s)
GROUP BY model, day;

-- name: operator_node_stats
-- An operator's nodes with the jobs they completed, the tokens they served and what the operator earned.
SELECT n.id AS node_id, n.name, n.created_at, n.last_seen_at,
       COALESCE(j.jobs, 0)::bigint AS jobs_served, COALESCE(j.prompt_tokens, 0)::bigint AS prompt_tokens,
       COALESCE(j.completion_tokens, 0)::bigint AS completion_tokens, COALESCE(j.credits, 0)::bigint AS credits_charged,
       COALESCE(p.earned, 0)::bigint AS earnings
FROM nodes n
LEFT JOIN LATERAL (
    SELECT count(*) AS jobs, sum(prompt_tokens) AS prompt_tokens, sum(completion_tokens) AS completion_tokens,
           sum(credits_charged) AS credits
    FROM jobs WHERE node_id = n.id AND status = 'completed'
) j ON true
LEFT JOIN (
    SELECT node_id, sum(amount) AS earned FROM (
        SELECT node_id, amount FROM credit_ledger
        WHERE account_id = %(account_id)s AND kind = 'payout'
          AND (%(node_ids)s::text[] IS NULL OR node_id = ANY(%(node_ids)s))
        UNION ALL  -- payouts older than the retention, folded (migration 0070)
        SELECT node_id, amount FROM credit_payouts_folded
        WHERE account_id = %(account_id)s AND (%(node_ids)s::text[] IS NULL OR node_id = ANY(%(node_ids)s))
    ) AS payouts
    GROUP BY node_id
) p ON p.node_id = n.id
WHERE n.operator_account_id = %(account_id)s AND (%(node_ids)s::text[] IS NULL OR n.id = ANY(%(node_ids)s))
ORDER BY n.id;

-- ==== attempts a live node does not hold (issue 4) ====

-- name: unconfirmed_processing
-- Processing attempts handed over more than min_age seconds ago (to check against their nodes' reports); reads
-- the small partial index of processing jobs, so its cost follows the jobs running, not the nodes known.
SELECT id, attempt, lease, node_id, first_token_at, assigned_at FROM jobs
WHERE status = 'processing' AND node_id IS NOT NULL
  AND assigned_at < now() - make_interval(secs => %(min_age)s);

-- ==== gateway behaviours: rate limits, idempotency, webhooks, typed output, fallback (issue 6) ====

-- name: ratelimit_lease
-- Lease `need` units (all or nothing) and up to `ask` of a key's window budget; returns the shared total and the grant.
INSERT INTO rate_limit_windows AS w (key_id, window_start, dim, used, granted)
VALUES (%(key_id)s, %(window_start)s, %(dim)s,
        CASE WHEN %(ask)s::bigint <= %(limit)s::bigint THEN %(ask)s::bigint
             WHEN %(need)s::bigint <= %(limit)s::bigint THEN %(limit)s::bigint ELSE 0 END,
        CASE WHEN %(ask)s::bigint <= %(limit)s::bigint THEN %(ask)s::bigint
             WHEN %(need)s::bigint <= %(limit)s::bigint THEN %(limit)s::bigint ELSE 0 END)
ON CONFLICT (key_id, window_start, dim) DO UPDATE
SET used = w.used + CASE WHEN w.used + %(ask)s::bigint <= %(limit)s::bigint THEN %(ask)s::bigint
                         WHEN w.used + %(need)s::bigint <= %(limit)s::bigint THEN %(limit)s::bigint - w.used
                         ELSE 0 END,
    granted = CASE WHEN w.used + %(ask)s::bigint <= %(limit)s::bigint THEN %(ask)s::bigint
                   WHEN w.used + %(need)s::bigint <= %(limit)s::bigint THEN %(limit)s::bigint - w.used
                   ELSE 0 END
RETURNING used, granted;

-- name: ratelimit_used
-- How much of a key's window budget all replicas have leased so far.
SELECT used FROM rate_limit_windows
WHERE key_id = %(key_id)s AND window_start = %(window_start)s AND dim = %(dim)s;

-- name: ratelimit_forget
-- Drop rate-limit windows that ended long ago.
DELETE FROM rate_limit_windows WHERE window_start < %(before)s;

-- name: complete_typed_job
-- Record a result whose output matched the job's response_schema (`typed` is in the result); current attempt only.
UPDATE jobs
SET status = 'completed', completed_at = now(), result = %(result)s,
    prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s, completion_bounds = %(completion_bounds)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease = %(lease)s AND node_id = %(node_id)s
  AND status = 'processing' AND request ? 'response_schema'
RETURNING *;

-- name: fail_typed_job
-- Fail a job whose output did not match its response_schema (settlement refunds it); current attempt only.
UPDATE jobs
SET status = 'failed', completed_at = now(), error = %(error)s, error_message = %(error_message)s,
    result = %(result)s, prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease = %(lease)s AND node_id = %(node_id)s
  AND status = 'processing' AND request ? 'response_schema'
RETURNING *;

-- name: switch_job_model
-- Move a pending job to a fallback model (only if it is still pending on the model it had).
UPDATE jobs
SET model = %(model)s, request = request || jsonb_build_object('fallback', %(fallback)s::jsonb)
WHERE id = %(id)s AND status = 'pending' AND model = %(from_model)s
RETURNING id;

-- name: idempotency_claim
-- Claim an Idempotency-Key for an account (new, expired, or abandoned by a dead request); no row: someone holds it.
INSERT INTO idempotency_keys AS k (account_id, key, fingerprint)
VALUES (%(account_id)s, %(key)s, %(fingerprint)s)
ON CONFLICT (account_id, key) DO UPDATE
SET fingerprint = EXCLUDED.fingerprint, job_id = NULL, created_at = now()
WHERE k.created_at < now() - make_interval(secs => %(ttl_secs)s)
   OR (k.job_id IS NULL AND k.created_at < now() - make_interval(secs => %(stale_secs)s))
RETURNING key;

-- name: idempotency_bind
-- Record the job an Idempotency-Key created.
UPDATE idempotency_keys SET job_id = %(job_id)s
WHERE account_id = %(account_id)s AND key = %(key)s AND fingerprint = %(fingerprint)s AND job_id IS NULL;

-- name: idempotency_release
-- Drop a claim whose request failed before creating a job, so the key can be retried.
DELETE FROM idempotency_keys
WHERE account_id = %(account_id)s AND key = %(key)s AND fingerprint = %(fingerprint)s AND job_id IS NULL;

-- name: idempotency_get
-- An account's Idempotency-Key: its request fingerprint and job (NULL while the first request is submitting).
SELECT fingerprint, job_id, created_at FROM idempotency_keys WHERE account_id = %(account_id)s AND key = %(key)s;

-- name: idempotency_forget
-- Drop Idempotency-Keys older than their lifetime.
DELETE FROM idempotency_keys WHERE created_at < now() - make_interval(secs => %(ttl_secs)s);

-- name: webhook_claim_due
-- Claim due webhook deliveries for one attempt each: count it and push the next try past the attempt's timeout.
UPDATE webhook_deliveries AS d
SET attempts_made = d.attempts_made + 1, next_attempt_at = now() + make_interval(secs => %(lease_secs)s)
FROM (SELECT job_id FROM webhook_deliveries
      WHERE status = 'pending' AND next_attempt_at <= now()
      ORDER BY next_attempt_at LIMIT %(limit)s FOR UPDATE SKIP LOCKED) AS due
WHERE d.job_id = due.job_id
RETURNING d.*;

-- name: webhook_record
-- Record one delivery attempt (only by the worker that claimed it) and when to try again.
UPDATE webhook_deliveries
SET status = %(status)s, attempts = attempts || %(attempt)s::jsonb,
    next_attempt_at = now() + make_interval(secs => %(retry_in)s),
    completed_at = CASE WHEN %(status)s::text = 'pending' THEN NULL ELSE now() END
WHERE job_id = %(job_id)s AND attempts_made = %(attempts_made)s AND status = 'pending';

-- name: webhook_secret
-- An account's webhook signing secret, created with the given one if it has none.
INSERT INTO webhook_secrets AS s (account_id, secret) VALUES (%(account_id)s, %(secret)s)
ON CONFLICT (account_id) DO UPDATE SET account_id = s.account_id
RETURNING secret, created_at;

-- name: webhook_secret_rotate
-- Replace an account's webhook signing secret.
INSERT INTO webhook_secrets (account_id, secret) VALUES (%(account_id)s, %(secret)s)
ON CONFLICT (account_id) DO UPDATE SET secret = EXCLUDED.secret, created_at = now()
RETURNING secret, created_at;

-- ==== retention: job content, ledger folding, webhook deliveries ====

-- name: prune_job_content
-- Remove prompts and outputs from up to `limit` ended jobs older than the retention; metadata, usage and cost stay.
UPDATE jobs AS j
SET request = j.request - %(request_keys)s::text[],
    result = CASE WHEN j.result IS NULL THEN NULL ELSE j.result - %(result_keys)s::text[] END,
    content_pruned_at = now()
FROM (SELECT id FROM jobs
      WHERE content_pruned_at IS NULL AND status IN ('completed', 'failed', 'cancelled')
        AND completed_at < now() - make_interval(secs => %(retention_secs)s)
      ORDER BY completed_at
      LIMIT %(limit)s
      FOR UPDATE SKIP LOCKED) AS old
WHERE j.id = old.id;

-- name: forget_webhook_deliveries
-- Drop up to `limit` ended webhook deliveries older than the retention (their jobs' content is pruned too).
DELETE FROM webhook_deliveries
WHERE job_id IN (SELECT job_id FROM webhook_deliveries
                 WHERE status <> 'pending' AND completed_at < now() - make_interval(secs => %(retention_secs)s)
                 LIMIT %(limit)s
                 FOR UPDATE SKIP LOCKED);

-- name: try_lock_ledger_fold
-- Only one replica folds the ledger at a time (transaction-scoped; false when another is at it).
SELECT pg_try_advisory_xact_lock(1229866598, 1) AS locked;

-- name: allow_ledger_fold
-- Announce the folding transaction to the ledger's append-only trigger (this transaction only).
SELECT set_config('infernet.ledger_fold', 'on', true);

-- name: fold_ledger
-- Fold the oldest `limit` ledger entries, when older than the retention and already inside the rollups, into
-- per-account (and per-node payout) totals, and delete them. Entries of a job still running are kept.
WITH oldest AS (
    SELECT id, account_id, node_id, kind, amount, held, job_id, txid, created_at
    FROM credit_ledger ORDER BY id LIMIT %(limit)s
), gone AS (
    DELETE FROM credit_ledger AS l
    USING oldest AS o
    WHERE l.id = o.id AND o.created_at < now() - make_interval(secs => %(retention_secs)s)
      AND o.txid < (SELECT horizon FROM credit_rollup_state)
      AND (o.job_id IS NULL OR NOT EXISTS (SELECT 1 FROM jobs AS j
                                          WHERE j.id = o.job_id AND j.status IN ('pending', 'processing')))
    RETURNING l.account_id, l.node_id, l.kind, l.amount, l.held, l.created_at
), per_account AS (
    INSERT INTO credit_ledger_folded AS f (account_id, amount, held, entries, through)
    SELECT account_id, sum(amount), sum(held), count(*), max(created_at) FROM gone GROUP BY account_id
    ON CONFLICT (account_id) DO UPDATE
    SET amount = f.amount + excluded.amount, held = f.held + excluded.held, entries = f.entries + excluded.entries,
        through = greatest(f.through, excluded.through)
    RETURNING 1
), payouts AS (
    INSERT INTO credit_payouts_folded AS p (account_id, node_id, amount)
    SELECT account_id, node_id, sum(amount) FROM gone WHERE kind = 'payout' AND node_id IS NOT NULL
    GROUP BY account_id, node_id
    ON CONFLICT (account_id, node_id) DO UPDATE SET amount = p.amount + excluded.amount
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone) AS folded, (SELECT count(*) FROM oldest) AS examined,
       (SELECT min(created_at) FROM oldest) AS oldest_at;

-- name: ledger_fold_check
-- Per account: the rollup against the folded totals plus the entries below the horizon (equal when exact).
SELECT a.id AS account_id, COALESCE(r.balance, 0) AS rollup_balance, COALESCE(r.held, 0) AS rollup_held,
       COALESCE(f.amount, 0) + COALESCE(l.amount, 0) AS folded_plus_entries_balance,
       COALESCE(f.held, 0) + COALESCE(l.held, 0) AS folded_plus_entries_held
FROM accounts a
LEFT JOIN credit_rollups r ON r.account_id = a.id
LEFT JOIN credit_ledger_folded f ON f.account_id = a.id
LEFT JOIN (SELECT account_id, sum(amount) AS amount, sum(held) AS held FROM credit_ledger
           WHERE txid < (SELECT horizon FROM credit_rollup_state) GROUP BY account_id) l ON l.account_id = a.id;

-- ==== the web console (control_plane/console) ====

-- name: get_principal_by_key_id
-- Resolve a key id (a console session's key) to its key and account state, as get_principal_by_key_hash does.
SELECT k.id AS key_id, k.account_id, k.key_hash, k.prefix, k.is_admin, k.revoked_at, k.expires_at,
       k.model_pool, k.optimize_mode, k.rate_limit_rpm, k.rate_limit_tpm,
       a.is_active AS account_active, a.name AS account_name
FROM api_keys k JOIN accounts a ON a.id = k.account_id
WHERE k.id = %(key_id)s;

-- name: console_session_create
-- Open a console session for a key; the cookie's token is stored as its SHA-256 only.
INSERT INTO console_sessions (token_hash, key_id, csrf_token, expires_at)
VALUES (%(token_hash)s, %(key_id)s, %(csrf_token)s, now() + make_interval(secs => %(ttl_secs)s))
RETURNING key_id, csrf_token, expires_at;

-- name: console_session_get
-- A live console session by its token's hash.
SELECT s.key_id, s.csrf_token, s.expires_at, a.name AS account_name
FROM console_sessions s JOIN api_keys k ON k.id = s.key_id JOIN accounts a ON a.id = k.account_id
WHERE s.token_hash = %(token_hash)s AND s.expires_at > now();

-- name: console_session_delete
-- Sign out: forget one session.
DELETE FROM console_sessions WHERE token_hash = %(token_hash)s;

-- name: console_sessions_purge
-- Forget expired sessions and spent or expired login links.
WITH s AS (DELETE FROM console_sessions WHERE expires_at <= now() RETURNING 1),
     l AS (DELETE FROM console_login_links WHERE expires_at <= now() RETURNING 1)
SELECT (SELECT count(*) FROM s) + (SELECT count(*) FROM l) AS purged;

-- name: console_login_link_create
-- A one-time sign-in link for a key.
INSERT INTO console_login_links (token_hash, key_id, expires_at)
VALUES (%(token_hash)s, %(key_id)s, now() + make_interval(secs => %(ttl_secs)s))
RETURNING key_id, expires_at;

-- name: console_login_link_redeem
-- Spend a one-time sign-in link: answers its key only the first time, and only before it expires.
UPDATE console_login_links SET used_at = now()
WHERE token_hash = %(token_hash)s AND used_at IS NULL AND expires_at > now()
RETURNING key_id;

-- name: console_replica_stamp
-- A replica says it is alive, with what it sees of NATS, its node count and its queue.
INSERT INTO console_replicas (replica_id, started_at, last_seen_at, nats_ok, postgres_ok, nodes_online, queued)
VALUES (%(replica_id)s, %(started_at)s, now(), %(nats_ok)s, true, %(nodes_online)s, %(queued)s)
ON CONFLICT (replica_id) DO UPDATE
SET last_seen_at = now(), nats_ok = EXCLUDED.nats_ok, postgres_ok = true, nodes_online = EXCLUDED.nodes_online,
    queued = EXCLUDED.queued;

-- name: console_replicas
-- Replicas heard from in the last hour, freshest first; older ones are forgotten.
SELECT replica_id, started_at, last_seen_at, nats_ok, postgres_ok, nodes_online, queued,
       extract(epoch FROM now() - last_seen_at)::float8 AS silent_secs
FROM console_replicas WHERE last_seen_at > now() - interval '1 hour'
ORDER BY last_seen_at DESC, replica_id;

-- name: console_pending_by_model
-- Queue depth of the whole network, per model: jobs waiting for a node.
SELECT model, count(*)::bigint AS pending FROM jobs WHERE status = 'pending' GROUP BY model ORDER BY model;

-- name: console_operator_earnings_by_day
-- An operator's payouts per day since a time.
SELECT (created_at AT TIME ZONE 'UTC')::date AS day, sum(amount)::bigint AS earned, count(*)::bigint AS jobs
FROM credit_ledger
WHERE account_id = %(account_id)s AND kind = 'payout' AND created_at >= %(since)s
GROUP BY day ORDER BY day;

-- name: console_node_failures
-- Failed jobs per node of an operator since a time.
SELECT n.id AS node_id, count(j.id)::bigint AS failures
FROM nodes n LEFT JOIN jobs j ON j.node_id = n.id AND j.status = 'failed' AND j.created_at >= %(since)s
WHERE n.operator_account_id = %(account_id)s
GROUP BY n.id;

-- name: list_jobs_of_model
-- As list_jobs, for one model only (the console's jobs filter).
SELECT j.*, CASE WHEN j.request ? 'webhook_url' THEN (
           SELECT jsonb_build_object('id', d.id, 'status', d.status, 'attempts', d.attempts,
                                     'next_attempt_at', CASE WHEN d.status = 'pending' THEN d.next_attempt_at END)
           FROM webhook_deliveries d WHERE d.job_id = j.id) END AS webhook
FROM jobs j
WHERE account_id = %(account_id)s AND model = %(model)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: console_account_models
-- The models an account's jobs used, for the jobs filter.
SELECT DISTINCT model FROM (SELECT model FROM jobs WHERE account_id = %(account_id)s
                            ORDER BY created_at DESC LIMIT 1000) recent ORDER BY model;

-- name: console_node_operator
-- Which account operates a node (null: none, or no such node).
SELECT id, name, operator_account_id FROM nodes WHERE id = %(id)s;

-- ==== trust: node standing (control_plane/trust) ====

-- name: trust_ensure
-- Make sure the nodes about to get evidence have a row (so the next statement can lock every one of them).
INSERT INTO node_trust (node_id, decayed_at) SELECT unnest(%(ids)s::text[]), %(now)s
ON CONFLICT (node_id) DO NOTHING;

-- name: trust_lock
-- The standing of some nodes, locked until the transaction writes their new standing.
SELECT * FROM node_trust WHERE node_id = ANY(%(ids)s) ORDER BY node_id FOR UPDATE;

-- name: trust_write
-- New standings (computed from the locked rows plus new evidence); counters and measured speeds add up.
UPDATE node_trust AS t
SET good = v.good, bad = v.bad, decayed_at = v.decayed_at, quarantined = v.quarantined,
    checks_passed = t.checks_passed + v.checks_passed, checks_failed = t.checks_failed + v.checks_failed,
    probes_passed = t.probes_passed + v.probes_passed, probes_failed = t.probes_failed + v.probes_failed,
    usage_capped = t.usage_capped + v.usage_capped, errors = t.errors + v.errors,
    unanswered = t.unanswered + v.unanswered, served = t.served + v.served,
    measured_tps = t.measured_tps || v.measured_tps, updated_at = now()
FROM (
    SELECT unnest(%(ids)s::text[]) AS node_id, unnest(%(good)s::float8[]) AS good, unnest(%(bad)s::float8[]) AS bad,
           unnest(%(decayed_at)s::float8[]) AS decayed_at, unnest(%(quarantined)s::boolean[]) AS quarantined,
           unnest(%(checks_passed)s::bigint[]) AS checks_passed, unnest(%(checks_failed)s::bigint[]) AS checks_failed,
           unnest(%(probes_passed)s::bigint[]) AS probes_passed, unnest(%(probes_failed)s::bigint[]) AS probes_failed,
           unnest(%(usage_capped)s::bigint[]) AS usage_capped, unnest(%(errors)s::bigint[]) AS errors,
           unnest(%(unanswered)s::bigint[]) AS unanswered, unnest(%(served)s::bigint[]) AS served,
           unnest(%(measured_tps)s::jsonb[]) AS measured_tps
) AS v
WHERE t.node_id = v.node_id
RETURNING t.*;

-- name: trust_changed_since
-- Standings written since a moment (another replica's evidence, an admin's clear); all of them when null.
SELECT * FROM node_trust WHERE %(since)s::timestamptz IS NULL OR updated_at > %(since)s;

-- name: trust_clear
-- An admin's clear: evidence forgotten, quarantine lifted, the node back on probation (counters kept).
UPDATE node_trust SET good = 0, bad = 0, decayed_at = %(now)s, quarantined = false, updated_at = now()
WHERE node_id = %(node_id)s
RETURNING *;

-- name: node_operator
-- Who operates a node (its reputation is shown to them and to admins).
SELECT id, operator_account_id FROM nodes WHERE id = %(id)s;

-- name: node_operators
-- The operator accounts of some nodes (a spot check goes to another operator's node).
SELECT id, operator_account_id FROM nodes WHERE id = ANY(%(ids)s);

-- name: reverse_payout
-- Take back what an operator earned from a job whose answer failed verification (once per job); a payout still
-- held back is taken back with its hold, so it was never spendable.
INSERT INTO credit_ledger (account_id, kind, amount, held, job_id, node_id, note)
SELECT account_id, 'payout', -sum(amount), -sum(held), job_id, min(node_id), %(note)s FROM credit_ledger
WHERE job_id = %(job_id)s AND kind = 'payout'
GROUP BY account_id, job_id HAVING sum(amount) > 0
ON CONFLICT DO NOTHING
RETURNING id, account_id, amount;

-- name: set_payout_holdback
-- The holdback window new payouts are held for (this replica's INFERNET_PAYOUT_HOLDBACK_S).
UPDATE payout_holdback SET secs = %(secs)s;

-- name: release_payouts
-- Release payouts whose holdback window ended (and that no failed check reversed meanwhile), a batch at a time.
INSERT INTO credit_ledger (account_id, kind, amount, held, job_id, node_id, note)
SELECT p.account_id, 'payout', 0, -sum(p.held), p.job_id, min(p.node_id), 'holdback ended'
FROM credit_ledger p
WHERE p.kind = 'payout' AND p.job_id IN (
    SELECT job_id FROM credit_ledger
    WHERE kind = 'payout' AND held > 0 AND created_at < now() - make_interval(secs => %(secs)s)
    ORDER BY created_at LIMIT %(limit)s)
GROUP BY p.account_id, p.job_id HAVING sum(p.held) > 0
ON CONFLICT DO NOTHING
RETURNING id;

-- name: return_charge
-- Give the user back what a job whose answer failed verification cost them (once per job).
INSERT INTO credit_ledger (account_id, kind, amount, job_id, api_key_id, note)
SELECT account_id, 'deposit', -sum(amount), job_id, min(api_key_id), %(note)s FROM credit_ledger
WHERE job_id = %(job_id)s AND kind = 'charge'
GROUP BY account_id, job_id HAVING sum(amount) < 0
ON CONFLICT DO NOTHING
RETURNING id, account_id, amount;

-- name: trust_claim_settlement
-- Claim the settlement of a pair of check runs (no row: another replica settled it).
INSERT INTO trust_settlements (key) VALUES (%(key)s) ON CONFLICT DO NOTHING RETURNING key;

-- name: trust_now
-- The database clock (standings written since are read from here on).
SELECT now() AS now;

-- name: model_claim_start
-- Take the measurement of a node's model claim (verification by a known-answer probe): a new claim, or one whose
-- last measurement failed or never finished long enough ago (the wait doubles per attempt, at most max_wait_s).
-- No row: it is verified, or being measured (by this or another replica), or not due yet.
INSERT INTO node_model_claims (node_id, model, state, reference_node_id)
VALUES (%(node_id)s, %(model)s, 'pending', %(reference)s)
ON CONFLICT (node_id, model) DO UPDATE
SET state = 'pending', attempts = node_model_claims.attempts + 1, reference_node_id = EXCLUDED.reference_node_id,
    updated_at = now()
WHERE node_model_claims.state <> 'verified'
  AND node_model_claims.updated_at < now() - make_interval(secs => LEAST(
      %(max_wait_s)s::float8, %(retry_s)s::float8 * power(2, LEAST(node_model_claims.attempts - 1, 30))))
RETURNING node_id, model, state, attempts, updated_at;

-- name: model_claim_settle
-- The measurement of a claim came back: verified or failed (only a claim being measured changes).
UPDATE node_model_claims SET state = %(state)s, updated_at = now()
WHERE node_id = %(node_id)s AND model = %(model)s AND state = 'pending'
RETURNING node_id, model, state, attempts, updated_at;

-- name: model_claims_changed_since
-- Claims measured or taken since a moment (by any replica); all of them when null.
SELECT node_id, model, state, attempts, updated_at FROM node_model_claims
WHERE %(since)s::timestamptz IS NULL OR updated_at > %(since)s;

-- ==== the job path in fewer round trips (perf) ====

-- name: submit_job
-- Insert a job with its credit hold in one statement (infernet_submit_job, migration 0030), already processing on
-- node_id under lease when given; held is false (and nothing written) when the account cannot afford it.
SELECT * FROM infernet_submit_job(
    %(id)s::text, %(account_id)s::text, %(api_key_id)s::text, %(kind)s::text, %(model)s::text, %(request)s::jsonb,
    %(pinned_node_id)s::text, %(claimed_by)s::text, %(claim_secs)s::float8, %(wallclock_secs)s::float8,
    %(request_id)s::text, %(node_id)s::text, %(lease)s::text, %(prompt_tokens)s::bigint, %(max_tokens)s::bigint,
    %(default_input)s::bigint, %(default_output)s::bigint, %(operator_share_bps)s::integer);
