#!/usr/bin/env bash
# Set up everything the tests need and run them: espeak-ng (Debian package, speech fixtures),
# .venv with requirements-dev.txt, the test models (built by scripts/build_test_models.py when missing).
# First the layer contracts (import-linter, pyproject.toml), then pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v espeak-ng >/dev/null 2>&1; then
  echo "test: installing espeak-ng (Debian package)" >&2
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq espeak-ng >/dev/null
fi
scripts/setup.sh requirements-dev.txt
.venv/bin/lint-imports --no-cache
exec .venv/bin/python -m pytest "$@"
