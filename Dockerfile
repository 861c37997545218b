# Parakeet-TDT transcription server on an NVIDIA GPU. Build: docker build -t parakeet-server .
# Run:   docker run --gpus all -p 8000:8000 -v parakeet-hf:/data/hf --stop-timeout 75 parakeet-server
# (or compose.yaml). The image runs the README's own commands: scripts/setup.sh at build time installs
# requirements.txt into /app/.venv (torch's PyPI wheel brings its CUDA libraries, so the base image only
# needs the driver interface); scripts/serve.sh starts one uvicorn worker per visible GPU.
FROM nvidia/cuda:12.8.1-base-ubuntu24.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/data/hf \
    PARAKEET_DATA_DIR=/data/jobs \
    PARAKEET_HOST=0.0.0.0 \
    PARAKEET_LOG_FORMAT=json \
    PROMETHEUS_MULTIPROC_DIR=/tmp/parakeet_metrics

# Ubuntu's python3 follows the base image's release; pinning its exact Debian revision would break every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 parakeet \
    && mkdir -p /app /data/hf /data/jobs \
    && chown parakeet:parakeet /app /data/hf /data/jobs

WORKDIR /app
USER 10001:10001

# Dependencies first (a layer that changes only with requirements.txt), then the code.
COPY --chown=10001:10001 requirements.txt ./
COPY --chown=10001:10001 scripts/setup.sh scripts/
RUN scripts/setup.sh requirements.txt
COPY --chown=10001:10001 . .
# Idempotent: installs nothing unless COPY gave requirements.txt a newer time than the stamp above.
RUN scripts/setup.sh requirements.txt

# The model's Hugging Face cache lives on a volume: downloaded once, kept across containers.
VOLUME ["/data/hf", "/data/jobs"]
EXPOSE 8000

# Ready = model loaded and warm, not draining (README, "Probes").
HEALTHCHECK --interval=15s --timeout=5s --start-period=180s --retries=3 \
    CMD [".venv/bin/python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/health/ready', timeout=4).status == 200 else 1)"]

# serve.sh execs uvicorn, so uvicorn is PID 1 and gets SIGTERM; it drains admitted requests for up to
# PARAKEET_SHUTDOWN_DRAIN_S (30 s) after uvicorn's own 30 s graceful timeout: stop with -t 75 or more.
STOPSIGNAL SIGTERM
CMD ["scripts/serve.sh"]
