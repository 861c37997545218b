"""`WS /v1/realtime`: OpenAI's Realtime API, transcription sessions (`?intent=transcription`), so that the official
`openai` SDK's `client.realtime.connect(...)` works against this server. README "Live streaming" documents it.

Supported: `session.update` (GA shape) and `transcription_session.update` (beta shape), `input_audio_buffer.append` /
`commit` / `clear`, `response.create` (older clients: treated as a commit), server VAD (`turn_detection: {"type":
"server_vad"}`, the default; `semantic_vad` is treated as server VAD) or manual commits (`turn_detection: null`).
Audio: `audio/pcm` at 24 kHz (OpenAI's only rate; 16 kHz accepted as an extension), `audio/pcmu`, `audio/pcma`
(8 kHz). The events and the session are the models of parakeet.api.realtime_models; the streaming and the finals
are the session's (parakeet.pipeline.stream_session): this module maps one onto the other.

Deltas (`conversation.item.input_audio_transcription.delta`) carry the committed streaming text of the current
item up to its last complete word, as it is spoken; `...completed` carries the item's offline transcript, which
is authoritative (it may differ from the concatenated deltas).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import ValidationError

from parakeet.api import realtime_models as rt
from parakeet.api import websockets as wsx
from parakeet.core import errors
from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.core.keywords import KeyPhrases, parse_key_phrases
from parakeet.pipeline.stream_audio import G711_RATE_HZ, StreamAudio
from parakeet.pipeline.stream_session import (
    Final,
    Partial,
    SpeechStarted,
    StepFailed,
    StreamEvent,
    StreamSession,
    UtteranceEnded,
    text_delta,
)
from parakeet.pipeline.worker import Worker

router = APIRouter(prefix="/v1", tags=["realtime"])

MIN_COMMIT_MS = 100  # OpenAI: "buffer too small. Expected at least 100ms of audio"


class BadEvent(Exception):
    """A client event this server cannot use: answered with an `error` event; the session stays open."""

    def __init__(self, message: str, *, code: str = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.code, self.param = message, code, param


def _ms(sample: int) -> int:
    return int(round(sample * 1000 / SAMPLE_RATE_HZ))


def _stream_audio(fmt: rt.AudioFormat) -> StreamAudio:
    if fmt.type == "audio/pcm":
        return StreamAudio("pcm", fmt.rate or 24000)
    return StreamAudio("pcmu" if fmt.type == "audio/pcmu" else "pcma", G711_RATE_HZ, width_bytes=1)


class RealtimeConnection:
    """One transcription session: OpenAI events in, stream session and events out (a `websockets.StreamProtocol`)."""

    def __init__(self, websocket: WebSocket, worker: Worker) -> None:
        self.websocket, self.worker = websocket, worker
        self.outbox = wsx.Outbox(websocket)
        self.config = rt.SessionConfig.default(worker.engine.model_name if worker.engine else worker.settings.model)
        self._session: StreamSession | None = None
        self.reader: wsx.StreamReader | None = None
        self.audio = _stream_audio(self.config.audio.input.format)
        self.item_id = rt.new_id("item")
        self.previous_item_id: str | None = None
        self.items: dict[int, tuple[str, str | None]] = {}  # utterance index -> (item id, previous item id)
        self.sent_delta = ""

    @property
    def session(self) -> StreamSession | None:
        return self._session

    # --- output ----------------------------------------------------------------------------------------

    def send(self, event: rt.ServerEvent) -> None:
        self.outbox.put(event.message())

    def error(self, message: str, *, code: str, param: str | None = None, event_id: str | None = None,
              type_: str = "invalid_request_error") -> None:  # fmt: skip
        detail = rt.ErrorDetail(type=type_, code=code, message=message, param=param, event_id=event_id)
        self.send(rt.ErrorEvent(error=detail))

    def error_message(self, detail: wsx.Message) -> wsx.Message:
        return rt.ErrorEvent(error=rt.ErrorDetail(type="server_error", **detail)).message()

    # --- stream session ----------------------------------------------------------------------------------

    def open(self) -> None:
        """(Re)open the stream session for the current config (a new turn-detection mode or format starts a new
        buffer; the old session still delivers the finals of what was committed).

        Raises:
            ShuttingDown, NotReady, TooManyStreams, BadRequest (see `Worker.open_stream`).
        """
        td = self.config.audio.input.turn_detection
        if self._session is not None:
            self._session.retire()
        vad = td.vad_params() if td is not None else None
        session = self.worker.open_stream(self.on_event, vad=vad, keywords=_keywords(self.config))
        self._session = session
        if self.reader is None:
            self.reader = wsx.StreamReader(self.websocket, self.worker.tuning, session, self.outbox)
        self.reader.session = session
        self.audio = _stream_audio(self.config.audio.input.format)

    def on_event(self, event: StreamEvent) -> None:
        if isinstance(event, Partial):
            delta = text_delta(self.sent_delta, event.committed_text)
            if delta:
                self.sent_delta += delta
                self.send(rt.TranscriptionDelta(item_id=self.item_id, delta=delta))
        elif isinstance(event, SpeechStarted):
            self.send(rt.SpeechStarted(audio_start_ms=_ms(event.sample), item_id=self.item_id))
        elif isinstance(event, UtteranceEnded):
            if event.reason == "vad":
                self.send(rt.SpeechStopped(audio_end_ms=_ms(event.utterance.end_sample), item_id=self.item_id))
            self.committed(event.utterance.index)
        elif isinstance(event, Final):
            self.completed(event)
        elif isinstance(event, StepFailed):
            self.error(event.message, code="inference_failed", type_="server_error")

    def committed(self, index: int) -> None:
        item_id, previous = self.item_id, self.previous_item_id
        self.items[index] = (item_id, previous)
        self.previous_item_id, self.item_id, self.sent_delta = item_id, rt.new_id("item"), ""
        self.send(rt.BufferCommitted(item_id=item_id, previous_item_id=previous))
        self.send(rt.ItemAdded(item=rt.Item(id=item_id), previous_item_id=previous))

    def completed(self, event: Final) -> None:
        if event.utterance is None:
            return
        item_id, previous = self.items.pop(event.utterance.index)
        if event.outcome is None:
            exc = event.error or errors.InferenceError("the utterance could not be transcribed")
            detail = rt.ErrorDetail(type="server_error", code=exc.code, message=exc.message)
            self.send(rt.TranscriptionFailed(item_id=item_id, error=detail))
            return
        text = event.outcome.transcript.text
        usage = rt.DurationUsage(seconds=round(event.utterance.duration_s, 3))
        self.send(rt.TranscriptionCompleted(item_id=item_id, transcript=text, usage=usage))
        done = rt.Item(id=item_id, content=[rt.InputAudio(transcript=text)])
        self.send(rt.ItemDone(item=done, previous_item_id=previous))

    def finalize(self) -> None:
        """At the stream's end: commit what is buffered, if it is long enough to be an item."""
        assert self._session is not None
        self._session.append(self.audio.flush())  # the resampler's delayed tail belongs to this item
        self._session.end_utterance(min_s=MIN_COMMIT_MS / 1000)

    # --- client events -----------------------------------------------------------------------------------

    async def step(self) -> None:
        assert self.reader is not None
        payload = await self.reader.receive()
        if isinstance(payload, bytes):
            self.reader.bad_message()
            self.error("binary frames are not part of this protocol: send JSON events (audio as base64 in "
                       "input_audio_buffer.append)", code="invalid_message")  # fmt: skip
            return
        try:
            raw = json.loads(payload)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self.reader.bad_message()
            self.error(f"the message is not a JSON object: {exc}", code="invalid_json")
            return
        event = rt.ClientEvent.model_validate(raw)
        try:
            self.handle(event.type, raw)
            self.reader.good_message()
        except BadEvent as exc:
            self.reader.bad_message()
            self.error(exc.message, code=exc.code, param=exc.param, event_id=event.event_id)
        except errors.ParakeetError as exc:  # a session that could not be reopened (e.g. the stream limit)
            self.error(exc.message, code=exc.code, event_id=event.event_id, type_="server_error")

    def handle(self, kind: Any, raw: dict[str, Any]) -> None:
        assert self._session is not None
        if kind == "input_audio_buffer.append":
            self.append(raw)
        elif kind in ("input_audio_buffer.commit", "response.create"):
            self.commit()
        elif kind == "input_audio_buffer.clear":
            self._session.reset()
            self.audio.reset()
            self.sent_delta = ""
            self.send(rt.BufferCleared())
        elif kind == "session.update":
            self.update(raw)
            self.send(rt.SessionUpdated(session=self.config))
        elif kind == "transcription_session.update":
            self.update_beta(raw)
            self.send(rt.BetaSessionUpdated(session=rt.BetaSession.of(self.config)))
        else:
            raise BadEvent(f"unknown or unsupported event type {kind!r}", code="unknown_event", param="type")

    def append(self, raw: dict[str, Any]) -> None:
        assert self._session is not None
        try:
            audio = rt.AppendEvent.model_validate(raw).audio
        except ValidationError:
            raise BadEvent("input_audio_buffer.append needs `audio`: base64 audio bytes", param="audio") from None
        try:
            data = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise BadEvent("`audio` is not valid base64", code="invalid_base64", param="audio") from None
        self._session.append(self.audio.convert(data))

    def commit(self) -> None:
        assert self._session is not None
        self._session.append(self.audio.flush())  # the resampler's delayed tail belongs to the item being committed
        got_ms = self._session.utterance_s * 1000
        if self._session.end_utterance(min_s=MIN_COMMIT_MS / 1000) is None:
            raise BadEvent(
                f"buffer too small. Expected at least {MIN_COMMIT_MS}ms of audio, but buffer only has {got_ms:.2f}ms "
                "of audio.",
                code="input_audio_buffer_commit_empty",
            )

    def update(self, raw: dict[str, Any]) -> None:
        try:
            session = rt.SessionUpdateEvent.model_validate(raw).session
        except ValidationError:
            raise BadEvent("session.update needs a `session` object", param="session") from None
        if session.get("type", "transcription") != "transcription":
            raise BadEvent("this server offers transcription sessions only (session.type = 'transcription')",
                           param="session.type")  # fmt: skip
        new = self.config.model_dump()
        audio_in = (session.get("audio") or {}).get("input") or {}
        for key in ("format", "transcription", "noise_reduction", "turn_detection"):
            if key in audio_in:
                new["audio"]["input"][key] = audio_in[key]
        if "include" in session:
            new["include"] = session["include"] or []
        self.apply(new)

    def update_beta(self, raw: dict[str, Any]) -> None:
        try:
            session = rt.SessionUpdateEvent.model_validate(raw).session
            update = rt.BetaSessionUpdate.model_validate(session)
        except ValidationError:
            raise BadEvent("transcription_session.update needs a `session` object", param="session") from None
        new = self.config.model_dump()
        target = new["audio"]["input"]
        if update.input_audio_format is not None:
            fmt = rt.BETA_FORMATS.get(update.input_audio_format)
            if fmt is None:
                raise BadEvent(f"input_audio_format {update.input_audio_format!r} is not supported; use pcm16, "
                               "g711_ulaw or g711_alaw", param="session.input_audio_format")  # fmt: skip
            target["format"] = fmt.model_dump()
        fields = {"input_audio_transcription": "transcription", "turn_detection": "turn_detection",
                  "input_audio_noise_reduction": "noise_reduction"}  # fmt: skip
        for beta, ga in fields.items():
            if beta in update.model_fields_set:
                target[ga] = getattr(update, beta)
        self.apply(new)

    def apply(self, new: dict[str, Any]) -> None:
        try:
            config = rt.SessionConfig.model_validate(new)
        except ValidationError as exc:
            message, param = rt.first_problem(exc, "session")
            raise BadEvent(message, param=param) from None
        old_in, new_in = self.config.audio.input, config.audio.input
        try:
            keywords = _keywords(config)
            self.worker.check_key_phrases(keywords)
            changed_keywords = keywords != _keywords(self.config)
        except errors.BadRequest as exc:
            raise BadEvent(exc.message, param=f"session.audio.input.transcription.{exc.param}") from None
        reopen = old_in.turn_detection != new_in.turn_detection or old_in.format != new_in.format or changed_keywords
        self.config = config
        if reopen:
            self.open()


def _keywords(config: rt.SessionConfig) -> KeyPhrases | None:
    """The session's key phrases: `keywords` (a list or a comma-separated string) and `keyword_weight` in
    `audio.input.transcription`, an extension of OpenAI's transcription config (README "Custom vocabulary").

    Raises:
        BadRequest: as `parse_key_phrases`, or a value of the wrong type.
    """
    transcription = config.audio.input.transcription or {}
    raw, weight = transcription.get("keywords"), transcription.get("keyword_weight")
    if raw is None and weight is None:
        return None
    values = [] if raw is None else [raw] if isinstance(raw, str) else raw if isinstance(raw, list) else None
    if values is None or not all(isinstance(v, str) for v in values):
        raise errors.BadRequest("keywords must be a list of strings or a comma-separated string", param="keywords")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, int | float)):
        raise errors.BadRequest(f"keyword_weight must be a number, got {str(weight)[:40]!r}", param="keyword_weight")
    return parse_key_phrases(values, None if weight is None else float(weight))


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
    conn.send(rt.SessionCreated(session=conn.config))
    await wsx.serve_stream(websocket, conn, worker.settings.shutdown_drain_s)
