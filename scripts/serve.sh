#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and start the server: one uvicorn worker per visible GPU (one on a
# CPU-only machine), each claiming its GPU through gpu_lock.py. Extra arguments go to uvicorn.
#   PARAKEET_HOST (default 0.0.0.0), PARAKEET_PORT (8000), PARAKEET_WORKERS (default: GPU count, min 1);
#   every other PARAKEET_* setting is read by the workers (README, "Settings").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
if [ -z "${PARAKEET_WORKERS:-}" ]; then
  # Counted in a throwaway process: the uvicorn parent itself never imports torch.
  PARAKEET_WORKERS=$(.venv/bin/python -c 'import torch; print(max(1, torch.cuda.device_count()))')
fi
if [ -z "${PARAKEET_TORCH_THREADS:-}" ] && ! .venv/bin/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  # CPU only: share the cores between the workers instead of every worker using all of them.
  export PARAKEET_TORCH_THREADS=$(( $(nproc) / PARAKEET_WORKERS > 0 ? $(nproc) / PARAKEET_WORKERS : 1 ))
fi
echo "serve: ${PARAKEET_WORKERS} worker(s) on ${PARAKEET_HOST:-0.0.0.0}:${PARAKEET_PORT:-8000}, model ${PARAKEET_MODEL:-nvidia/parakeet-tdt-0.6b-v3}" >&2
exec .venv/bin/python -m uvicorn server:app \
  --host "${PARAKEET_HOST:-0.0.0.0}" --port "${PARAKEET_PORT:-8000}" \
  --workers "$PARAKEET_WORKERS" --timeout-worker-healthcheck 60 --timeout-graceful-shutdown 30 "$@"
