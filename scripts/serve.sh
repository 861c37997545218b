#!/usr/bin/env bash
# Set up .venv (scripts/setup.sh) and start the server: PARAKEET_WORKERS_PER_GPU (default 1) uvicorn workers per
# visible GPU (that many on a CPU-only machine), each claiming a (GPU, slot) through gpu_lock.py. Extra arguments
# go to uvicorn and win over the defaults here: `scripts/serve.sh --port 9000`, `--workers 3`.
#   PARAKEET_HOST (default 0.0.0.0); WEB_CONCURRENCY (uvicorn's own: the workers; default GPUs x workers per GPU);
#   on a CPU, OMP_NUM_THREADS (default: the cores shared between the workers); every other PARAKEET_* setting is
#   read by the workers (README, "Settings").
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh requirements.txt
# Refuse bad PARAKEET_* values here, with one line naming each, rather than in every worker.
.venv/bin/python -m parakeet.core.settings >/dev/null
# GPUs are counted in a throwaway process: the uvicorn parent itself never imports torch.
gpus=$(.venv/bin/python -c 'import torch; print(torch.cuda.device_count())')
per_gpu=${PARAKEET_WORKERS_PER_GPU:-1}
port=8000
args=("$@")
for i in "${!args[@]}"; do  # the workers and the port uvicorn will use (the last --workers / --port given wins)
  case "${args[$i]}" in
    --workers) export WEB_CONCURRENCY=${args[$((i + 1))]} ;;
    --workers=*) export WEB_CONCURRENCY=${args[$i]#--workers=} ;;
    --port) port=${args[$((i + 1))]} ;;
    --port=*) port=${args[$i]#--port=} ;;
  esac
done
# The workers size their decoder pools from the cores per worker (README "Settings"): they read WEB_CONCURRENCY.
export WEB_CONCURRENCY=${WEB_CONCURRENCY:-$(( (gpus > 0 ? gpus : 1) * per_gpu ))}
workers=$WEB_CONCURRENCY
if [ "$gpus" -eq 0 ] && [ -z "${OMP_NUM_THREADS:-}" ]; then
  # CPU only: share the cores between the workers instead of every worker using all of them (torch reads it).
  cores=$(nproc)
  export OMP_NUM_THREADS=$(( cores / workers > 0 ? cores / workers : 1 ))
fi
# Prometheus multiprocess mode: one scrape of /metrics sees every worker. The folder is emptied at each start
# (a previous run's values must not leak in); workers remove the live gauges of dead workers themselves.
export PROMETHEUS_MULTIPROC_DIR=${PROMETHEUS_MULTIPROC_DIR:-/tmp/parakeet_metrics_$port}
mkdir -p "$PROMETHEUS_MULTIPROC_DIR"
find "$PROMETHEUS_MULTIPROC_DIR" -maxdepth 1 -name '*.db' -delete
echo "serve: $workers worker(s) on ${PARAKEET_HOST:-0.0.0.0}:$port, $gpus GPU(s) x $per_gpu per GPU," \
  "model ${PARAKEET_MODEL:-nvidia/parakeet-tdt-0.6b-v3}" >&2
# JSON logs: uvicorn's supervisor (which never imports the app) logs through the same formatter as the workers.
log_args=()
[ "${PARAKEET_LOG_FORMAT:-text}" = json ] && log_args=(--log-config scripts/uvicorn-log-json.json)
exec .venv/bin/python -m uvicorn server:app "${log_args[@]}" \
  --host "${PARAKEET_HOST:-0.0.0.0}" --port 8000 \
  --workers "$workers" --timeout-worker-healthcheck 60 --timeout-graceful-shutdown 30 "$@"
