#!/usr/bin/env bash
# Create ./.venv, install a pinned requirements file into it (default requirements.txt) and the project (editable).
# Idempotent: a second run with unchanged requirements installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
req=${1:-requirements.txt}
py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python >= 3.11 is required, found " + sys.version.split()[0])'
[ -x .venv/bin/python ] || "$py" -m venv .venv
stamp=".venv/.installed-$(basename "$req")"
if [ ! -f "$stamp" ] || [ "$req" -nt "$stamp" ] || [ requirements.txt -nt "$stamp" ]; then
  echo "setup: installing $req into .venv (first time: a few minutes)" >&2
  .venv/bin/python -m pip install --disable-pip-version-check -q -r "$req"
  touch "$stamp"
fi
# The project itself, editable (pyproject.toml): `server`, `inference`, `parakeet` and `bench` import from anywhere.
# (Absent in the Dockerfile's first, dependencies-only layer.)
if [ -f pyproject.toml ] && { [ ! -f .venv/.installed-project ] || [ pyproject.toml -nt .venv/.installed-project ]; }; then
  .venv/bin/python -m pip install --disable-pip-version-check -q --no-deps -e .
  touch .venv/.installed-project
fi
