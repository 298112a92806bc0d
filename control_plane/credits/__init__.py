"""Credits: prices, the append-only ledger, reservations, settlement, usage and operator earnings."""
