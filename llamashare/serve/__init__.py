"""`llamashare serve`: the store's models behind OpenAI- and Ollama-compatible HTTP APIs."""
