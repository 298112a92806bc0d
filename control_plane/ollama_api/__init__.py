"""The network as one Ollama: Ollama's API (/api/chat, /api/generate, /api/embed, /api/tags ...) over jobs."""
