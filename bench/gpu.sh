#!/usr/bin/env bash
# The prepared GPU benchmark, one command of at most ~8 minutes on one H100/H200 (bench/gpu.py has the
# steps; BENCHMARKS.md "GPU serving" the results and how they were run).
#
#   On a CPU machine with PyPI and espeak-ng, once:
#     bash ../shared/tools/gpu-wheels.sh          # the wheels a bare GPU machine lacks, into .whl/
#     bench/gpu.sh --prepare build/gpu_bench   # speech, clips, architecture and tokenizer
#   On the GPU machine (carry .whl and build/gpu_bench):
#     bench/gpu.sh build/gpu_bench OUT_DIR
#
# Without a CUDA GPU it prints one line saying so and exits 2, having measured nothing.
# `bench/gpu.sh --dry-run PREPARED OUT` runs the same steps on the CPU, tiny, to check them first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--prepare" ]; then
  dest=$(realpath -m "${2:?usage: bench/gpu.sh --prepare DIR}")
  mkdir -p "$dest"
  rm -f "$dest/speech.npz"
  SPEECH_RECORD="$dest/speech.npz" exec .venv/bin/python -m bench gpu prepare "$dest" "${@:3}"
fi
dry=()
if [ "${1:-}" = "--dry-run" ]; then dry=(--dry-run); shift; fi
prepared=${1:?usage: bench/gpu.sh PREPARED_DIR OUT_DIR (or --prepare DIR)}
out=${2:?usage: bench/gpu.sh PREPARED_DIR OUT_DIR}
if [ -x .venv/bin/python ]; then
  py=.venv/bin/python
else  # a bare GPU machine: its image has torch; the rest comes as wheels (gpu-wheels.sh)
  py=python3
  if ls .whl/*.whl >/dev/null 2>&1; then
    site=/tmp/bench_gpu_site
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  fi
fi
if [ ${#dry[@]} -eq 0 ] && ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "bench_gpu.sh: no CUDA GPU is visible to torch (torch.cuda.is_available() is False): nothing measured" >&2
  exit 2
fi
[ -f "$prepared/speech.npz" ] && [ -d "$prepared/clips" ] || {
  echo "bench_gpu.sh: $prepared is not prepared (run bench/gpu.sh --prepare $prepared on a CPU machine)" >&2
  exit 2
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || true
exec "$py" bench/gpu.py run "$prepared" "$out" "${dry[@]}"
