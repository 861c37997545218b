#!/usr/bin/env bash
# The static checks, in the order they fail fastest: ruff (lint, then formatting), mypy --strict on the package and
# the root modules (pyproject.toml [tool.mypy] files), and the import contracts (lint-imports). scripts/test.sh runs
# this before pytest, so CI does; .pre-commit-config.yaml runs the same commands. Sets up .venv when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements-dev.txt
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports --no-cache
