"""OpenAI-compatible routes: POST /v1/audio/transcriptions, GET /v1/models, POST /v1/audio/translations.

Follows OpenAI's API reference for `audio.transcriptions.create`
(https://platform.openai.com/docs/api-reference/audio/createTranscription) and the official `openai` SDK's
types and request encoding: the multipart fields, the five response formats, word/segment granularities,
`stream` as server-sent events, and OpenAI's error envelope (shared with the rest of the server,
parakeet/api/errors.py). The pipeline itself is parakeet/pipeline/worker.py; this module parses fields and
formats outcomes.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import FormData

from parakeet.api.deps import WorkerDep
from parakeet.api.formats import MEDIA_TYPES, TranscriptionForm, diarized_json, formatted, logprobs, usage
from parakeet.api.options import form_key_phrases
from parakeet.api.subtitles import CueLimits
from parakeet.api.uploads import (
    declared_body_bytes,
    disconnect_watcher,
    form_bool,
    form_file,
    form_text,
    multipart_form,
    read_file,
    record_outcome,
    timing_headers,
)
from parakeet.core import errors
from parakeet.core.settings import Settings
from parakeet.pipeline.requests import Capabilities, Outcome, WordStream
from parakeet.pipeline.worker import Worker

router = APIRouter(prefix="/v1", tags=["openai"])

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json", "diarized_json")
GRANULARITIES = ("word", "segment")
# Model names that existing OpenAI client code sends; all are served by the one loaded model (openai-python
# `AudioModel`, late 2026). The diarizing one is served only with a diarization model (README "Speakers").
MODEL_ALIASES = ("whisper-1", "gpt-transcribe", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "parakeet-tdt-0.6b-v3")
DIARIZE_MODEL = "gpt-4o-transcribe-diarize"
# Dated snapshots of those, e.g. gpt-4o-mini-transcribe-2025-12-15.
DATED_ALIAS = re.compile(r"(gpt-transcribe|gpt-4o-transcribe|gpt-4o-mini-transcribe)-\d{4}-\d{2}-\d{2}")
# Fields of OpenAI's request this model cannot honour; accepted (checked to be text) and ignored (README).
IGNORED_FIELDS = ("prompt", "chunking_strategy", "languages", "known_speaker_names",
                  "known_speaker_references")  # fmt: skip
INCLUDE = ("logprobs",)


def served_model_id(model: str) -> str:
    """The id /v1/models lists: the hub id, or a local file's name without `.nemo`."""
    return Path(model).stem if model.endswith(".nemo") else model


def _model(form: FormData, accepted_models: set[str]) -> str:
    model = form_text(form, "model")
    if not model:
        raise errors.BadRequest("missing form field 'model'", param="model")
    if model not in accepted_models and not DATED_ALIAS.fullmatch(model):
        raise errors.BadRequest(
            f"model {model[:80]!r} is not served here; use one of {', '.join(sorted(accepted_models))}",
            param="model",
        )
    return model


def _number(form: FormData, name: str, default: float, low: float, high: float) -> float:
    """A numeric text field within [low, high] (absent: `default`).

    Raises:
        BadRequest: naming the field, the range and the value sent.
    """
    raw = form_text(form, name)
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not low <= value <= high:
        raise errors.BadRequest(f"{name} must be a number from {low:g} to {high:g}, got {raw[:40]!r}", param=name)
    return value


def _cue_limits(form: FormData) -> CueLimits:
    """The subtitle cue limits of an SRT/VTT request (extension fields; CueLimits' defaults otherwise)."""
    d = CueLimits()
    return CueLimits(
        max_line_chars=int(_number(form, "subtitle_max_line_chars", d.max_line_chars, 10, 200)),
        max_lines=int(_number(form, "subtitle_max_lines", d.max_lines, 1, 10)),
        max_cue_s=_number(form, "subtitle_max_cue_s", d.max_cue_s, 0.5, 60),
    )


def _check_text_fields(form: FormData) -> str | None:
    """The language code (checked), and the fields accepted and ignored, checked to be text.

    Raises:
        BadRequest: a language that is not an ISO-639-1 code, or an ignored field sent as a file.
    """
    _number(form, "temperature", 0.0, 0.0, 1.0)  # checked, not used: greedy decoding
    language = form_text(form, "language")
    if language is not None and not re.fullmatch(r"[a-z]{2}", language.strip().lower()):
        raise errors.BadRequest(
            f"language must be an ISO-639-1 code such as 'en', got {language[:40]!r}", param="language"
        )
    for name in IGNORED_FIELDS:  # greedy TDT decoding takes no prompt or speakers
        for key in (name, f"{name}[]"):
            for value in form.getlist(key):
                if not isinstance(value, str):
                    raise errors.BadRequest(f"form field '{name}' must be text, not a file", param=name)
    return language.strip().lower() if language else None


def _granularities(form: FormData, fmt: str) -> tuple[str, ...]:
    granularities: list[str] = []
    for key in ("timestamp_granularities[]", "timestamp_granularities"):
        for value in form.getlist(key):
            if not isinstance(value, str) or value not in GRANULARITIES:
                raise errors.BadRequest(
                    f"timestamp_granularities must be 'word' and/or 'segment', got {str(value)[:40]!r}",
                    param="timestamp_granularities",
                )
            granularities.append(value)
    if granularities and fmt != "verbose_json":
        raise errors.BadRequest(
            f"timestamp_granularities requires response_format 'verbose_json', got {fmt!r}",
            param="timestamp_granularities",
        )
    return tuple(dict.fromkeys(granularities))


def _logprobs(form: FormData, fmt: str) -> bool:
    include = [v for key in ("include[]", "include") for v in form.getlist(key)]
    for value in include:
        if not isinstance(value, str) or value not in INCLUDE:
            raise errors.BadRequest(f"include must be 'logprobs', got {str(value)[:40]!r}", param="include")
    if include and fmt not in ("json", "verbose_json"):
        raise errors.BadRequest(
            f"include[]=logprobs needs response_format json or verbose_json, got {fmt!r}", param="include"
        )
    return bool(include)


def parse_form(form: FormData, accepted_models: set[str], capabilities: Capabilities) -> TranscriptionForm:
    """Validate the OpenAI transcription fields (all but `file`) against what the worker can do (`capabilities`).

    Raises:
        BadRequest: naming the field, the accepted values and the value sent.
    """
    model = _model(form, accepted_models)
    fmt = (form_text(form, "response_format") or "json").strip()
    if fmt not in RESPONSE_FORMATS:
        raise errors.BadRequest(
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt[:40]!r}", param="response_format"
        )
    language = _check_text_fields(form)
    granularities = _granularities(form, fmt)
    logprobs = _logprobs(form, fmt)
    stream = form_bool(form, "stream")
    if stream and fmt not in ("json", "text", "diarized_json"):
        raise errors.BadRequest(
            f"stream is supported with response_format json, text or diarized_json, not {fmt!r}", param="stream"
        )
    keywords = form_key_phrases(form)
    diarize = _diarize(form, fmt, capabilities)
    return TranscriptionForm(
        model, language, fmt, granularities, stream, logprobs, _cue_limits(form), keywords, diarize
    )


def _diarize(form: FormData, fmt: str, capabilities: Capabilities) -> bool:
    """Whether the request wants speakers: `diarized_json`, or `diarize=true` (an extension) with srt, vtt or
    verbose_json.

    Raises:
        BadRequest: no diarization model (naming the setting), `diarize` with another format, known speakers.
    """
    asked = form_bool(form, "diarize")
    if asked and fmt not in ("srt", "vtt", "verbose_json", "diarized_json"):
        raise errors.BadRequest(
            f"diarize applies to srt, vtt and verbose_json, not {fmt!r} (or use response_format=diarized_json)",
            param="diarize",
        )
    if not (asked or fmt == "diarized_json"):
        return False
    capabilities.require_speakers("diarize" if asked else "response_format")
    _refuse_known_speakers(form)
    return True


def _refuse_known_speakers(form: FormData) -> None:
    """Naming speakers from reference clips is not implemented: refused, never silently ignored (the labels
    would look like names they are not)."""
    for name in ("known_speaker_names", "known_speaker_references"):
        if form.getlist(name) or form.getlist(f"{name}[]"):
            raise errors.BadRequest(
                f"{name} is not supported: speakers are labelled A, B, ... in order of first appearance",
                param=name,
            )


async def _diarized_sse(outcome: Outcome) -> AsyncIterator[bytes]:
    """`stream=true` with `diarized_json`: a `transcript.text.segment` event per speaker turn, then
    `transcript.text.done`. The turns are known once the whole file is diarized, so they all come at its end."""
    for segment in diarized_json(outcome)["segments"]:
        yield _event(segment)
    yield _event({"type": "transcript.text.done", "text": outcome.transcript.text})


def _event(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


async def _sse(request: Request, worker: Worker, words: WordStream, with_logprobs: bool) -> AsyncIterator[bytes]:
    """`stream=true`: `transcript.text.delta` per word, sent as each chunk of the audio is transcribed (the first
    delta of a long file comes after its first chunk, not after the whole file), then `transcript.text.done`
    (without `usage`: the spec types it as token usage only). Errors before the first delta were ordinary error
    responses; later ones end the stream with an `error` event. The request's resources are released when the
    stream ends (or the client leaves: Starlette cancels this generator, and queued chunks never reach the GPU)."""
    sent = 0
    try:
        async for batch in words:
            for word in batch:
                yield _event({"type": "transcript.text.delta", "delta": word.text if sent == 0 else " " + word.text})
                sent += 1
        outcome = await words.outcome()
        record_outcome(request, outcome, worker.gpu_id)
        done: dict[str, Any] = {"type": "transcript.text.done", "text": outcome.transcript.text}
        if with_logprobs:
            done["logprobs"] = logprobs(outcome.transcript)
        yield _event(done)
    except errors.ParakeetError as exc:
        yield _event({"type": "error", "error": {"message": exc.message, "type": "server_error", "code": exc.code}})
    finally:
        await words.aclose()


def render(outcome: Outcome, form: TranscriptionForm, headers: dict[str, str]) -> Response:
    if form.response_format == "json":
        t = outcome.transcript
        body = {"text": t.text, "usage": usage(outcome)} | ({"logprobs": logprobs(t)} if form.logprobs else {})
        return JSONResponse(body, headers=headers)
    media = MEDIA_TYPES.get(form.response_format, "application/json")
    return Response(formatted(outcome, form), media_type=media, headers=headers)


def accepted_models(settings: Settings, capabilities: Capabilities) -> set[str]:
    """The `model` values this server answers to: all run the one loaded model (the diarizing name only when the
    worker has a diarizer beside it)."""
    diarize = (DIARIZE_MODEL,) if capabilities.diarizer is not None else ()
    return {served_model_id(settings.model), settings.model, *MODEL_ALIASES, *diarize}


async def _read_form(request: Request, worker: Worker) -> tuple[bytes, TranscriptionForm]:
    caps = worker.capabilities
    assert caps is not None  # inside worker.request(): the worker is ready
    async with multipart_form(request) as form:
        part = form_file(form)
        fields = parse_form(form, accepted_models(worker.settings, caps), caps)
        return await read_file(part), fields


@router.post("/audio/transcriptions")
async def create_transcription(request: Request, worker: WorkerDep) -> Response:
    """OpenAI `audio.transcriptions.create`: multipart `file`, `model`, and the optional fields."""
    declared = declared_body_bytes(request, worker.settings.max_upload_bytes)
    async with worker.request(declared_bytes=declared, disconnected=disconnect_watcher(request)) as lifecycle:
        fields = await lifecycle.receive(_read_form(request, worker))
        if fields.stream and fields.response_format != "diarized_json":  # holds the resources until it ends
            words = await lifecycle.transcribe_stream(fields.options)
            headers = {"X-Gpu-Id": "cpu" if worker.gpu_id is None else str(worker.gpu_id)}
            return StreamingResponse(
                _sse(request, worker, words, fields.logprobs), media_type="text/event-stream", headers=headers
            )
        outcome = await lifecycle.transcribe(fields.options)
    record_outcome(request, outcome, worker.gpu_id)
    if fields.stream:
        headers = timing_headers(outcome, worker.gpu_id)
        return StreamingResponse(_diarized_sse(outcome), media_type="text/event-stream", headers=headers)
    return render(outcome, fields, timing_headers(outcome, worker.gpu_id))


@router.post("/audio/translations")
async def create_translation() -> Response:
    """Parakeet transcribes in the spoken language; it does not translate (answered before any upload)."""
    raise errors.BadRequest(
        "translation is not supported: Parakeet-TDT transcribes speech in its own language; "
        "use /v1/audio/transcriptions",
        param="model",
    )


_STARTED = int(time.time())


@router.get("/models")
async def list_models(worker: WorkerDep) -> dict[str, Any]:
    """OpenAI `models.list`: the one served model."""
    model_id = served_model_id(worker.settings.model)
    return {
        "object": "list",
        "data": [{"id": model_id, "object": "model", "created": _STARTED, "owned_by": "nvidia"}],
    }
