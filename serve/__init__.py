"""The FastAPI server (OpenAI- and Nebula-compatible). Top layer: nothing imports it."""
