-- A submission in one statement, so one round trip and one commit: the per-account credit lock, the
-- worst-case cost at the model's price, the job row (already processing on its node when the submitting
-- replica found a free slot, so no second commit records the attempt), and the credit hold.
--
-- Same rules as insert_job + lock_account_credits + reserve_credits run in one transaction (those named
-- queries stay for other callers): the lock is the same advisory lock, taken before the balance is read,
-- and plpgsql reads the balance with a snapshot taken after the lock, so concurrent submits of one account
-- never both spend the same credit. Without enough credit nothing is written and `held` is false.
CREATE FUNCTION infernet_submit_job(
    p_id text, p_account_id text, p_api_key_id text, p_kind text, p_model text, p_request jsonb,
    p_pinned_node_id text, p_claimed_by text, p_claim_secs double precision, p_wallclock_secs double precision,
    p_request_id text, p_node_id text, p_lease text,
    p_prompt_tokens bigint, p_max_tokens bigint, p_default_input bigint, p_default_output bigint,
    p_operator_share_bps integer)
RETURNS TABLE (id text, status text, model text, created_at timestamptz, deadline timestamptz, attempt integer,
               held boolean, amount bigint, price_input bigint, price_output bigint, balance bigint,
               reserved bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_in      bigint;
    v_out     bigint;
    v_amount  bigint;
    v_balance bigint;
    v_held    bigint;
    v_job     jobs%ROWTYPE;
BEGIN
    PERFORM pg_advisory_xact_lock(1229866597, hashtext(p_account_id));
    SELECT COALESCE(p.input_per_mtok, p_default_input), COALESCE(p.output_per_mtok, p_default_output)
    INTO v_in, v_out
    FROM (VALUES (1)) AS one LEFT JOIN model_prices p ON p.model = p_model;
    v_amount := infernet_credit_cost(p_prompt_tokens, p_max_tokens, v_in, v_out);
    SELECT (COALESCE((SELECT r.balance FROM credit_rollups r WHERE r.account_id = p_account_id), 0)
            + COALESCE(sum(l.amount), 0))::bigint,
           (COALESCE((SELECT r.held FROM credit_rollups r WHERE r.account_id = p_account_id), 0)
            + COALESCE(sum(l.held), 0))::bigint
    INTO v_balance, v_held
    FROM credit_ledger l
    WHERE l.account_id = p_account_id AND l.txid >= (SELECT s.horizon FROM credit_rollup_state s);
    IF v_balance - v_held < v_amount THEN
        RETURN QUERY SELECT NULL::text, NULL::text, p_model, NULL::timestamptz, NULL::timestamptz, NULL::integer,
                            false, v_amount, v_in, v_out, v_balance, v_held;
        RETURN;
    END IF;
    INSERT INTO jobs AS j (id, account_id, api_key_id, kind, model, request, pinned_node_id, status, claimed_by,
                           claim_expires_at, deadline, request_id, attempt, lease, node_id, started_at, assigned_at,
                           offers)
    VALUES (p_id, p_account_id, p_api_key_id, p_kind, p_model, p_request, p_pinned_node_id,
            CASE WHEN p_node_id IS NULL THEN 'pending' ELSE 'processing' END,
            CASE WHEN p_node_id IS NULL THEN p_claimed_by END,
            CASE WHEN p_node_id IS NULL THEN now() + make_interval(secs => p_claim_secs) END,
            now() + make_interval(secs => p_wallclock_secs), p_request_id,
            CASE WHEN p_node_id IS NULL THEN 0 ELSE 1 END, p_lease, p_node_id,
            CASE WHEN p_node_id IS NOT NULL THEN now() END, CASE WHEN p_node_id IS NOT NULL THEN now() END,
            CASE WHEN p_node_id IS NULL THEN 0 ELSE 1 END)
    RETURNING j.* INTO v_job;
    INSERT INTO credit_ledger (account_id, kind, held, job_id, api_key_id, price_input, price_output,
                               operator_share_bps)
    VALUES (p_account_id, 'reserve', v_amount, p_id, p_api_key_id, v_in, v_out, p_operator_share_bps);
    RETURN QUERY SELECT v_job.id, v_job.status, v_job.model, v_job.created_at, v_job.deadline, v_job.attempt,
                        true, v_amount, v_in, v_out, v_balance, v_held;
END $$;
