"""OpenAI-compatible routes: POST /v1/audio/transcriptions, GET /v1/models, POST /v1/audio/translations.

Follows OpenAI's API reference for `audio.transcriptions.create`
(https://platform.openai.com/docs/api-reference/audio/createTranscription) and the official `openai` SDK's
types and request encoding: the multipart fields, the five response formats, word/segment granularities,
`stream` as server-sent events, and OpenAI's error envelope (shared with the rest of the server,
parakeet/api/errors.py). The pipeline itself is parakeet/pipeline/worker.py; this module parses fields and
formats outcomes.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.datastructures import FormData

from parakeet.api.deps import WorkerDep
from parakeet.api.subtitles import Cue, CueLimits, cues, fallback_cues, to_srt, to_vtt
from parakeet.api.uploads import (
    UploadedFile,
    declared_body_bytes,
    form_bool,
    form_file,
    form_text,
    multipart_form,
    read_file,
    record_outcome,
    timing_headers,
    transcribe_upload,
    wait_for_disconnect,
)
from parakeet.core import errors
from parakeet.core.settings import Settings
from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.pipeline.batching import Ticket
from parakeet.pipeline.worker import MemoryReservation, Outcome, Worker

router = APIRouter(prefix="/v1", tags=["openai"])

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
GRANULARITIES = ("word", "segment")
# Model names that existing OpenAI client code sends; all are served by the one loaded model (openai-python
# `AudioModel`, late 2026). The diarizing model is not among them: its output format does not exist here.
MODEL_ALIASES = ("whisper-1", "gpt-transcribe", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "parakeet-tdt-0.6b-v3")
# Dated snapshots of those, e.g. gpt-4o-mini-transcribe-2025-12-15.
DATED_ALIAS = re.compile(r"(gpt-transcribe|gpt-4o-transcribe|gpt-4o-mini-transcribe)-\d{4}-\d{2}-\d{2}")
# Fields of OpenAI's request this model cannot honour; accepted (checked to be text) and ignored (README).
IGNORED_FIELDS = ("prompt", "chunking_strategy", "keywords", "languages", "known_speaker_names",
                  "known_speaker_references")  # fmt: skip
INCLUDE = ("logprobs",)


def served_model_id(model: str) -> str:
    """The id /v1/models lists: the hub id, or a local file's name without `.nemo`."""
    return Path(model).stem if model.endswith(".nemo") else model


@dataclass(frozen=True)
class TranscriptionForm:
    model: str
    language: str | None
    response_format: str
    temperature: float
    granularities: tuple[str, ...]
    stream: bool
    logprobs: bool = False  # include[]=logprobs: token log-probabilities (and word confidence in verbose_json)

    @property
    def needs_timestamps(self) -> bool:
        """Subtitles, verbose_json and the streamed word deltas are built from timestamps; json/text not."""
        return self.stream or self.response_format in ("srt", "vtt", "verbose_json")


def parse_form(form: FormData, accepted_models: set[str]) -> TranscriptionForm:
    """Validate the OpenAI transcription fields (all but `file`).

    Raises:
        BadRequest: naming the field, the accepted values and the value sent.
    """
    model = form_text(form, "model")
    if not model:
        raise errors.BadRequest("missing form field 'model'", param="model")
    if model not in accepted_models and not DATED_ALIAS.fullmatch(model):
        raise errors.BadRequest(
            f"model {model[:80]!r} is not served here; use one of {', '.join(sorted(accepted_models))}",
            param="model",
        )
    fmt = (form_text(form, "response_format") or "json").strip()
    if fmt not in RESPONSE_FORMATS:
        raise errors.BadRequest(
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, got {fmt[:40]!r}", param="response_format"
        )
    raw_temperature = form_text(form, "temperature") or "0"
    try:
        temperature = float(raw_temperature)
    except ValueError:
        temperature = float("nan")
    if not 0.0 <= temperature <= 1.0:
        raise errors.BadRequest(
            f"temperature must be a number from 0 to 1, got {raw_temperature[:40]!r}", param="temperature"
        )
    language = form_text(form, "language")
    if language is not None and not re.fullmatch(r"[a-z]{2}", language.strip().lower()):
        raise errors.BadRequest(
            f"language must be an ISO-639-1 code such as 'en', got {language[:40]!r}", param="language"
        )
    for name in IGNORED_FIELDS:  # greedy TDT decoding takes no prompt, keywords or speakers
        for key in (name, f"{name}[]"):
            for value in form.getlist(key):
                if not isinstance(value, str):
                    raise errors.BadRequest(f"form field '{name}' must be text, not a file", param=name)
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
    include = [v for key in ("include[]", "include") for v in form.getlist(key)]
    for value in include:
        if not isinstance(value, str) or value not in INCLUDE:
            raise errors.BadRequest(f"include must be 'logprobs', got {str(value)[:40]!r}", param="include")
    if include and fmt not in ("json", "verbose_json"):
        raise errors.BadRequest(
            f"include[]=logprobs needs response_format json or verbose_json, got {fmt!r}", param="include"
        )
    stream = form_bool(form, "stream")
    if stream and fmt not in ("json", "text"):
        raise errors.BadRequest(f"stream is supported with response_format json or text, not {fmt!r}", param="stream")
    return TranscriptionForm(
        model, language.strip().lower() if language else None, fmt, temperature, tuple(dict.fromkeys(granularities)),
        stream, bool(include),
    )  # fmt: skip


# --- formatting ----------------------------------------------------------------------------------------------


def segments_of(t: Transcript, duration_s: float) -> list[TimedSpan]:
    """Sentence segments (NeMo's, split at . ! ?); one segment over the whole audio if NeMo gave none."""
    if t.segments:
        return list(t.segments)
    return [TimedSpan(t.text, 0.0, round(duration_s, 3))] if t.text else []


def subtitle_cues(outcome: Outcome, limits: CueLimits) -> list[Cue]:
    """SRT/VTT cues from the word timestamps (parakeet/api/subtitles.py); NeMo's segments if there are none."""
    t = outcome.transcript
    return cues(t.words, limits) if t.words else fallback_cues(segments_of(t, outcome.audio.duration_s), limits)


def logprobs(t: Transcript) -> list[dict[str, Any]]:
    """OpenAI's `logprobs` ({token, logprob, bytes} per token) from the tokens' log-probabilities (README
    "Confidence"); SentencePiece's word marker becomes a space, as OpenAI's tokens carry it."""
    out = []
    for c in t.chars:
        token = c.text.replace("▁", " ")
        out.append(
            {"token": token, "logprob": c.logprob if c.logprob is not None else 0.0, "bytes": list(token.encode())}
        )
    return out


def usage(outcome: Outcome) -> dict[str, Any]:
    return {"type": "duration", "seconds": round(outcome.audio.duration_s, 3)}


def verbose_json(outcome: Outcome, form: TranscriptionForm) -> dict[str, Any]:
    """OpenAI's verbose_json: `words` only when asked for; `segments` unless only words were asked for.
    Whisper-only segment fields get neutral values (the SDK declares all ten)."""
    t = outcome.transcript
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": form.language or "unknown",
        "duration": round(outcome.audio.duration_s, 3),
        "text": t.text,
    }
    if form.granularities != ("word",):
        body["segments"] = [
            {
                "id": i,
                "seek": 0,
                "start": s.start_s,
                "end": s.end_s,
                "text": s.text,
                "tokens": [],
                "temperature": 0.0,
                "avg_logprob": 0.0,
                "compression_ratio": 1.0,
                "no_speech_prob": 0.0,
            }  # fmt: skip
            for i, s in enumerate(segments_of(t, outcome.audio.duration_s))
        ]
    if "word" in form.granularities:
        body["words"] = [
            {"word": w.text, "start": w.start_s, "end": w.end_s}
            | ({"confidence": w.confidence} if form.logprobs and w.confidence is not None else {})
            for w in t.words
        ]
    body["usage"] = usage(outcome)
    return body


def _event(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


async def _start_stream(
    request: Request,
    worker: Worker,
    ticket: Ticket,
    upload: UploadedFile,
    held: ExitStack,
    with_logprobs: bool,
    memory: MemoryReservation,
) -> Response:
    """`stream=true`: `transcript.text.delta` per word, sent as each chunk of the audio is transcribed (the first
    delta of a long file comes after its first chunk, not after the whole file), then `transcript.text.done`
    (without `usage`: the spec types it as token usage only). Errors before the first delta are ordinary error
    responses; later ones end the stream with an `error` event. `held` (the worker ticket) is released when
    the stream ends."""
    words: asyncio.Queue[Sequence[TimedSpan]] = asyncio.Queue()
    task = asyncio.ensure_future(
        worker.transcribe(
            ticket, upload.take(), timestamps=True, on_words=words.put_nowait, confidence=with_logprobs, memory=memory
        )
    )
    first = asyncio.ensure_future(words.get())
    gone = asyncio.ensure_future(wait_for_disconnect(request))
    try:
        await asyncio.wait({task, first, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not first.done():
        first.cancel()
        if not task.done():  # the client left before anything was ready
            task.cancel()
            held.close()
            raise errors.ClientDisconnected("the client closed the connection before its transcript was ready")
        held.close()
        task.result()  # raises the pipeline's error as an ordinary error response
        raise RuntimeError("transcription finished without reporting its words")  # not reached: on_words ran

    async def next_words() -> Sequence[TimedSpan] | None:
        """The next chunk's words, or None once the transcription has ended (its task then holds the outcome)."""
        while True:
            if not words.empty():
                return words.get_nowait()
            if task.done():
                return None
            getter = asyncio.ensure_future(words.get())
            await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()

    async def events() -> AsyncIterator[bytes]:
        sent = 0
        try:
            batch: Sequence[TimedSpan] | None = first.result()
            while batch is not None:
                for word in batch:
                    yield _event(
                        {"type": "transcript.text.delta", "delta": word.text if sent == 0 else " " + word.text}
                    )
                    sent += 1
                batch = await next_words()
            outcome = await task
            record_outcome(request, outcome, worker.gpu_id)
            done: dict[str, Any] = {"type": "transcript.text.done", "text": outcome.transcript.text}
            if with_logprobs:
                done["logprobs"] = logprobs(outcome.transcript)
            yield _event(done)
        except errors.ParakeetError as exc:
            yield _event({"type": "error", "error": {"message": exc.message, "type": "server_error", "code": exc.code}})
        finally:
            if not task.done():
                task.cancel()  # the client left mid-stream: queued chunks are dropped before the GPU
            held.close()

    headers = {"X-Gpu-Id": "cpu" if worker.gpu_id is None else str(worker.gpu_id)}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


def render(outcome: Outcome, form: TranscriptionForm, headers: dict[str, str], limits: CueLimits) -> Response:
    t = outcome.transcript
    if form.response_format == "json":
        body = {"text": t.text, "usage": usage(outcome)} | ({"logprobs": logprobs(t)} if form.logprobs else {})
        return JSONResponse(body, headers=headers)
    if form.response_format == "text":
        return PlainTextResponse(t.text + "\n", headers=headers)
    if form.response_format == "srt":
        return PlainTextResponse(to_srt(subtitle_cues(outcome, limits)), headers=headers)
    if form.response_format == "vtt":
        return PlainTextResponse(to_vtt(subtitle_cues(outcome, limits)), media_type="text/vtt", headers=headers)
    return JSONResponse(verbose_json(outcome, form), headers=headers)


def accepted_models(settings: Settings) -> set[str]:
    """The `model` values this server answers to: all run the one loaded model."""
    return {served_model_id(settings.model), settings.model, *MODEL_ALIASES}


@router.post("/audio/transcriptions")
async def create_transcription(request: Request, worker: WorkerDep) -> Response:
    """OpenAI `audio.transcriptions.create`: multipart `file`, `model`, and the optional fields."""
    with ExitStack() as held:
        declared = declared_body_bytes(request, worker.settings.max_upload_bytes)
        memory = held.enter_context(worker.reserved_memory(declared))  # 429 before the body when over the budget
        with worker.receiving():  # 429/503 before a byte of the upload is read when the worker is full
            async with multipart_form(request) as form:
                part = form_file(form)
                fields = parse_form(form, accepted_models(worker.settings))
                upload = await read_file(part)
        ticket = held.enter_context(worker.admitted())  # the GPU queue: taken once the audio is in hand
        if fields.stream:  # the ticket and the memory are held until the stream ends
            return await _start_stream(request, worker, ticket, upload, held.pop_all(), fields.logprobs, memory)
        outcome = await transcribe_upload(
            request, worker, ticket, upload, timestamps=fields.needs_timestamps, confidence=fields.logprobs,
            memory=memory,
        )  # fmt: skip
    record_outcome(request, outcome, worker.gpu_id)
    s = worker.settings
    limits = CueLimits(s.subtitle_max_line_chars, s.subtitle_max_lines, s.subtitle_max_cue_s)
    return render(outcome, fields, timing_headers(outcome, worker.gpu_id), limits)


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
