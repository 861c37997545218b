"""`POST /transcribe`: one multipart upload (`file`, optional `timestamps`), or a JSON body with the audio as base64
or a URL (parakeet.api.json_input) -> the transcript and its timings."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request, Response

from parakeet.api.deps import WorkerDep
from parakeet.api.errors import request_id
from parakeet.api.json_input import is_json, read_json_audio
from parakeet.api.schemas import ErrorResponse, SpeakersOut, Timestamps, TranscriptionResponse
from parakeet.api.uploads import (
    declared_body_bytes,
    disconnect_watcher,
    form_bool,
    form_file,
    form_keywords,
    form_text,
    multipart_form,
    read_file,
    record_outcome,
    timing_headers,
)
from parakeet.pipeline.requests import Outcome, TranscribeOptions

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
                        "confidence": {"type": "boolean", "description": "word/token confidence and logprobs"},
                    },
                }
            },
        },
    }
}


async def _read_multipart(
    request: Request, extra_fields: tuple[str, ...] = ()
) -> tuple[bytes, TranscribeOptions, dict[str, Any]]:
    async with multipart_form(request) as form:
        part = form_file(form)
        timestamps = form_bool(form, "timestamps") or form_bool(form, "include_timestamps")
        confidence = form_bool(form, "confidence")
        diarize = form_bool(form, "diarize")
        form_bool(form, "should_chunk")  # accepted (checked), ignored: long audio is always chunked
        keywords = form_keywords(form)
        options = TranscribeOptions(timestamps=timestamps, confidence=confidence, keywords=keywords, diarize=diarize)
        extras = {name: value for name in extra_fields if (value := form_text(form, name)) is not None}
        return await read_file(part), options, extras


async def _read_json(
    request: Request, max_bytes: int, extra_fields: tuple[str, ...]
) -> tuple[bytes, TranscribeOptions, str, dict[str, Any]]:
    data, body = await read_json_audio(request, request.app.state.url_policy, max_bytes, extra_fields)
    options = TranscribeOptions(
        timestamps=body.timestamps, confidence=body.confidence, keywords=body.keywords, diarize=body.diarize
    )
    return data, options, body.field, body.extras


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
    async with worker.request(declared_bytes=declared, disconnected=disconnect_watcher(request)) as job:
        options, field, _ = await job.receive(read_body_with(request, worker.settings.max_upload_bytes, ()))
        outcome = await job.transcribe(options, audio_param=field)
    record_outcome(request, outcome, worker.gpu_id)
    response.headers.update(timing_headers(outcome, worker.gpu_id))
    return transcription_response(
        outcome, options, request_id=request_id(request), processing_ms=(time.perf_counter() - t0) * 1000,
        gpu_id=worker.gpu_id,
    )  # fmt: skip


async def read_body_with(
    request: Request, max_bytes: int, extra_fields: tuple[str, ...]
) -> tuple[bytes, tuple[TranscribeOptions, str, dict[str, Any]]]:
    """The audio and options of a `POST /transcribe`-shaped request (multipart or JSON), the field the audio came
    in, and the values of `extra_fields` as sent (form text, or JSON values). Raises: as the two readers (README
    "Errors")."""
    if is_json(request):
        data, options, field, extras = await _read_json(request, max_bytes, extra_fields)
        return data, (options, field, extras)
    data, options, extras = await _read_multipart(request, extra_fields)
    return data, (options, "file", extras)


def transcription_response(
    outcome: Outcome, options: TranscribeOptions, *, request_id: str, processing_ms: float, gpu_id: int | None
) -> TranscriptionResponse:
    """The `POST /transcribe` body of a finished request (timestamps when `options` asked for them)."""
    t = outcome.transcript
    return TranscriptionResponse(
        text=t.text,
        duration_sec=round(outcome.audio.duration_s, 4),
        processing_time_ms=round(processing_ms, 2),
        gpu_id=gpu_id,
        model=outcome.model,
        request_id=request_id,
        decode_ms=round(outcome.decode_ms, 2),
        queue_ms=round(outcome.queue_ms, 2),
        compute_ms=round(outcome.compute_ms, 2),
        batch_size=outcome.batch_size,
        chunks=outcome.chunks,
        source_sample_rate_hz=outcome.audio.source_sample_rate_hz,
        source_channels=outcome.audio.source_channels,
        timestamps=Timestamps.of(t, outcome.speakers) if options.word_times else None,
        speakers=SpeakersOut.of(outcome.speakers) if outcome.speakers is not None else None,
    )
