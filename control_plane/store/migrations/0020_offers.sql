-- Offers made for a job (every node it was offered to, accepted or not); `attempt` counts runs only.
ALTER TABLE jobs ADD COLUMN offers integer NOT NULL DEFAULT 0;
