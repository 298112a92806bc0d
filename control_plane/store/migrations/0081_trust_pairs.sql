-- Spot checks of sampled jobs run as pairs (a replay and a check); whichever finishes last settles the pair,
-- and this row makes sure only one replica does.
CREATE TABLE trust_settlements (
    key         text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
