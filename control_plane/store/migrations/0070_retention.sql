-- Bounded storage: job content pruned after a retention period, old ledger entries folded into per-account
-- totals, ended webhook deliveries dropped.

-- When a job's prompts and outputs were removed (metadata, usage and cost stay on the row).
ALTER TABLE jobs ADD COLUMN content_pruned_at timestamptz;
-- Ended jobs whose content is still kept, oldest first: what the pruner walks (it shrinks as it prunes).
CREATE INDEX jobs_content_kept ON jobs (completed_at)
    WHERE content_pruned_at IS NULL AND status IN ('completed', 'failed', 'cancelled');

-- Per account: the sums of every ledger entry folded away (deleted after the retention period). For every
-- account at every moment:  balance = credit_rollups.balance + sum(entries at or above the rollup horizon)
-- and                       credit_rollups.balance = folded.amount + sum(entries below the horizon),
-- so folding never changes a balance (only entries already inside the rollups are folded).
CREATE TABLE credit_ledger_folded (
    account_id  text PRIMARY KEY REFERENCES accounts (id),
    amount      bigint NOT NULL,
    held        bigint NOT NULL,
    entries     bigint NOT NULL,
    through     timestamptz NOT NULL  -- the newest folded entry's created_at
);

-- Operators' earnings per node keep counting folded payouts.
CREATE TABLE credit_payouts_folded (
    account_id  text NOT NULL REFERENCES accounts (id),
    node_id     text NOT NULL,
    amount      bigint NOT NULL,
    PRIMARY KEY (account_id, node_id)
);

-- The ledger stays append-only for everyone but the folding transaction, which announces itself with a
-- transaction-local setting; even then, an entry not yet inside the rollups is never deleted.
CREATE OR REPLACE FUNCTION infernet_ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('infernet.ledger_fold', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'credit_ledger is append-only: % refused; post a correcting entry instead', TG_OP;
END $$;

CREATE FUNCTION infernet_ledger_fold_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.txid >= (SELECT horizon FROM credit_rollup_state) THEN
        RAISE EXCEPTION 'credit_ledger entry % is not inside the rollups yet: it cannot be folded', OLD.id;
    END IF;
    RETURN OLD;
END $$;
CREATE TRIGGER credit_ledger_fold_guard BEFORE DELETE ON credit_ledger
    FOR EACH ROW EXECUTE FUNCTION infernet_ledger_fold_guard();
