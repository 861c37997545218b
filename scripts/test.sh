#!/usr/bin/env bash
# Set up everything the tests need and run them: espeak-ng, haproxy, chromium, chromium-driver, postgresql (Debian),
# .venv with requirements-dev.txt, the test models (built by tests/support/build_test_models.py when missing).
# First the static checks (scripts/check.sh: ruff, mypy --strict, the import contracts), then pytest in two
# processes (pytest-xdist, a test file per process at a time). Extra arguments go to pytest (`-n 0`: one process;
# `-m "not e2e and not browser"`: the fast loop).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages the tests use: espeak-ng (speech fixtures), haproxy (tests/e2e/test_haproxy.py), chromium and
# chromium-driver (tests/browser/test_web_ui.py drives the browser page through Selenium; nothing is downloaded),
# postgresql (the jobs store's tests start a throwaway cluster of their own: tests/helpers.py throwaway_postgres).
missing=""
command -v espeak-ng >/dev/null 2>&1 || missing="$missing espeak-ng"
{ command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ]; } || missing="$missing haproxy"
[ -x /usr/bin/chromium ] || missing="$missing chromium"
[ -x /usr/bin/chromedriver ] || missing="$missing chromium-driver"
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$missing postgresql"
if [ -n "$missing" ]; then
  echo "test: installing$missing (Debian packages)" >&2
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq $missing >/dev/null
fi
scripts/check.sh
exec .venv/bin/python -m pytest -n 2 --dist loadfile "$@"
