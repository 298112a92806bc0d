"""Models: what the network can serve right now (`/api/v1/models`)."""
