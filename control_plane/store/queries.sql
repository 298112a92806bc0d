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
-- Store a new API key (hash only).
INSERT INTO api_keys (id, account_id, name, prefix, key_hash, is_admin, expires_at)
VALUES (%(id)s, %(account_id)s, %(name)s, %(prefix)s, %(key_hash)s, %(is_admin)s, %(expires_at)s)
RETURNING id, account_id, name, prefix, is_admin, created_at, expires_at;

-- name: get_principal_by_key_hash
-- Resolve a bearer key's hash to its key and account state.
SELECT k.id AS key_id, k.account_id, k.key_hash, k.is_admin, k.revoked_at, k.expires_at,
       a.is_active AS account_active, a.name AS account_name
FROM api_keys k JOIN accounts a ON a.id = k.account_id
WHERE k.key_hash = %(key_hash)s;

-- name: insert_node
-- Register a node (token hash only) for an optional operator account.
INSERT INTO nodes (id, name, operator_account_id, token_hash)
VALUES (%(id)s, %(name)s, %(operator_account_id)s, %(token_hash)s)
RETURNING id, name, created_at;

-- name: get_node_token_hash
-- The stored token hash of a node, to verify its advertisements.
SELECT id, name, token_hash FROM nodes WHERE id = %(id)s;

-- name: touch_nodes
-- Batch-record that nodes were seen, with their last advertisement.
UPDATE nodes AS n
SET last_seen_at = v.seen_at,
    first_seen_at = COALESCE(n.first_seen_at, v.seen_at),
    last_advertisement = v.advertisement
FROM (
    SELECT unnest(%(ids)s::text[]) AS id,
           unnest(%(seen_at)s::timestamptz[]) AS seen_at,
           unnest(%(advertisements)s::jsonb[]) AS advertisement
) AS v
WHERE n.id = v.id;

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
-- One job of one account (the API's view).
SELECT * FROM jobs WHERE id = %(id)s AND account_id = %(account_id)s;

-- name: get_job_any
-- One job regardless of account (internal use: placement, recording).
SELECT * FROM jobs WHERE id = %(id)s;

-- name: list_jobs
-- An account's recent jobs, newest first, optionally filtered by status and creation time.
SELECT * FROM jobs
WHERE account_id = %(account_id)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s)
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s;

-- name: start_attempt
-- Record that an attempt was accepted by a node: the job is processing there under a new lease.
UPDATE jobs
SET status = 'processing', attempt = %(attempt)s, lease = %(lease)s, node_id = %(node_id)s,
    started_at = COALESCE(started_at, now()), claimed_by = NULL, claim_expires_at = NULL
WHERE id = %(id)s AND status = 'pending'
RETURNING id;

-- name: complete_job
-- Record a result; only for the current attempt, lease and node, and only once.
UPDATE jobs
SET status = 'completed', completed_at = now(), result = %(result)s,
    prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s,
    first_token_at = COALESCE(first_token_at, %(first_token_at)s)
WHERE id = %(id)s AND attempt = %(attempt)s AND lease = %(lease)s AND node_id = %(node_id)s
  AND status = 'processing'
RETURNING id, account_id, status, completed_at, created_at;

-- name: fail_attempt
-- Record a failure of the current attempt; only for its lease and node, and only once.
UPDATE jobs
SET status = 'failed', completed_at = now(), error = %(error)s, error_message = %(error_message)s,
    result = %(result)s, prompt_tokens = %(prompt_tokens)s, completion_tokens = %(completion_tokens)s
WHERE id = %(id)s AND attempt = %(attempt)s AND lease = %(lease)s AND node_id = %(node_id)s
  AND status = 'processing'
RETURNING id, account_id, status, completed_at, created_at;

-- name: requeue_attempt
-- Put a processing job back to pending for another attempt (node lost or retryable failure before any token).
UPDATE jobs
SET status = 'pending', node_id = NULL, lease = NULL,
    claimed_by = %(claimed_by)s, claim_expires_at = now() + make_interval(secs => %(claim_secs)s)
WHERE id = %(id)s AND attempt = %(attempt)s AND status = 'processing'
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
-- Undo an assignment the node did not accept: back to pending, held by this replica.
UPDATE jobs
SET status = 'pending', node_id = NULL, lease = NULL,
    claimed_by = %(claimed_by)s, claim_expires_at = now() + make_interval(secs => %(claim_secs)s)
WHERE id = %(id)s AND lease = %(lease)s AND status = 'processing'
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
