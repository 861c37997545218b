"""`WS /ws`: the simple live-transcription protocol (binary PCM16 in, JSON partials and finals out), and
`GET /status` (its clients' health check). README "Live streaming" documents the protocol.

Client -> server: binary frames of PCM16LE mono 16 kHz audio of any size (an odd trailing byte carries over to the
next frame); a frame (binary or text) exactly equal to `__CTRL__:EOS` ends the utterance and asks for its final at
once, `__CTRL__:RESET` discards it. Server -> client: `{"type": "partial", "text", "audio_s"}` when the text changes,
`{"type": "final", "text", "audio_s", "start_s", "final_ms", "queue_ms", "compute_ms"[, "words"]}` per utterance,
and `{"type": "error", "code", "message"}`. Query: `vad=1` ends utterances at pauses too (`vad_threshold`,
`vad_silence_ms`, `vad_prefix_ms` tune it); `timestamps=1` adds words; `keywords` (repeatable, comma lists) and
`keyword_weight` boost phrases in the partials and finals (README "Custom vocabulary"). A thin adapter: the session
(parakeet.pipeline.stream_session) does the streaming and the finals.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, WebSocket
from fastapi.responses import PlainTextResponse

from parakeet.api import websockets as wsx
from parakeet.core import errors
from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.core.keywords import KeyPhrases, parse_key_phrases
from parakeet.pipeline.stream_audio import StreamAudio
from parakeet.pipeline.stream_session import Final, Partial, StepFailed, StreamEvent, StreamSession
from parakeet.pipeline.vad import VadParams
from parakeet.pipeline.worker import Worker

router = APIRouter(tags=["streaming"])

EOS = b"__CTRL__:EOS"
RESET = b"__CTRL__:RESET"
_VAD = VadParams()  # the defaults (OpenAI's server_vad defaults: parakeet/pipeline/vad.py)


@router.get("/status", response_class=PlainTextResponse, summary="Liveness for /ws clients: `ok`")
async def status() -> str:
    return "ok"


def error_event(detail: wsx.Message) -> wsx.Message:
    return {"type": "error", **detail}


def final_message(event: Final, timestamps: bool) -> wsx.Message:
    """The `final` message of one utterance: its offline transcript (or an `error` message)."""
    if event.error is not None:
        return error_event({"code": event.error.code, "message": event.error.message})
    if event.outcome is None or event.utterance is None:
        return {"type": "final", "text": "", "audio_s": 0.0, "final_ms": 0.0, "queue_ms": 0.0, "compute_ms": 0.0}
    outcome, utterance = event.outcome, event.utterance
    message: wsx.Message = {
        "type": "final",
        "text": outcome.transcript.text,
        "audio_s": round(utterance.duration_s, 3),
        "start_s": round(utterance.start_sample / SAMPLE_RATE_HZ, 3),
        "final_ms": round(event.final_ms, 1),
        "queue_ms": round(outcome.queue_ms, 1),
        "compute_ms": round(outcome.compute_ms, 1),
    }
    if timestamps:
        message["words"] = [{"word": w.text, "start": w.start_s, "end": w.end_s} for w in outcome.transcript.words]
    return message


class WsStream:
    """One `/ws` connection (implements `websockets.StreamProtocol`)."""

    def __init__(self, websocket: WebSocket, worker: Worker, timestamps: bool) -> None:
        self.websocket, self.worker, self.timestamps = websocket, worker, timestamps
        self.outbox = wsx.Outbox(websocket)
        self.audio = StreamAudio("pcm", SAMPLE_RATE_HZ)
        self._session: StreamSession | None = None
        self.reader: wsx.StreamReader | None = None

    @property
    def session(self) -> StreamSession | None:
        return self._session

    def open(self, vad: VadParams | None, keywords: KeyPhrases | None = None) -> None:
        """Raises: ShuttingDown, NotReady, TooManyStreams, BadRequest (see `Worker.open_stream`)."""
        self._session = self.worker.open_stream(self.on_event, vad=vad, timestamps=self.timestamps, keywords=keywords)
        self.reader = wsx.StreamReader(self.websocket, self.worker.tuning, self._session, self.outbox)

    def on_event(self, event: StreamEvent) -> None:
        if isinstance(event, Partial):
            self.outbox.put_partial({"type": "partial", "text": event.text, "audio_s": round(event.audio_s, 3)})
        elif isinstance(event, Final):
            self.outbox.put(final_message(event, self.timestamps))
        elif isinstance(event, StepFailed):
            self.outbox.put(error_event({"code": "inference_failed", "message": event.message}))

    def finalize(self) -> None:
        assert self._session is not None
        self.audio.reset()
        self._session.end_utterance()

    def error_message(self, detail: wsx.Message) -> wsx.Message:
        return error_event(detail)

    async def step(self) -> None:
        assert self.reader is not None and self._session is not None
        payload = await self.reader.receive()
        raw = payload.encode() if isinstance(payload, str) else payload
        if raw == EOS:
            self.finalize()  # a half sample left at EOS is dropped
        elif raw == RESET:
            self.audio.reset()
            self._session.reset()
        elif isinstance(payload, str):
            self.reader.bad_message()
            message = "text frames must be __CTRL__:EOS or __CTRL__:RESET; send audio as binary PCM16LE mono 16 kHz"
            self.outbox.put(error_event({"code": "invalid_message", "message": message}))
            return
        else:
            self._session.append(self.audio.convert(raw))
        self.reader.good_message()


@router.websocket("/ws")
async def ws_stream(
    websocket: WebSocket,
    vad: bool = False,
    timestamps: bool = False,
    vad_threshold: Annotated[float, Query(gt=0, lt=1)] = _VAD.threshold,
    vad_silence_ms: Annotated[float, Query(ge=0)] = _VAD.silence_duration_ms,
    vad_prefix_ms: Annotated[float, Query(ge=0)] = _VAD.prefix_padding_ms,
    keywords: Annotated[list[str] | None, Query()] = None,
    keyword_weight: float | None = None,
) -> None:
    worker: Worker = websocket.app.state.worker
    await wsx.accept(websocket)
    stream = WsStream(websocket, worker, timestamps)
    try:
        phrases = parse_key_phrases(keywords or [], keyword_weight)
        stream.open(VadParams(vad_threshold, vad_prefix_ms, vad_silence_ms) if vad else None, phrases)
    except errors.ParakeetError as exc:
        stream.outbox.put(error_event({"code": exc.code, "message": exc.message}))
        await stream.outbox.flush(5.0)
        await wsx.close(websocket, wsx.refusal_code(exc), exc.code)
        return
    await wsx.serve_stream(websocket, stream, worker.settings.shutdown_drain_s)
