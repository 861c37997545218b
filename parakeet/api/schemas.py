"""Pydantic models of what the HTTP API sends back: transcriptions, health, and the one error envelope.

They document the API (OpenAPI at /docs) and validate responses; request parsing lives in the routes and
`parakeet.api.uploads`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from parakeet.core.speakers import Speakers
from parakeet.core.transcripts import Transcript


class WordTime(BaseModel):
    word: str
    start: float = Field(description="Seconds from the start of the audio.")
    end: float
    confidence: float | None = Field(None, description="With confidence=true: NeMo's word confidence, 0 to 1.")
    speaker: str | None = Field(None, description="With diarize=true: who said it, A, B, ... by first appearance.")


class SegmentTime(BaseModel):
    segment: str
    start: float
    end: float
    speaker: str | None = Field(None, description="With diarize=true: the speaker of most of its words.")


class SpeakerTurnOut(BaseModel):
    speaker: str
    start: float
    end: float
    text: str


class SpeakerSummary(BaseModel):
    speaker: str = Field(description="A, B, ... in order of first appearance.")
    speaking_time_s: float = Field(description="Seconds of this speaker's turns.")


class SpeakersOut(BaseModel):
    """With diarize=true: the speakers and their turns (consecutive words of one speaker)."""

    speakers: list[SpeakerSummary]
    turns: list[SpeakerTurnOut]

    @classmethod
    def of(cls, speakers: Speakers) -> SpeakersOut:
        return cls(
            speakers=[
                SpeakerSummary(speaker=k, speaking_time_s=round(v, 3)) for k, v in speakers.speaking_time.items()
            ],
            turns=[
                SpeakerTurnOut(speaker=t.speaker, start=t.start_s, end=t.end_s, text=t.text) for t in speakers.turns
            ],
        )


class CharTime(BaseModel):
    char: str = Field(description="A character or subword token, as the model emits it.")
    start: float
    end: float
    confidence: float | None = Field(None, description="With confidence=true: the token's confidence, 0 to 1.")
    logprob: float | None = Field(None, description="With confidence=true: the token's log-probability.")


class Timestamps(BaseModel):
    """From the TDT decoder's frame offsets (one encoder frame = 0.08 s)."""

    word: list[WordTime]
    segment: list[SegmentTime]
    char: list[CharTime]

    @classmethod
    def of(cls, t: Transcript, speakers: Speakers | None = None) -> Timestamps:
        """`speakers` (diarize=true) puts a `speaker` on every word and segment."""
        labels = speakers.words if speakers is not None else [None] * len(t.words)
        return cls(
            word=[
                WordTime(word=w.text, start=w.start_s, end=w.end_s, confidence=w.confidence, speaker=label)
                for w, label in zip(t.words, labels, strict=True)
            ],
            segment=[
                SegmentTime(
                    segment=s.text,
                    start=s.start_s,
                    end=s.end_s,
                    speaker=speakers.of_span(t.words, s.start_s, s.end_s) if speakers else None,
                )
                for s in t.segments
            ],  # fmt: skip
            char=[
                CharTime(char=c.text, start=c.start_s, end=c.end_s, confidence=c.confidence, logprob=c.logprob)
                for c in t.chars
            ],
        )


class TranscriptionResponse(BaseModel):
    """Answer of POST /transcribe."""

    text: str = Field(description="The transcript.")
    duration_sec: float = Field(description="Duration of the decoded audio, seconds.")
    processing_time_ms: float = Field(description="Server time from request start to response, ms.")
    gpu_id: int | None = Field(description="GPU index that ran the model; null on CPU.")
    model: str = Field(description="The served model.")
    request_id: str = Field(description="Also in the X-Request-Id header; quote it in bug reports.")
    decode_ms: float = Field(description="Time spent decoding and resampling the upload, ms.")
    queue_ms: float = Field(description="Time waiting for a batch to start, ms (also X-Queue-Ms).")
    compute_ms: float = Field(
        description="Model time of the batch this request ran in (features, encoder, decoding), ms."
    )
    batch_size: int = Field(description="Requests in that batch (also X-Batch-Size); long audio: the largest.")
    chunks: int = Field(1, description="Pieces the audio was transcribed in (1 unless longer than the threshold).")
    source_sample_rate_hz: int = Field(description="The upload's own sample rate, Hz.")
    source_channels: int = Field(description="The upload's channel count (averaged to mono).")
    timestamps: Timestamps | None = Field(None, description="With timestamps=true: word, segment, char.")
    speakers: SpeakersOut | None = Field(None, description="With diarize=true: speakers and turns.")


class DeviceInfo(BaseModel):
    """`parakeet.core.engine.DeviceInfo` on the wire."""

    model_config = ConfigDict(from_attributes=True)

    type: str = Field(description='"cuda" or "cpu".')
    index: int | None = Field(description="CUDA device index in this worker's visible order.")
    name: str = Field(description='GPU name, or "cpu".')
    memory_used_bytes: int | None = Field(description="Device memory in use (all processes), bytes.")
    memory_total_bytes: int | None = Field(description="Device memory, bytes.")
    cuda_graphs: bool = Field(False, description="The TDT decoder runs as CUDA graphs (PARAKEET_CUDA_GRAPHS).")
    cuda_graphs_reason: str = Field(
        "not a CUDA device", description="Why: forced by the setting, the start-up self-check's verdict, or no GPU."
    )
    encoder_backend: str = Field("torch", description='What runs the encoder: "torch" or "onnxruntime".')
    encoder_reason: str = Field("", description="Why: PARAKEET_ENCODER_BACKEND, or the start-up self-check's verdict.")


class HealthResponse(BaseModel):
    """Answer of GET /health: 200 when ready, 503 otherwise (same body)."""

    status: str = Field(description='"ok", "loading", "shutting_down" or "failed".')
    ready: bool = Field(description="True once the model is loaded and warmed up.")
    model: str
    diarization_model: str | None = Field(
        None, description="The speaker diarization model (PARAKEET_DIARIZATION_MODEL); null: no diarization."
    )
    jobs: bool = Field(False, description="Transcription jobs are on (PARAKEET_JOBS): POST /v1/jobs and the rest.")
    gpu_id: int | None = Field(description="Claimed GPU index; null on CPU.")
    gpu_slot: int | None = Field(
        None, description="Which of the GPU's worker slots (PARAKEET_WORKERS_PER_GPU); null on CPU."
    )
    device: DeviceInfo | None = Field(description="Null until the model is loaded.")
    worker_pid: int
    uptime_s: float
    requests_served: int = Field(description="Successful transcriptions by this worker.")
    queued_requests: int = Field(0, description="Requests in the GPU queue (audio in hand), not yet answered.")
    uploads_in_progress: int = Field(0, description="Request bodies being received (not yet in the GPU queue).")
    inflight_audio_bytes: int = Field(0, description="Request audio held now (uploads, decoded waveforms), bytes.")
    queued_audio_s: float = Field(0.0, description="Audio waiting for or in the GPU, seconds.")
    mean_batch_size: float | None = Field(None, description="Over the last 1000 batches.")
    batches: int = Field(0, description="Batches run by this worker.")
    dropped_requests: int = Field(0, description="Requests dropped before the GPU: client gone, or past deadline.")
    failed_batches: int = Field(0, description="Batches that raised (their requests got 500).")
    streams_open: int = Field(
        0, description="Open live streams (/ws, /v1/realtime, Wyoming utterances being streamed) on this worker."
    )
    streams_refused: int = Field(0, description="Streams refused at connect for the stream limit.")
    stream_steps: int = Field(0, description="Batched streaming steps run.")
    mean_step_batch: float | None = Field(None, description="Streams per step, over the last 1000 steps.")
    step_compute_ms_p95: float | None = Field(None, description="Engine time per step, p95 of the last 1000, ms.")
    max_stream_lag_s: float = Field(0.0, description="The most unprocessed audio of any open stream, seconds.")
    detail: str | None = Field(None, description="Why the worker is not ready, when it is not.")


class ProbeResponse(BaseModel):
    """Answer of the liveness and readiness probes (NVIDIA NIM's `health.response` shape, plus the pid)."""

    object: str = "health.response"
    status: str = Field(description='"live"; or "ready", "not_ready" (loading, failed) or "draining".')
    message: str = Field(description="Why, in words (the model, or what it is waiting for).")
    worker_pid: int = Field(description="The worker that answered (several workers share one port).")


class ErrorDetail(BaseModel):
    message: str = Field(description="What went wrong, naming the limit and the value where there is one.")
    type: str = Field(description="invalid_request_error, service_unavailable_error or server_error.")
    param: str | None = Field(None, description="The request field at fault, if any.")
    code: str | None = Field(None, description="Stable machine-readable reason, e.g. audio_too_long.")


class ErrorResponse(BaseModel):
    """Every error, whatever its status: OpenAI's envelope."""

    error: ErrorDetail
