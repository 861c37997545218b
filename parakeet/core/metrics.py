"""Prometheus metrics (prometheus-client), in multiprocess mode when PROMETHEUS_MULTIPROC_DIR is set (as
`scripts/serve.sh` does), so that one scrape of any worker sees every worker on the port.

Names follow Prometheus conventions (snake_case, `_total`, `_seconds`, `_bytes`) and the peers' metrics they
map to are in the README ("Operations"). In multiprocess mode prometheus-client keeps each worker's values in
memory-mapped files in that directory; live gauges of a worker that died without cleaning up (SIGKILL) are
removed by the next worker that starts (`sweep_dead_workers`). The directory must be emptied before the
server starts (serve.sh does) and the variable must be set before prometheus_client is imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

REQUESTS = Counter(
    "parakeet_requests_total", "Finished HTTP requests.", ["route", "status", "code"]
)  # code: the error code, or "ok"
REQUEST_DURATION = Histogram(
    "parakeet_request_duration_seconds", "End-to-end time of HTTP requests, s.", ["route"], buckets=_LATENCY_BUCKETS_S
)
QUEUE_WAIT = Histogram(
    "parakeet_queue_wait_seconds", "Time an item waited before its batch started, s.", buckets=_LATENCY_BUCKETS_S
)
DECODE = Histogram(
    "parakeet_decode_seconds", "Audio decoding and resampling per upload, s.", buckets=_LATENCY_BUCKETS_S
)
BATCH_COMPUTE = Histogram("parakeet_batch_compute_seconds", "Engine time per batch, s.", buckets=_LATENCY_BUCKETS_S)
BATCH_SIZE = Histogram("parakeet_batch_size", "Items per batch.", buckets=(1, 2, 4, 8, 16, 32, 64, 128))
AUDIO_DURATION = Histogram(
    "parakeet_audio_duration_seconds",
    "Duration of transcribed audio per request, s.",
    buckets=(1, 5, 15, 30, 60, 180, 600, 1800, 3600, 10800),
)
AUDIO_PROCESSED = Counter(
    "parakeet_audio_processed_seconds_total", "Audio transcribed, s (RTFx = rate / compute rate)."
)
REJECTED = Counter(
    "parakeet_rejected_total",
    "Requests refused or dropped by the server's own limits.",
    ["reason"],  # queue_full, deadline, shutting_down, oom, client_gone
)
REQUESTS_WAITING = Gauge(
    "parakeet_requests_waiting", "Admitted requests not in a running batch.", multiprocess_mode="livesum"
)
REQUESTS_RUNNING = Gauge("parakeet_requests_running", "Items in the running batch.", multiprocess_mode="livesum")
QUEUE_AUDIO = Gauge("parakeet_queue_audio_seconds", "Audio waiting for or in the GPU, s.", multiprocess_mode="livesum")
BACKLOG = Gauge(
    "parakeet_backlog_seconds",
    "Queued audio / measured RTFx: seconds of work ahead (the autoscaling signal).",
    multiprocess_mode="livesum",
)
WORKER_READY = Gauge(
    "parakeet_worker_ready", "1 while this worker is ready (sum: ready workers).", multiprocess_mode="liveall"
)
WORKER_DRAINING = Gauge("parakeet_worker_draining", "Workers draining for shutdown.", multiprocess_mode="livesum")
GPU_MEMORY_USED = Gauge(
    "parakeet_gpu_memory_used_bytes", "Device memory in use on this worker's GPU, bytes.", ["gpu"],
    multiprocess_mode="liveall",
)  # fmt: skip
BUILD_INFO = Gauge(
    "parakeet_build_info", "Always 1 once the model is loaded; the labels describe the build and its decoder.",
    ["version", "model", "precision", "device", "cuda_graphs", "encoder"],
    multiprocess_mode="livemax",
)  # fmt: skip

# Live streams (WebSocket /ws and /v1/realtime; parakeet/pipeline/stream_scheduler.py).
STREAMS_OPEN = Gauge("parakeet_streams_open", "Open live streams.", multiprocess_mode="livesum")
STREAMS_REFUSED = Counter("parakeet_streams_refused_total", "Streams refused at connect.", ["reason"])
STREAM_STEP_BATCH = Histogram(
    "parakeet_stream_step_batch_size", "Streams per streaming step.", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256)
)
STREAM_STEP_COMPUTE = Histogram(
    "parakeet_stream_step_seconds", "Engine time per streaming step, s.", buckets=_LATENCY_BUCKETS_S
)
STREAM_AUDIO = Counter("parakeet_stream_audio_seconds_total", "Audio received on live streams, s.")

# Transcription jobs (parakeet/jobs/runner.py). The counts come from the shared database: every worker
# reports the same numbers, so the gauge keeps the largest (one host's or one cluster's jobs, not a sum).
JOBS = Gauge("parakeet_jobs", "Jobs in the jobs database, by status.", ["status"], multiprocess_mode="livemax")
JOB_DURATION = Histogram(
    "parakeet_job_duration_seconds",
    "A job from its first start to its end, s.",
    buckets=(1, 5, 15, 60, 300, 900, 3600, 14400),
)
JOB_QUEUE_WAIT = Histogram(
    "parakeet_job_queue_wait_seconds",
    "A job from its submit to its first start, s.",
    buckets=(0.1, 1, 5, 15, 60, 300, 900, 3600),
)
WEBHOOK_ATTEMPTS = Counter(
    "parakeet_job_webhook_attempts_total", "Job webhook deliveries tried, by outcome.", ["outcome"]
)

# Speakers (parakeet/pipeline/diarization.py).
DIARIZATION_BATCH_SIZE = Histogram(
    "parakeet_diarization_batch_size", "Files per diarization batch.", buckets=(1, 2, 4, 8, 16, 32)
)
DIARIZATION_COMPUTE = Histogram(
    "parakeet_diarization_batch_seconds", "Time per diarization batch on the GPU thread, s.", buckets=_LATENCY_BUCKETS_S
)

REJECTION_REASONS = {
    "queue_full": "queue_full",
    "deadline_exceeded": "deadline",
    "shutting_down": "shutting_down",
    "device_out_of_memory": "oom",
    "client_closed_request": "client_gone",
    "request_timeout": "slow_body",
    "uploads_full": "uploads_full",
    "memory_full": "memory_full",
}


def multiprocess_dir() -> Path | None:
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def render() -> tuple[bytes, str]:
    """The exposition text for a scrape (every worker's values in multiprocess mode) and its content type."""
    if multiprocess_dir() is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def sweep_dead_workers() -> list[int]:
    """Drop the live-gauge files of workers that are no longer running (a SIGKILLed worker cannot clean up
    after itself). Returns their pids."""
    directory = multiprocess_dir()
    if directory is None or not directory.is_dir():
        return []
    pids = {int(m.group(1)) for p in directory.glob("gauge_live*_*.db") if (m := re.search(r"_(\d+)\.db$", p.name))}
    dead = [pid for pid in sorted(pids) if not _alive(pid)]
    for pid in dead:
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
    return dead


def mark_this_worker_gone() -> None:
    """At a clean shutdown: this worker's live gauges leave the scrape."""
    if multiprocess_dir() is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    """Running (a zombie awaiting its parent's wait() is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
