"""The Infernet control plane: HTTP API, accounts, jobs, placement over NATS."""
