"""`POST /transcribe`: one multipart upload (`file`, optional `timestamps`), or a JSON body with the audio as base64
or a URL (parakeet.api.json_input) -> the transcript and its timings."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from parakeet.api.deps import WorkerDep
from parakeet.api.errors import request_id
from parakeet.api.json_input import is_json, read_json_audio
from parakeet.api.schemas import ErrorResponse, Timestamps, TranscriptionResponse
from parakeet.api.uploads import (
    UploadedFile,
    declared_body_bytes,
    form_bool,
    form_file,
    multipart_form,
    read_file,
    record_outcome,
    timing_headers,
    transcribe_upload,
)
from parakeet.core import errors
from parakeet.pipeline.worker import MemoryReservation, Worker

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
                        "include_timestamps": {"type": "boolean", "description": "alias of timestamps"},
                        "confidence": {"type": "boolean", "description": "word/token confidence and logprobs"},
                        "should_chunk": {
                            "type": "boolean",
                            "description": "accepted, ignored: long audio is "
                            "always chunked past PARAKEET_LONG_AUDIO_THRESHOLD_S",
                        },
                    },
                }
            },
            "application/json": {
                "schema": {
                    "type": "object",
                    "description": 'exactly one of audio_base64, audio_url; or the same wrapped as {"input": {...}}',
                    "properties": {
                        "audio_base64": {"type": "string", "description": "standard or URL-safe, data: prefix ok"},
                        "audio_url": {"type": "string", "description": "http(s); needs PARAKEET_URL_INPUT=true"},
                        "timestamps": {"type": "boolean", "default": False},
                        "timestamp": {"type": "boolean", "description": "alias of timestamps"},
                        "include_timestamps": {"type": "boolean", "description": "alias of timestamps"},
                    },
                }
            },
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
    """Transcribe one audio file: multipart field `file` (optional `timestamps=true`), or a JSON body with
    `audio_base64` or `audio_url` (README "JSON and URL input")."""
    t0 = time.perf_counter()
    declared = declared_body_bytes(request, worker.settings.max_upload_bytes)
    with worker.reserved_memory(declared) as memory:  # 429 before the body is read when over the budget
        return await _transcribe(request, response, worker, memory, t0)


async def _transcribe(
    request: Request, response: Response, worker: Worker, memory: MemoryReservation, t0: float
) -> TranscriptionResponse:
    with worker.receiving():  # 429/503 before a byte of the upload is read when the worker is full
        if is_json(request):
            settings = worker.settings
            body = await read_json_audio(request, request.app.state.url_policy, settings.max_upload_bytes)
            upload, want_timestamps, field = UploadedFile(body.data), body.timestamps, body.field
            want_confidence = body.confidence
        else:
            field = "file"
            async with multipart_form(request) as form:
                part = form_file(form)
                want_timestamps = form_bool(form, "timestamps") or form_bool(form, "include_timestamps")
                want_confidence = form_bool(form, "confidence")
                form_bool(form, "should_chunk")  # accepted (checked), ignored: long audio is always chunked
                upload = await read_file(part)
    with worker.admitted() as ticket:  # the GPU queue: taken once the audio is in hand
        try:
            outcome = await transcribe_upload(
                request, worker, ticket, upload, timestamps=want_timestamps, confidence=want_confidence, memory=memory
            )
        except errors.AudioError as exc:
            exc.param = field  # the JSON field the audio came in
            raise
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
        timestamps=Timestamps.of(t) if want_timestamps or want_confidence else None,
    )
