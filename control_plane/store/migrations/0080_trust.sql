-- Trust in what nodes return: usage capped to what the relayed text can hold, and each node's standing
-- (evidence behind its reputation, quarantine, measured speed).

-- Upper bounds on a completed job's token counts from what the control plane can check itself:
--   completion: max_tokens (512 when unset, as the dispatcher assigns), and the relayed text's UTF-8 bytes
--               (content plus tool calls) + 1: a token yields at least one byte, the end token none;
--   prompt:     the stored request's bytes (messages, tools ...) + 64 for the chat template's own tokens
--               (default system prompt, role markers) + 8 per message + 1024 per image (vision encoders).
-- Honest engines stay under both; a larger claim is cut to the bound before credits are settled.
CREATE FUNCTION infernet_usage_bounds(request jsonb, result jsonb, OUT prompt_cap bigint, OUT completion_cap bigint)
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT octet_length(request::text)::bigint + 64
               + 8 * COALESCE(jsonb_array_length(jsonb_path_query_array(request, '$.messages[*]')), 0)
               + 1024 * COALESCE(jsonb_array_length(jsonb_path_query_array(request, '$.messages[*].images[*]')), 0),
           LEAST(CASE WHEN jsonb_typeof(request #> '{params,max_tokens}') = 'number'
                      THEN floor((request #>> '{params,max_tokens}')::numeric)::bigint ELSE 512 END,
                 octet_length(COALESCE(result ->> 'content', ''))::bigint
                     + COALESCE(octet_length((result -> 'tool_calls')::text), 0) + 1)
$$;

CREATE FUNCTION infernet_check_usage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    b record;
BEGIN
    IF NEW.result IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT * INTO b FROM infernet_usage_bounds(NEW.request, NEW.result);
    IF COALESCE(NEW.prompt_tokens, 0) > b.prompt_cap OR COALESCE(NEW.completion_tokens, 0) > b.completion_cap THEN
        NEW.prompt_tokens := LEAST(NEW.prompt_tokens, b.prompt_cap);
        NEW.completion_tokens := LEAST(NEW.completion_tokens, b.completion_cap);
        IF jsonb_typeof(NEW.result -> 'usage') = 'object' THEN
            NEW.result := jsonb_set(NEW.result, '{usage}', (NEW.result -> 'usage') || jsonb_build_object(
                'prompt_tokens', COALESCE(NEW.prompt_tokens, 0), 'completion_tokens', COALESCE(NEW.completion_tokens, 0)));
        END IF;
    END IF;
    RETURN NEW;
END $$;

-- Fires before jobs_settle_credits (triggers on one event fire in name order), so the charge uses the bounds.
CREATE TRIGGER jobs_check_usage BEFORE UPDATE OF status ON jobs FOR EACH ROW
    WHEN (OLD.status IN ('pending', 'processing') AND NEW.status = 'completed')
    EXECUTE FUNCTION infernet_check_usage();

-- One row per node that has any evidence. good/bad are weighted evidence already faded to decayed_at (unix
-- seconds); the counters are plain totals for operators and admins.
CREATE TABLE node_trust (
    node_id        text PRIMARY KEY,
    good           double precision NOT NULL DEFAULT 0,
    bad            double precision NOT NULL DEFAULT 0,
    decayed_at     double precision NOT NULL DEFAULT 0,
    quarantined    boolean NOT NULL DEFAULT false,
    checks_passed  bigint NOT NULL DEFAULT 0,
    checks_failed  bigint NOT NULL DEFAULT 0,
    probes_passed  bigint NOT NULL DEFAULT 0,
    probes_failed  bigint NOT NULL DEFAULT 0,
    usage_capped   bigint NOT NULL DEFAULT 0,
    errors         bigint NOT NULL DEFAULT 0,
    unanswered     bigint NOT NULL DEFAULT 0,
    served         bigint NOT NULL DEFAULT 0,
    -- model -> tokens/sec the control plane measured on the node's finished jobs
    measured_tps   jsonb NOT NULL DEFAULT '{}',
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX node_trust_updated ON node_trust (updated_at);

-- Spot checks that settle against a node take back its operator's payout for the job and return the user's
-- charge: once per job (a negative payout, a deposit carrying the job id).
CREATE UNIQUE INDEX credit_ledger_one_reversal ON credit_ledger (job_id) WHERE kind = 'payout' AND amount < 0;
CREATE UNIQUE INDEX credit_ledger_one_return ON credit_ledger (job_id) WHERE kind = 'deposit' AND job_id IS NOT NULL;

-- Payout holdback: an operator's payout is held (counted as reserved, so not yet available) for the window
-- the control plane sets here at start (INFERNET_PAYOUT_HOLDBACK_S), then released by a zero-amount payout
-- entry that frees the hold; a failed spot check inside the window reverses it before it was ever spendable.
CREATE TABLE payout_holdback (
    id    boolean PRIMARY KEY DEFAULT true CHECK (id),
    secs  double precision NOT NULL DEFAULT 0
);
INSERT INTO payout_holdback (secs) VALUES (0);

CREATE FUNCTION infernet_hold_payout() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.amount > 0 AND NEW.held = 0 AND (SELECT secs FROM payout_holdback) > 0 THEN
        NEW.held := NEW.amount;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER credit_ledger_hold_payout BEFORE INSERT ON credit_ledger FOR EACH ROW
    WHEN (NEW.kind = 'payout') EXECUTE FUNCTION infernet_hold_payout();
-- Held payouts waiting for their release (the release loop reads only these).
CREATE INDEX credit_ledger_held_payouts ON credit_ledger (created_at) WHERE kind = 'payout' AND held > 0;
CREATE UNIQUE INDEX credit_ledger_one_payout_release ON credit_ledger (job_id)
    WHERE kind = 'payout' AND amount = 0 AND held < 0;
