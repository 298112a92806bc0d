-- Model claims verified by measurement. A node's registration names the models an admin trusts it with
-- (nodes.models: glob patterns, '*' for any); a model it advertises outside them is served only once the control
-- plane has measured it: a known-answer probe against a node already trusted or verified for the model agreed.
-- One row per (node, model) claim the control plane set out to measure; shared by every replica and kept across
-- restarts. A node registered before this migration without patterns (then: any model) now has its claims
-- measured; an admin restores blind trust with `infernet-control-plane nodes set-models NODE --model '*'`.
CREATE TABLE node_model_claims (
    node_id           text        NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    model             text        NOT NULL,
    state             text        NOT NULL CHECK (state IN ('pending', 'verified', 'failed')),
    -- measurements started for this claim; the wait before the next one doubles with each
    attempts          integer     NOT NULL DEFAULT 1,
    reference_node_id text,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (node_id, model)
);
CREATE INDEX node_model_claims_updated ON node_model_claims (updated_at);
