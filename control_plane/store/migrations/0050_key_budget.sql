-- Keys minted by a non-admin key spend from the budget of the key that minted them (its root key), so minting
-- keys never multiplies an account's rate budget. NULL: the key has a budget of its own (admin-created keys).
ALTER TABLE api_keys ADD COLUMN budget_key_id text REFERENCES api_keys (id);
