"""`domainlm serve`: an OpenAI-compatible API and web chat over the engine."""
