"""`WS /ws`: the simple live-transcription protocol (binary PCM16 in, JSON partials and finals out), and
`GET /status` (its clients' health check). README "Live streaming" documents the protocol.

Client -> server: binary frames of PCM16LE mono 16 kHz audio of any size (an odd trailing byte carries over to the
next frame); a frame (binary or text) exactly equal to `__CTRL__:EOS` ends the utterance and asks for its final at
once, `__CTRL__:RESET` discards it. Server -> client: `{"type": "partial", "text", "audio_s"}` when the text changes,
`{"type": "final", "text", "audio_s", "final_ms", "queue_ms", "compute_ms"[, "words"]}` per utterance, and
`{"type": "error", "code", "message"}`. Query: `vad=1` ends utterances at pauses too; `timestamps=1` adds words.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from fastapi import APIRouter, WebSocket
from fastapi.responses import PlainTextResponse

from parakeet.api import websockets as wsx
from parakeet.core import errors
from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.pipeline.streaming import Partial, SpeechStarted, StepFailed, StreamEvent, Utterance, UtteranceEnded
from parakeet.pipeline.vad import VadParams
from parakeet.pipeline.worker import Worker

router = APIRouter(tags=["streaming"])

EOS = b"__CTRL__:EOS"
RESET = b"__CTRL__:RESET"


@router.get("/status", response_class=PlainTextResponse, summary="Liveness for /ws clients: `ok`")
async def status() -> str:
    return "ok"


def pcm16_to_float(data: bytes) -> np.ndarray:
    """PCM16LE bytes (even length) -> float32 samples in [-1, 1): x / 32768, as soundfile reads a PCM16 WAV."""
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0


def error_event(detail: wsx.Message) -> wsx.Message:
    return {"type": "error", **detail}


async def final_event(
    worker: Worker, utterance: Utterance | None, ended_at: float, timestamps: bool
) -> list[wsx.Message]:
    """The `final` message of one utterance: its offline transcript (or an `error` message)."""
    if utterance is None or len(utterance.waveform) == 0:
        return [{"type": "final", "text": "", "audio_s": 0.0, "final_ms": 0.0, "queue_ms": 0.0, "compute_ms": 0.0}]
    try:
        outcome = await worker.transcribe_waveform(utterance.waveform, timestamps=timestamps)
    except errors.ParakeetError as exc:
        return [error_event({"code": exc.code, "message": exc.message})]
    message: wsx.Message = {
        "type": "final",
        "text": outcome.transcript.text,
        "audio_s": round(utterance.duration_s, 3),
        "start_s": round(utterance.start_sample / SAMPLE_RATE_HZ, 3),
        "final_ms": round((time.monotonic() - ended_at) * 1000, 1),
        "queue_ms": round(outcome.queue_ms, 1),
        "compute_ms": round(outcome.compute_ms, 1),
    }
    if timestamps:
        message["words"] = [{"word": w.text, "start": w.start_s, "end": w.end_s} for w in outcome.transcript.words]
    return [message]


@router.websocket("/ws")
async def ws_stream(websocket: WebSocket, vad: bool = False, timestamps: bool = False) -> None:
    worker: Worker = websocket.app.state.worker
    settings = worker.settings
    await wsx.accept(websocket)
    outbox = wsx.Outbox(websocket)

    def finalize(utterance: Utterance | None) -> None:
        outbox.put_pending(final_event(worker, utterance, time.monotonic(), timestamps))

    def on_event(event: StreamEvent) -> None:
        if isinstance(event, Partial):
            outbox.put_partial({"type": "partial", "text": event.text, "audio_s": round(event.audio_s, 3)})
        elif isinstance(event, UtteranceEnded):
            finalize(event.utterance)
        elif isinstance(event, StepFailed):
            outbox.put(error_event({"code": "inference_failed", "message": event.message}))
        elif isinstance(event, SpeechStarted):
            pass

    params = VadParams(settings.stream_vad_threshold, settings.stream_vad_prefix_ms, settings.stream_vad_silence_ms)
    try:
        session = worker.open_stream(on_event, vad=params if vad else None)
    except errors.ParakeetError as exc:
        outbox.put(error_event({"code": exc.code, "message": exc.message}))
        await outbox.flush(5.0)
        await wsx.close(websocket, wsx.refusal_code(exc), exc.code)
        return
    reader = wsx.StreamReader(websocket, settings, session, outbox)
    carry = b""

    async def step() -> None:
        nonlocal carry
        payload: Any = await reader.receive()
        raw = payload.encode() if isinstance(payload, str) else payload
        if raw == EOS:
            carry = b""
            finalize(session.end_utterance())
        elif raw == RESET:
            carry = b""
            session.reset()
        elif isinstance(payload, str):
            reader.bad_message()
            message = "text frames must be __CTRL__:EOS or __CTRL__:RESET; send audio as binary PCM16LE mono 16 kHz"
            outbox.put(error_event({"code": "invalid_message", "message": message}))
            return
        else:
            data = carry + raw
            cut = len(data) - len(data) % 2
            carry = data[cut:]
            session.append(pcm16_to_float(data[:cut]))
        reader.good_message()

    await wsx.serve_stream(
        websocket,
        outbox,
        session.close,
        step,
        lambda: finalize(session.end_utterance()),
        error_event,
        settings.shutdown_drain_s,
    )
