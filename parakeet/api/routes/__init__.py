"""The app's routers, one module per surface: /transcribe, /health, the OpenAI-compatible /v1 routes."""
