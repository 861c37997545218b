"""`GET /metrics` (and NIM's `/v1/metrics`): Prometheus exposition of every worker on the port when
PROMETHEUS_MULTIPROC_DIR is set (serve.sh sets it), else of the worker that answered. Open without an API key
(parakeet.api.middleware.PROBE_AND_METRICS_PATHS)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from parakeet.core import metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
@router.get("/v1/metrics", include_in_schema=False)
async def scrape() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
