-- Node identities on the bus: a revoked node is refused by the auth callout and disconnected; the slots a
-- node may claim are bounded by its registration.
ALTER TABLE nodes ADD COLUMN revoked_at timestamptz;
ALTER TABLE nodes ADD COLUMN max_slots integer NOT NULL DEFAULT 16 CHECK (max_slots > 0);
-- Glob patterns of the models the node may serve (NULL: any model its engine lists).
ALTER TABLE nodes ADD COLUMN models text[];
