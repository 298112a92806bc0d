"""The OpenAI-compatible API under /v1: chat completions (streamed and not), models, embeddings."""
