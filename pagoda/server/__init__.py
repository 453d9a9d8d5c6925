"""The OpenAI-compatible HTTP server (`pagoda serve`): FastAPI in this process, the engine in its own."""
