"""`GET /health`: the worker's state, load and device; 200 when ready, else 503 + Retry-After (same body).
It reads counters only, so it never waits behind the GPU."""

from __future__ import annotations

import os
import time

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from parakeet.api.deps import WorkerDep
from parakeet.api.errors import RETRY_AFTER_LOADING_S
from parakeet.api.schemas import DeviceInfo, HealthResponse

router = APIRouter()


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(worker: WorkerDep) -> JSONResponse:
    """This worker's health (each request reaches one worker, chosen by the kernel)."""
    batcher = worker.batcher
    stats = batcher.stats if batcher is not None else None
    body = HealthResponse(
        status=worker.phase,
        ready=worker.ready,
        model=worker.settings.model,
        gpu_id=worker.gpu_id,
        device=DeviceInfo.model_validate(worker.device_info) if worker.device_info else None,
        worker_pid=os.getpid(),
        uptime_s=round(time.monotonic() - worker.started_at, 3),
        requests_served=worker.requests_served,
        queued_requests=batcher.queued_requests if batcher else 0,
        queued_audio_s=round(batcher.queued_audio_s, 3) if batcher else 0.0,
        mean_batch_size=_mean(stats.batch_sizes) if stats else None,
        batches=stats.batches if stats else 0,
        dropped_requests=stats.cancelled + stats.expired if stats else 0,
        failed_batches=stats.failed_batches if stats else 0,
        detail=worker.detail,
    )
    headers = {} if worker.ready else {"Retry-After": str(RETRY_AFTER_LOADING_S)}
    return JSONResponse(body.model_dump(), status_code=200 if worker.ready else 503, headers=headers)
