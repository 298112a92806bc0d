-- Credits: an append-only ledger, rollups that keep balance reads cheap, model prices, key settings,
-- and the trigger that settles a job's credits in the same statement that ends the job.
--
-- Every amount is a whole number of credits (bigint); nothing is ever rounded through a float.
-- Each ledger entry moves two figures of its account:
--   amount  the change to the balance     (deposit +, charge -, payout +)
--   held    the change to what is reserved (reserve +, charge -, release -, refund -)
-- balance = sum(amount), reserved = sum(held), available = balance - reserved.

ALTER TABLE api_keys
    ADD COLUMN model_pool     text[],
    ADD COLUMN optimize_mode  text NOT NULL DEFAULT 'balanced'
                              CHECK (optimize_mode IN ('balanced', 'quality', 'cost', 'latency')),
    ADD COLUMN rate_limit_rpm integer CHECK (rate_limit_rpm > 0),
    ADD COLUMN rate_limit_tpm integer CHECK (rate_limit_tpm > 0);

ALTER TABLE jobs ADD COLUMN credits_charged bigint;
-- Operators' "jobs served" per node.
CREATE INDEX jobs_node_completed ON jobs (node_id) WHERE status = 'completed';

CREATE TABLE model_prices (
    model            text PRIMARY KEY,
    input_per_mtok   bigint NOT NULL CHECK (input_per_mtok BETWEEN 0 AND 1000000000000),
    output_per_mtok  bigint NOT NULL CHECK (output_per_mtok BETWEEN 0 AND 1000000000000),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE credit_ledger (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id          text NOT NULL REFERENCES accounts (id),
    kind                text NOT NULL
                        CHECK (kind IN ('deposit', 'reserve', 'charge', 'release', 'refund', 'payout')),
    amount              bigint NOT NULL DEFAULT 0,
    held                bigint NOT NULL DEFAULT 0,
    job_id              text,
    node_id             text,
    api_key_id          text,
    -- The terms a job was accepted under (reserve entries only): prices per 1M tokens, operator share.
    price_input         bigint,
    price_output        bigint,
    operator_share_bps  integer,
    note                text,
    -- The inserting transaction: rollups only fold in entries of transactions that have finished.
    txid                xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_account_txid ON credit_ledger (account_id, txid) INCLUDE (amount, held);
CREATE INDEX credit_ledger_txid ON credit_ledger (txid) INCLUDE (account_id, amount, held);
CREATE INDEX credit_ledger_account_id ON credit_ledger (account_id, id DESC);
-- A job reserves once, and its reservation is closed (released or refunded) once.
CREATE UNIQUE INDEX credit_ledger_one_reserve ON credit_ledger (job_id) WHERE kind = 'reserve';
CREATE UNIQUE INDEX credit_ledger_one_close ON credit_ledger (job_id) WHERE kind IN ('release', 'refund');

CREATE FUNCTION infernet_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'credit_ledger is append-only: % refused; post a correcting entry instead', TG_OP;
END $$;
CREATE TRIGGER credit_ledger_append_only BEFORE UPDATE OR DELETE ON credit_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION infernet_ledger_append_only();

-- Per-account sums of every entry whose transaction id is below the global horizon; a balance is its rollup
-- plus the entries at or above the horizon. Advanced every few seconds, never per request.
CREATE TABLE credit_rollup_state (
    id       boolean PRIMARY KEY DEFAULT true CHECK (id),
    horizon  xid8 NOT NULL,
    rolled_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO credit_rollup_state (horizon) VALUES ('0');

CREATE TABLE credit_rollups (
    account_id  text PRIMARY KEY REFERENCES accounts (id),
    balance     bigint NOT NULL,
    held        bigint NOT NULL
);

-- The cost of tokens at prices per 1M tokens, rounded up to a whole credit.
CREATE FUNCTION infernet_credit_cost(prompt_tokens bigint, completion_tokens bigint,
                                     price_input bigint, price_output bigint)
RETURNS bigint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ceil((prompt_tokens::numeric * price_input + completion_tokens::numeric * price_output)
                / 1000000)::bigint
$$;

-- Settles a job when it ends: completed -> charge the tokens used (never more than was reserved), release
-- the rest, pay the node's operator its share; failed or cancelled -> refund the whole reservation.
CREATE FUNCTION infernet_settle_job() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    hold     credit_ledger%ROWTYPE;
    charged  bigint := 0;
    operator text;
BEGIN
    SELECT * INTO hold FROM credit_ledger WHERE job_id = NEW.id AND kind = 'reserve';
    IF NOT FOUND THEN
        RETURN NEW;  -- a job from before credits existed
    END IF;
    IF NEW.status = 'completed' THEN
        charged := LEAST(hold.held, infernet_credit_cost(COALESCE(NEW.prompt_tokens, 0),
                                                         COALESCE(NEW.completion_tokens, 0),
                                                         hold.price_input, hold.price_output));
        INSERT INTO credit_ledger (account_id, kind, amount, held, job_id, node_id, api_key_id) VALUES
            (NEW.account_id, 'charge', -charged, -charged, NEW.id, NEW.node_id, NEW.api_key_id),
            (NEW.account_id, 'release', 0, -(hold.held - charged), NEW.id, NEW.node_id, NEW.api_key_id);
        SELECT operator_account_id INTO operator FROM nodes WHERE id = NEW.node_id;
        IF operator IS NOT NULL THEN
            INSERT INTO credit_ledger (account_id, kind, amount, job_id, node_id)
            VALUES (operator, 'payout', charged * hold.operator_share_bps / 10000, NEW.id, NEW.node_id);
        END IF;
    ELSE
        INSERT INTO credit_ledger (account_id, kind, held, job_id, node_id, api_key_id, note)
        VALUES (NEW.account_id, 'refund', -hold.held, NEW.id, NEW.node_id, NEW.api_key_id, NEW.error);
    END IF;
    NEW.credits_charged := charged;
    RETURN NEW;
END $$;

CREATE TRIGGER jobs_settle_credits BEFORE UPDATE OF status ON jobs FOR EACH ROW
    WHEN (OLD.status IN ('pending', 'processing') AND NEW.status IN ('completed', 'failed', 'cancelled'))
    EXECUTE FUNCTION infernet_settle_job();

-- Accounts that existed before credits start with the default sign-up grant, so nothing breaks on upgrade.
INSERT INTO credit_ledger (account_id, kind, amount, note)
SELECT id, 'deposit', 10000000, 'grant on upgrade to credits' FROM accounts;
