"""The OpenAI Realtime transcription protocol as pydantic models: the session configuration (GA and beta shapes),
the client events this server reads and the server events it sends.

Shapes follow the API reference (https://platform.openai.com/docs/api-reference/realtime-client-events,
.../realtime-server-events) and the official SDK's generated types (openai/types/realtime/, e.g.
`RealtimeTranscriptionSessionCreateResponse`, `InputAudioBufferCommittedEvent`). Turn detection's defaults are the
VAD's (parakeet.pipeline.vad.VadParams: OpenAI's own server_vad defaults). No behaviour lives here.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from parakeet.pipeline.vad import VadParams

PCM_RATES_HZ = (24000, 16000)  # OpenAI's only rate, and 16 kHz as an extension
_VAD = VadParams()


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


class AudioFormat(BaseModel):
    """`audio/pcm` (PCM16 at `rate`), `audio/pcmu` or `audio/pcma` (G.711 at 8 kHz)."""

    model_config = ConfigDict(extra="ignore")

    type: str
    rate: int | None = Field(None, exclude_if=lambda rate: rate is None)

    @field_validator("type")
    @classmethod
    def _known(cls, kind: str) -> str:
        if kind not in ("audio/pcm", "audio/pcmu", "audio/pcma"):
            raise ValueError(f"audio format {kind!r} is not supported; use audio/pcm, audio/pcmu or audio/pcma")
        return kind

    @model_validator(mode="after")
    def _rate(self) -> AudioFormat:
        if self.type == "audio/pcm":
            self.rate = 24000 if self.rate is None else self.rate
            if self.rate not in PCM_RATES_HZ:
                raise ValueError(f"audio/pcm rate {self.rate} is not supported; use 24000 (or 16000)")
        else:
            self.rate = None
        return self


class TurnDetection(BaseModel):
    """Server VAD (`semantic_vad` is treated as server VAD); Silero VAD with these knobs."""

    model_config = ConfigDict(extra="ignore")

    type: str
    threshold: float = _VAD.threshold
    prefix_padding_ms: float = _VAD.prefix_padding_ms
    silence_duration_ms: float = _VAD.silence_duration_ms

    @field_validator("type")
    @classmethod
    def _known(cls, kind: str) -> str:
        if kind not in ("server_vad", "semantic_vad"):
            raise ValueError(
                "turn_detection must be null, or of type server_vad (semantic_vad is treated as server_vad)"
            )
        return kind

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: float) -> float:
        if not 0 < value < 1:
            raise ValueError(f"turn_detection.threshold must be between 0 and 1, got {value:g}")
        return value

    def vad_params(self) -> VadParams:
        return VadParams(self.threshold, self.prefix_padding_ms, self.silence_duration_ms)


class AudioInput(BaseModel):
    """`transcription` and `noise_reduction` are accepted and echoed, not used (Parakeet detects the language)."""

    format: AudioFormat = Field(default_factory=lambda: AudioFormat(type="audio/pcm", rate=24000))
    transcription: dict[str, Any] | None = None
    turn_detection: TurnDetection | None = Field(default_factory=lambda: TurnDetection(type="server_vad"))
    noise_reduction: dict[str, Any] | None = None


class SessionAudio(BaseModel):
    input: AudioInput = Field(default_factory=AudioInput)


class SessionConfig(BaseModel):
    """The transcription session as `session.created` / `session.updated` report it (GA shape)."""

    type: Literal["transcription"] = "transcription"
    id: str = Field(default_factory=lambda: new_id("sess"))
    object: Literal["realtime.transcription_session"] = "realtime.transcription_session"
    audio: SessionAudio = Field(default_factory=SessionAudio)
    include: list[str] = Field(default_factory=list)

    @classmethod
    def default(cls, model: str) -> SessionConfig:
        transcription = {"model": model, "language": None, "prompt": ""}
        return cls(audio=SessionAudio(input=AudioInput(transcription=transcription)))


BETA_FORMATS: dict[str, AudioFormat] = {
    "pcm16": AudioFormat(type="audio/pcm", rate=24000),
    "g711_ulaw": AudioFormat(type="audio/pcmu"),
    "g711_alaw": AudioFormat(type="audio/pcma"),
}


class BetaSession(BaseModel):
    """The same session in the older `transcription_session.*` shape."""

    id: str
    object: Literal["realtime.transcription_session"] = "realtime.transcription_session"
    input_audio_format: str
    input_audio_transcription: dict[str, Any] | None
    turn_detection: TurnDetection | None
    input_audio_noise_reduction: dict[str, Any] | None
    include: list[str]

    @classmethod
    def of(cls, config: SessionConfig) -> BetaSession:
        audio_in = config.audio.input
        fmt = next((k for k, v in BETA_FORMATS.items() if v.type == audio_in.format.type), "pcm16")
        return cls(
            id=config.id, input_audio_format=fmt, input_audio_transcription=audio_in.transcription,
            turn_detection=audio_in.turn_detection, input_audio_noise_reduction=audio_in.noise_reduction,
            include=config.include,
        )  # fmt: skip


# --- client events (only what this server reads of them) ------------------------------------------------------


class ClientEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    type: Any = None
    event_id: str | None = None

    @field_validator("event_id", mode="before")
    @classmethod
    def _text_or_none(cls, value: Any) -> str | None:
        return value if isinstance(value, str) else None


class AppendEvent(ClientEvent):
    audio: str


class SessionUpdateEvent(ClientEvent):
    session: dict[str, Any]


class BetaSessionUpdate(BaseModel):
    """The fields of `transcription_session.update` this server reads."""

    model_config = ConfigDict(extra="ignore")

    input_audio_format: str | None = None
    input_audio_transcription: dict[str, Any] | None = None
    turn_detection: dict[str, Any] | None = None
    input_audio_noise_reduction: dict[str, Any] | None = None


# --- server events --------------------------------------------------------------------------------------------


class ServerEvent(BaseModel):
    event_id: str = Field(default_factory=lambda: new_id("event"))

    def message(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ErrorDetail(BaseModel):
    type: str = "invalid_request_error"
    code: str
    message: str
    param: str | None = None
    event_id: str | None = None


class ErrorEvent(ServerEvent):
    type: Literal["error"] = "error"
    error: ErrorDetail


class SessionCreated(ServerEvent):
    type: Literal["session.created"] = "session.created"
    session: SessionConfig


class SessionUpdated(ServerEvent):
    type: Literal["session.updated"] = "session.updated"
    session: SessionConfig


class BetaSessionUpdated(ServerEvent):
    type: Literal["transcription_session.updated"] = "transcription_session.updated"
    session: BetaSession


class BufferCleared(ServerEvent):
    type: Literal["input_audio_buffer.cleared"] = "input_audio_buffer.cleared"


class SpeechStarted(ServerEvent):
    type: Literal["input_audio_buffer.speech_started"] = "input_audio_buffer.speech_started"
    audio_start_ms: int
    item_id: str


class SpeechStopped(ServerEvent):
    type: Literal["input_audio_buffer.speech_stopped"] = "input_audio_buffer.speech_stopped"
    audio_end_ms: int
    item_id: str


class BufferCommitted(ServerEvent):
    type: Literal["input_audio_buffer.committed"] = "input_audio_buffer.committed"
    item_id: str
    previous_item_id: str | None


class InputAudio(BaseModel):
    type: Literal["input_audio"] = "input_audio"
    transcript: str | None = None


class Item(BaseModel):
    id: str
    object: Literal["realtime.item"] = "realtime.item"
    type: Literal["message"] = "message"
    role: Literal["user"] = "user"
    status: Literal["completed"] = "completed"
    content: list[InputAudio] = Field(default_factory=lambda: [InputAudio()])


class ItemAdded(ServerEvent):
    type: Literal["conversation.item.added"] = "conversation.item.added"
    item: Item
    previous_item_id: str | None


class ItemDone(ServerEvent):
    type: Literal["conversation.item.done"] = "conversation.item.done"
    item: Item
    previous_item_id: str | None


class TranscriptionDelta(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.delta"] = (
        "conversation.item.input_audio_transcription.delta"
    )
    item_id: str
    content_index: int = 0
    delta: str


class DurationUsage(BaseModel):
    type: Literal["duration"] = "duration"
    seconds: float


class TranscriptionCompleted(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.completed"] = (
        "conversation.item.input_audio_transcription.completed"
    )
    item_id: str
    content_index: int = 0
    transcript: str
    usage: DurationUsage


class TranscriptionFailed(ServerEvent):
    type: Literal["conversation.item.input_audio_transcription.failed"] = (
        "conversation.item.input_audio_transcription.failed"
    )
    item_id: str
    content_index: int = 0
    error: ErrorDetail


def first_problem(exc: ValidationError, prefix: str) -> tuple[str, str]:
    """(message, param) of a validation error's first problem: the validator's own sentence, and the field's path
    under `prefix` (e.g. `session.audio.input.format.rate`)."""
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    if err.get("type") == "value_error" and loc and loc[-1] == "format":
        loc.append("rate")  # the format's own (model-level) check is about its rate
    return message, ".".join([prefix, *loc]) if loc else prefix
