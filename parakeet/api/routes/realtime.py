"""`WS /v1/realtime`: OpenAI's Realtime API, transcription sessions (`?intent=transcription`), so that the official
`openai` SDK's `client.realtime.connect(...)` works against this server. README "Live streaming" documents it.

Event shapes follow the API reference (https://platform.openai.com/docs/api-reference/realtime-client-events,
.../realtime-server-events) and the SDK's generated types (openai/types/realtime/). Supported: `session.update`
(GA shape) and `transcription_session.update` (beta shape), `input_audio_buffer.append` / `commit` / `clear`,
`response.create` (older clients: treated as a commit), server VAD (`turn_detection: {"type": "server_vad"}`,
the default; `semantic_vad` is treated as server VAD) or manual commits (`turn_detection: null`). Audio:
`audio/pcm` at 24 kHz (OpenAI's only rate; 16 kHz accepted as an extension), `audio/pcmu`, `audio/pcma` (8 kHz).

Deltas (`conversation.item.input_audio_transcription.delta`) carry the committed streaming text of the current
item up to its last complete word, as it is spoken; `...completed` carries the item's offline transcript, which
is authoritative (it may differ from the concatenated deltas).
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import uuid
from typing import Any

import numpy as np
import soxr
from fastapi import APIRouter, WebSocket

from parakeet.api import websockets as wsx
from parakeet.core import errors
from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.pipeline.streaming import (
    Partial,
    SpeechStarted,
    StepFailed,
    StreamEvent,
    StreamSession,
    Utterance,
    UtteranceEnded,
)
from parakeet.pipeline.vad import VadParams
from parakeet.pipeline.worker import Worker

router = APIRouter(prefix="/v1", tags=["realtime"])

MIN_COMMIT_MS = 100  # OpenAI: "buffer too small. Expected at least 100ms of audio"
PCM_RATES = (24000, 16000)
G711_RATE = 8000


def _g711_tables() -> tuple[np.ndarray, np.ndarray]:
    """256-entry decode tables of ITU-T G.711 mu-law and A-law to 16-bit linear (Recommendation G.711, 1988;
    the same values as CPython's audioop.ulaw2lin / alaw2lin)."""
    codes = np.arange(256)
    u = ~codes & 0xFF
    exponent, mantissa = (u >> 4) & 0x07, u & 0x0F
    ulaw = (((mantissa << 3) + 0x84) << exponent) - 0x84
    ulaw = np.where(u & 0x80, -ulaw, ulaw)
    a = codes ^ 0x55
    exponent, mantissa = (a >> 4) & 0x07, a & 0x0F
    alaw = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    alaw = np.where(a & 0x80, alaw, -alaw)
    return ulaw.astype(np.int16), alaw.astype(np.int16)


ULAW, ALAW = _g711_tables()


def default_session(model: str) -> dict[str, Any]:
    """A new session's configuration (GA shape), as `session.created` reports it."""
    return {
        "type": "transcription",
        "id": f"sess_{uuid.uuid4().hex[:20]}",
        "object": "realtime.transcription_session",
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24000},
                "transcription": {"model": model, "language": None, "prompt": ""},
                "turn_detection": {"type": "server_vad", "threshold": 0.5, "prefix_padding_ms": 300,
                                   "silence_duration_ms": 500},
                "noise_reduction": None,
            }
        },
        "include": [],
    }  # fmt: skip


class BadEvent(Exception):
    """A client event this server cannot use: answered with an `error` event; the session stays open."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def _input_rate(fmt: dict[str, Any]) -> int:
    kind = fmt.get("type")
    if kind == "audio/pcm":
        rate = fmt.get("rate", 24000)
        if rate not in PCM_RATES:
            raise BadEvent(
                f"audio/pcm rate {rate} is not supported; use 24000 (or 16000)", param="session.audio.input.format.rate"
            )
        return int(rate)
    if kind in ("audio/pcmu", "audio/pcma"):
        return G711_RATE
    raise BadEvent(f"audio format {kind!r} is not supported; use audio/pcm, audio/pcmu or audio/pcma",
                   param="session.audio.input.format.type")  # fmt: skip


_BETA_FORMATS: dict[str, dict[str, Any]] = {
    "pcm16": {"type": "audio/pcm", "rate": 24000},
    "g711_ulaw": {"type": "audio/pcmu"},
    "g711_alaw": {"type": "audio/pcma"},
}


class RealtimeConnection:
    """One transcription session: OpenAI events in, stream session and events out."""

    def __init__(self, websocket: WebSocket, worker: Worker) -> None:
        self.websocket, self.worker = websocket, worker
        self.outbox = wsx.Outbox(websocket)
        self.config = default_session(worker.engine.model_name if worker.engine else worker.settings.model)
        self.session: StreamSession | None = None
        self.reader: wsx.StreamReader | None = None
        self.rate = 24000
        self.encoding = "audio/pcm"
        self.resampler: Any = None
        self.item_id = self._new_item_id()
        self.previous_item_id: str | None = None
        self.sent_delta = ""

    # --- output ----------------------------------------------------------------------------------------

    @staticmethod
    def _new_item_id() -> str:
        return f"item_{uuid.uuid4().hex[:20]}"

    def send(self, type_: str, **fields: Any) -> None:
        self.outbox.put({"type": type_, "event_id": f"event_{uuid.uuid4().hex[:20]}", **fields})

    def error(self, message: str, *, code: str, param: str | None = None, event_id: str | None = None,
              type_: str = "invalid_request_error") -> None:  # fmt: skip
        self.send(
            "error", error={"type": type_, "code": code, "message": message, "param": param, "event_id": event_id}
        )

    @staticmethod
    def error_message(detail: wsx.Message) -> wsx.Message:
        return {"type": "error", "event_id": f"event_{uuid.uuid4().hex[:20]}",
                "error": {"type": "server_error", "param": None, "event_id": None, **detail}}  # fmt: skip

    # --- stream session ----------------------------------------------------------------------------------

    def vad_params(self) -> VadParams | None:
        td = self.config["audio"]["input"]["turn_detection"]
        if td is None:
            return None
        return VadParams(float(td.get("threshold", 0.5)), float(td.get("prefix_padding_ms", 300)),
                         float(td.get("silence_duration_ms", 500)))  # fmt: skip

    def open(self) -> None:
        """(Re)open the stream session for the current config (a new turn-detection mode starts a new buffer)."""
        if self.session is not None:
            self.session.close()
        self.session = self.worker.open_stream(self.on_event, vad=self.vad_params())
        if self.reader is None:
            self.reader = wsx.StreamReader(self.websocket, self.worker.settings, self.session, self.outbox)
        self.reader.session = self.session
        fmt = self.config["audio"]["input"]["format"]
        self.rate, self.encoding = _input_rate(fmt), fmt["type"]
        self.resampler = None

    def on_event(self, event: StreamEvent) -> None:
        if isinstance(event, Partial):
            stable = event.committed_text[: event.committed_text.rfind(" ") + 1].rstrip()
            if stable.startswith(self.sent_delta) and len(stable) > len(self.sent_delta):
                delta, self.sent_delta = stable[len(self.sent_delta) :], stable
                self.send("conversation.item.input_audio_transcription.delta", item_id=self.item_id,
                          content_index=0, delta=delta)  # fmt: skip
        elif isinstance(event, SpeechStarted):
            self.send("input_audio_buffer.speech_started", audio_start_ms=_ms(event.sample), item_id=self.item_id)
        elif isinstance(event, UtteranceEnded):
            if event.reason == "vad":
                self.send("input_audio_buffer.speech_stopped", audio_end_ms=_ms(event.utterance.end_sample),
                          item_id=self.item_id)  # fmt: skip
            self.commit(event.utterance)
        elif isinstance(event, StepFailed):
            self.error(event.message, code="inference_failed", type_="server_error")

    def commit(self, utterance: Utterance) -> None:
        item_id, previous = self.item_id, self.previous_item_id
        self.previous_item_id, self.item_id, self.sent_delta = item_id, self._new_item_id(), ""
        self.send("input_audio_buffer.committed", item_id=item_id, previous_item_id=previous)
        item = {"id": item_id, "object": "realtime.item", "type": "message", "role": "user", "status": "completed",
                "content": [{"type": "input_audio", "transcript": None}]}  # fmt: skip
        self.send("conversation.item.added", item=item, previous_item_id=previous)
        self.outbox.put_pending(self._completed(utterance, item, previous))

    async def _completed(self, utterance: Utterance, item: dict[str, Any], previous: str | None) -> list[wsx.Message]:
        def event(type_: str, **fields: Any) -> wsx.Message:
            return {"type": type_, "event_id": f"event_{uuid.uuid4().hex[:20]}", **fields}

        try:
            outcome = await self.worker.transcribe_waveform(utterance.waveform, timestamps=False)
        except errors.ParakeetError as exc:
            err = {"type": "server_error", "code": exc.code, "message": exc.message, "param": None}
            return [event("conversation.item.input_audio_transcription.failed", item_id=item["id"], content_index=0,
                          error=err)]  # fmt: skip
        text = outcome.transcript.text
        done_item = copy.deepcopy(item)
        done_item["content"][0]["transcript"] = text
        return [
            event("conversation.item.input_audio_transcription.completed", item_id=item["id"], content_index=0,
                  transcript=text, usage={"type": "duration", "seconds": round(utterance.duration_s, 3)}),
            event("conversation.item.done", item=done_item, previous_item_id=previous),
        ]  # fmt: skip

    # --- client events -----------------------------------------------------------------------------------

    async def step(self) -> None:
        assert self.reader is not None and self.session is not None
        payload = await self.reader.receive()
        if isinstance(payload, bytes):
            self.reader.bad_message()
            self.error("binary frames are not part of this protocol: send JSON events (audio as base64 in "
                       "input_audio_buffer.append)", code="invalid_message")  # fmt: skip
            return
        try:
            event = json.loads(payload)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self.reader.bad_message()
            self.error(f"the message is not a JSON object: {exc}", code="invalid_json")
            return
        event_id = event.get("event_id") if isinstance(event.get("event_id"), str) else None
        try:
            self.handle(event)
            self.reader.good_message()
        except BadEvent as exc:
            self.reader.bad_message()
            self.error(exc.message, code=exc.code, param=exc.param, event_id=event_id)

    def handle(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "input_audio_buffer.append":
            self.append(event.get("audio"))
        elif kind in ("input_audio_buffer.commit", "response.create"):
            self.manual_commit()
        elif kind == "input_audio_buffer.clear":
            assert self.session is not None
            self.session.reset()
            self.resampler, self.sent_delta = None, ""
            self.send("input_audio_buffer.cleared")
        elif kind == "session.update":
            self.update(event.get("session"))
            self.send("session.updated", session=self.config)
        elif kind == "transcription_session.update":
            self.update_beta(event.get("session"))
            self.send("transcription_session.updated", session=self.beta_config())
        else:
            raise BadEvent(f"unknown or unsupported event type {kind!r}", code="unknown_event", param="type")

    def append(self, audio: Any) -> None:
        assert self.session is not None
        if not isinstance(audio, str):
            raise BadEvent("input_audio_buffer.append needs `audio`: base64 audio bytes", param="audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise BadEvent("`audio` is not valid base64", code="invalid_base64", param="audio") from None
        if self.encoding == "audio/pcm":
            samples = np.frombuffer(raw[: len(raw) - len(raw) % 2], dtype="<i2")
        else:
            samples = (ULAW if self.encoding == "audio/pcmu" else ALAW)[np.frombuffer(raw, dtype=np.uint8)]
        x = samples.astype(np.float32) / 32768.0
        if self.rate != SAMPLE_RATE_HZ:
            if self.resampler is None:
                self.resampler = soxr.ResampleStream(self.rate, SAMPLE_RATE_HZ, 1, dtype="float32", quality="HQ")
            x = self.resampler.resample_chunk(x)
        self.session.append(x)

    def flush_resampler(self) -> None:
        """The resampler's delayed tail belongs to the item being committed; the next item starts afresh."""
        if self.resampler is not None and self.session is not None:
            self.session.append(self.resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True))
        self.resampler = None

    def manual_commit(self) -> None:
        assert self.session is not None
        self.flush_resampler()
        utterance = self.session.end_utterance()
        got_ms = 0.0 if utterance is None else utterance.duration_s * 1000
        if utterance is None or got_ms < MIN_COMMIT_MS:
            raise BadEvent(
                f"buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has {got_ms:.2f}ms "
                "of audio.",
                code="input_audio_buffer_commit_empty",
            )
        self.commit(utterance)

    def update(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise BadEvent("session.update needs a `session` object", param="session")
        if session.get("type", "transcription") != "transcription":
            raise BadEvent("this server offers transcription sessions only (session.type = 'transcription')",
                           param="session.type")  # fmt: skip
        new = copy.deepcopy(self.config)
        audio_in = (session.get("audio") or {}).get("input") or {}
        target = new["audio"]["input"]
        for key in ("format", "transcription", "noise_reduction", "turn_detection"):
            if key in audio_in:
                target[key] = audio_in[key]
        if "include" in session:
            new["include"] = session["include"] or []
        self.apply(new)

    def update_beta(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise BadEvent("transcription_session.update needs a `session` object", param="session")
        new = copy.deepcopy(self.config)
        target = new["audio"]["input"]
        if "input_audio_format" in session:
            fmt = _BETA_FORMATS.get(session["input_audio_format"])
            if fmt is None:
                raise BadEvent(f"input_audio_format {session['input_audio_format']!r} is not supported; use pcm16, "
                               "g711_ulaw or g711_alaw", param="session.input_audio_format")  # fmt: skip
            target["format"] = fmt
        if "input_audio_transcription" in session:
            target["transcription"] = session["input_audio_transcription"]
        if "turn_detection" in session:
            target["turn_detection"] = session["turn_detection"]
        if "input_audio_noise_reduction" in session:
            target["noise_reduction"] = session["input_audio_noise_reduction"]
        self.apply(new)

    def apply(self, new: dict[str, Any]) -> None:
        audio_in = new["audio"]["input"]
        _input_rate(audio_in["format"] or {})
        td = audio_in["turn_detection"]
        if td is not None:
            if not isinstance(td, dict) or td.get("type") not in ("server_vad", "semantic_vad"):
                raise BadEvent("turn_detection must be null, or of type server_vad (semantic_vad is treated as "
                               "server_vad)", param="session.audio.input.turn_detection")  # fmt: skip
            td = {"type": td["type"], "threshold": td.get("threshold", 0.5),
                  "prefix_padding_ms": td.get("prefix_padding_ms", 300),
                  "silence_duration_ms": td.get("silence_duration_ms", 500)}  # fmt: skip
            if not 0 < float(td["threshold"]) < 1:
                raise BadEvent(f"turn_detection.threshold must be between 0 and 1, got {td['threshold']}",
                               param="session.audio.input.turn_detection.threshold")  # fmt: skip
            audio_in["turn_detection"] = td
        old_in = self.config["audio"]["input"]
        reopen = old_in["turn_detection"] != audio_in["turn_detection"] or old_in["format"] != audio_in["format"]
        self.config = new
        if reopen:
            self.open()

    def beta_config(self) -> dict[str, Any]:
        audio_in = self.config["audio"]["input"]
        fmt = next((k for k, v in _BETA_FORMATS.items() if v["type"] == audio_in["format"]["type"]), "pcm16")
        return {
            "id": self.config["id"],
            "object": "realtime.transcription_session",
            "input_audio_format": fmt,
            "input_audio_transcription": audio_in["transcription"],
            "turn_detection": audio_in["turn_detection"],
            "input_audio_noise_reduction": audio_in["noise_reduction"],
            "include": self.config["include"],
        }


def _ms(sample: int) -> int:
    return int(round(sample * 1000 / SAMPLE_RATE_HZ))


@router.websocket("/realtime")
async def realtime(websocket: WebSocket) -> None:
    worker: Worker = websocket.app.state.worker
    await wsx.accept(websocket, "realtime")
    conn = RealtimeConnection(websocket, worker)
    try:
        conn.open()
    except errors.ParakeetError as exc:
        conn.outbox.put(conn.error_message({"code": exc.code, "message": exc.message}))
        await conn.outbox.flush(5.0)
        await wsx.close(websocket, wsx.refusal_code(exc), exc.code)
        return
    conn.send("session.created", session=conn.config)
    assert conn.session is not None

    def finalize() -> None:
        assert conn.session is not None
        conn.flush_resampler()
        utterance = conn.session.end_utterance()
        if utterance is not None and utterance.duration_s * 1000 >= MIN_COMMIT_MS:
            conn.commit(utterance)

    def close_session() -> None:
        if conn.session is not None:
            conn.session.close()

    await wsx.serve_stream(
        websocket, conn.outbox, close_session, conn.step, finalize, conn.error_message, worker.settings.shutdown_drain_s
    )
