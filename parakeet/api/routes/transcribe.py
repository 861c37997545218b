"""`POST /transcribe`: one multipart upload (`file`, optional `timestamps`), or a JSON body with the audio as base64
or a URL (parakeet.api.json_input) -> the transcript and its timings."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, Response

from parakeet.api.bodies import read_body_with
from parakeet.api.deps import UrlPolicyDep, WorkerDep
from parakeet.api.errors import request_id
from parakeet.api.formats import transcription_response
from parakeet.api.schemas import ErrorResponse, TranscriptionResponse
from parakeet.api.uploads import (
    declared_body_bytes,
    disconnect_watcher,
    record_outcome,
    timing_headers,
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
                        "include_timestamps": {"type": "boolean", "description": "alias of timestamps"},
                        "confidence": {"type": "boolean", "description": "word/token confidence and logprobs"},
                        "diarize": {"type": "boolean", "description": "speakers (PARAKEET_DIARIZATION_MODEL)"},
                        "should_chunk": {
                            "type": "boolean",
                            "description": "accepted, ignored: long audio is "
                            'always chunked past 180 s (README "Long audio")',
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
                        "confidence": {"type": "boolean", "description": "word/token confidence and logprobs"},
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
async def transcribe(
    request: Request, response: Response, worker: WorkerDep, policy: UrlPolicyDep
) -> TranscriptionResponse:
    """Transcribe one audio file: multipart field `file` (optional `timestamps=true`), or a JSON body with
    `audio_base64` or `audio_url` (README "JSON and URL input")."""
    t0 = time.perf_counter()
    declared = declared_body_bytes(request, worker.settings.max_upload_bytes)
    async with worker.request(declared_bytes=declared, disconnected=disconnect_watcher(request)) as job:
        options, field, _ = await job.receive(read_body_with(request, policy, worker.settings.max_upload_bytes, ()))
        outcome = await job.transcribe(options, audio_param=field)
    record_outcome(request, outcome, worker.gpu_id)
    response.headers.update(timing_headers(outcome, worker.gpu_id))
    return transcription_response(
        outcome, options, request_id=request_id(request), processing_ms=(time.perf_counter() - t0) * 1000,
        gpu_id=worker.gpu_id,
    )  # fmt: skip
