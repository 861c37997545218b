"""The Parakeet-TDT transcription server's package, in three layers (README, "How it works"):

- `parakeet.core`: settings, the exception tree, transcript records, the engine contract; imports nothing
  else of the project.
- `parakeet.pipeline`: bytes to transcript (decoding, long-audio plan and merge, the batcher, the worker);
  no HTTP framework.
- `parakeet.api`: routes, the error table, middleware, response schemas; the only code that sees a request.

`server.py` at the repository root wires them; import-linter (pyproject.toml) enforces the direction.
"""

VERSION = "0.1.0"  # also FastAPI's version in server.py and pyproject.toml
