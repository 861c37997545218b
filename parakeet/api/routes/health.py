"""Health: `GET /health` (the worker's state, load and device; 200 when ready, else 503 + Retry-After, same
body) and the probes load balancers and Kubernetes call: liveness (`/health/live`, `/healthz`,
`/v1/health/live`) and readiness (`/health/ready`, `/readyz`, `/v1/health/ready`, NVIDIA NIM's paths).
They read counters only, so they never wait behind the GPU. Each answers for the one worker the kernel
handed the connection to."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from parakeet.api.deps import WorkerDep
from parakeet.api.errors import RETRY_AFTER_LOADING_S
from parakeet.api.schemas import DeviceInfo, HealthResponse, ProbeResponse

router = APIRouter()


def _mean(values: Sequence[int]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(worker: WorkerDep) -> JSONResponse:
    """This worker's health (each request reaches one worker, chosen by the kernel)."""
    snap = worker.snapshot()
    step_ms = sorted(snap.step_compute_ms)
    body = HealthResponse(
        status=snap.phase,
        ready=snap.ready,
        model=snap.model,
        diarization_model=snap.diarization_model,
        jobs=worker.settings.jobs,
        gpu_id=snap.gpu_id,
        gpu_slot=snap.gpu_slot,
        device=DeviceInfo.model_validate(snap.device) if snap.device else None,
        worker_pid=os.getpid(),
        uptime_s=round(snap.uptime_s, 3),
        requests_served=snap.requests_served,
        queued_requests=snap.queued_requests,
        uploads_in_progress=snap.uploads_in_progress,
        inflight_audio_bytes=snap.inflight_audio_bytes,
        queued_audio_s=round(snap.queued_audio_s, 3),
        mean_batch_size=_mean(snap.batch_sizes),
        batches=snap.batches,
        dropped_requests=snap.dropped_requests,
        failed_batches=snap.failed_batches,
        streams_open=snap.streams_open,
        streams_refused=snap.streams_refused,
        stream_steps=snap.stream_steps,
        mean_step_batch=_mean(snap.step_batch_sizes),
        step_compute_ms_p95=round(step_ms[int(0.95 * (len(step_ms) - 1))], 2) if step_ms else None,
        max_stream_lag_s=round(snap.max_stream_lag_s, 3),
        detail=snap.detail,
    )
    headers = {} if snap.ready else {"Retry-After": str(RETRY_AFTER_LOADING_S)}
    return JSONResponse(body.model_dump(), status_code=200 if snap.ready else 503, headers=headers)


def _probe(status: str, message: str, code: int, retry_after_s: int | None = None) -> JSONResponse:
    body = ProbeResponse(status=status, message=message, worker_pid=os.getpid())
    headers = {"Retry-After": str(retry_after_s)} if retry_after_s is not None else {}
    return JSONResponse(body.model_dump(), status_code=code, headers=headers)


_PROBE_DOC: dict[int | str, dict[str, Any]] = {200: {"model": ProbeResponse}}


@router.get("/health/live", response_model=ProbeResponse, responses=_PROBE_DOC)
@router.get("/healthz", response_model=ProbeResponse, include_in_schema=False)
@router.get("/v1/health/live", response_model=ProbeResponse, include_in_schema=False)
async def live(worker: WorkerDep) -> JSONResponse:
    """Liveness: 200 whenever the worker's event loop answers, also while the model loads or drains.
    (Aliases: /healthz, /v1/health/live.)"""
    return _probe("live", f"worker is live ({worker.phase})", 200)


@router.get("/health/ready", response_model=ProbeResponse, responses={503: {"model": ProbeResponse}, **_PROBE_DOC})
@router.get("/readyz", response_model=ProbeResponse, include_in_schema=False)
@router.get("/v1/health/ready", response_model=ProbeResponse, include_in_schema=False)
async def ready(request: Request, worker: WorkerDep) -> JSONResponse:
    """Readiness: 200 only when the model is loaded and warm and the worker is not draining; else 503 with
    Retry-After. (Aliases: /readyz, /v1/health/ready.)"""
    if worker.ready:
        return _probe("ready", f"model {worker.settings.model} is ready", 200)
    status = "draining" if worker.phase == "shutting_down" else "not_ready"
    request.state.error_code = "shutting_down" if status == "draining" else "not_ready"  # log line, metrics
    return _probe(status, worker.detail or worker.phase, 503, RETRY_AFTER_LOADING_S)
