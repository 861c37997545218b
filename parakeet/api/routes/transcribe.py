"""`POST /transcribe`: one multipart upload (`file`, optional `timestamps`), or a JSON body with the audio as base64
or a URL (parakeet.api.json_input) -> the transcript and its timings."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from parakeet.api.bodies import read_body_with
from parakeet.api.deps import UrlPolicyDep, WorkerDep
from parakeet.api.errors import request_id
from parakeet.api.formats import transcription_response
from parakeet.api.options import openapi_request_body
from parakeet.api.schemas import ErrorResponse, TranscriptionResponse
from parakeet.api.uploads import (
    declared_body_bytes,
    disconnect_watcher,
    record_outcome,
    timing_headers,
)

router = APIRouter()


@router.post(
    "/transcribe",
    response_model=TranscriptionResponse,
    responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}},
    openapi_extra=openapi_request_body(),
)
async def transcribe(
    request: Request, response: Response, worker: WorkerDep, policy: UrlPolicyDep
) -> TranscriptionResponse:
    """Transcribe one audio file: multipart field `file` (optional `timestamps=true`), or a JSON body with
    `audio_base64` or `audio_url` (README "JSON and URL input")."""
    t0 = time.perf_counter()
    declared = declared_body_bytes(request, worker.settings.max_upload_bytes)
    async with worker.request(declared_bytes=declared, disconnected=disconnect_watcher(request)) as lifecycle:
        options, field, _ = await lifecycle.receive(
            read_body_with(request, policy, worker.settings.max_upload_bytes, ())
        )
        outcome = await lifecycle.transcribe(options, audio_param=field)
    record_outcome(request, outcome, worker.gpu_id)
    response.headers.update(timing_headers(outcome, worker.gpu_id))
    return transcription_response(
        outcome, options, request_id=request_id(request), processing_ms=(time.perf_counter() - t0) * 1000,
        gpu_id=worker.gpu_id,
    )  # fmt: skip
