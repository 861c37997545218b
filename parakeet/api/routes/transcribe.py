"""`POST /transcribe`: one multipart upload (`file`, optional `timestamps`) -> the transcript and its timings."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from parakeet.api.deps import WorkerDep
from parakeet.api.errors import request_id
from parakeet.api.schemas import ErrorResponse, Timestamps, TranscriptionResponse
from parakeet.api.uploads import (
    form_bool,
    form_file,
    multipart_form,
    read_file,
    record_outcome,
    timing_headers,
    transcribe_upload,
)

router = APIRouter()

_MULTIPART_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "timestamps": {"type": "boolean", "default": False},
                    },
                }
            }
        },
    }
}


@router.post(
    "/transcribe",
    response_model=TranscriptionResponse,
    responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}},
    openapi_extra=_MULTIPART_BODY,
)
async def transcribe(request: Request, response: Response, worker: WorkerDep) -> TranscriptionResponse:
    """Transcribe one uploaded audio file (multipart field `file`; optional `timestamps=true`)."""
    t0 = time.perf_counter()
    with worker.admitted() as ticket:  # 429/503 before a byte of the upload is read
        async with multipart_form(request) as form:
            part = form_file(form)
            want_timestamps = form_bool(form, "timestamps")
            upload = await read_file(part)
        outcome = await transcribe_upload(request, worker, ticket, upload, timestamps=want_timestamps)
    record_outcome(request, outcome, worker.gpu_id)
    response.headers.update(timing_headers(outcome, worker.gpu_id))
    t = outcome.transcript
    return TranscriptionResponse(
        text=t.text,
        duration_sec=round(outcome.audio.duration_s, 4),
        processing_time_ms=round((time.perf_counter() - t0) * 1000, 2),
        gpu_id=worker.gpu_id,
        model=outcome.model,
        request_id=request_id(request),
        decode_ms=round(outcome.decode_ms, 2),
        queue_ms=round(outcome.queue_ms, 2),
        compute_ms=round(outcome.compute_ms, 2),
        batch_size=outcome.batch_size,
        chunks=outcome.chunks,
        source_sample_rate_hz=outcome.audio.source_sample_rate_hz,
        source_channels=outcome.audio.source_channels,
        timestamps=Timestamps.of(t) if want_timestamps else None,
    )
