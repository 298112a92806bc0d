-- When the current attempt was handed to its node: lets replicas notice attempts a live node does not hold.
ALTER TABLE jobs ADD COLUMN assigned_at timestamptz;
