"""The windows and limits of live streams: the presets (chunk, right and left context) and their size in encoder
frames. Read by the scheduler and the sessions (parakeet.pipeline.stream_scheduler, stream_session)."""

from __future__ import annotations

from dataclasses import dataclass

from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.core.settings import Settings
from parakeet.core.tuning import Tuning

# (chunk, right context, left context) in ms. balanced: chunk = right = 480 ms gave finals equal to offline on
# the digits model (docs/streaming.md); accurate: NVIDIA's streaming config for parakeet-tdt-0.6b-v3
# (NVIDIA-NeMo/Speech examples/asr/conf/asr_streaming_inference/parakeet_tdt_0.6b_v3.yaml: 9.6 / 0.8 / 1.6 s).
PRESETS_MS = {
    "low-latency": (240.0, 160.0, 4000.0),
    "balanced": (480.0, 480.0, 4000.0),
    "accurate": (800.0, 1600.0, 9600.0),
}


@dataclass(frozen=True)
class StreamConfig:
    """Streaming limits and windows (README "Settings": PARAKEET_STREAM_*; the rest from `Tuning`)."""

    chunk_ms: float
    right_context_ms: float
    left_context_ms: float
    max_streams: int
    max_step_batch: int
    max_catchup_chunks: int
    max_lag_s: float
    max_utterance_s: float

    @classmethod
    def from_settings(cls, s: Settings, tuning: Tuning) -> StreamConfig:
        chunk, right, left = PRESETS_MS[s.stream_preset]
        return cls(
            chunk_ms=chunk,
            right_context_ms=right,
            left_context_ms=left,
            max_streams=s.stream_max_streams,
            max_step_batch=tuning.stream_max_step_batch,
            max_catchup_chunks=tuning.stream_max_catchup_chunks,
            max_lag_s=tuning.stream_max_lag_s,
            max_utterance_s=tuning.stream_max_utterance_s,
        )


@dataclass(frozen=True)
class StreamGeometry:
    """The windows in encoder frames (`frame_samples` input samples each: 1280 = 80 ms for Parakeet)."""

    frame_samples: int
    chunk_frames: int
    right_frames: int
    left_frames: int

    @classmethod
    def of(cls, config: StreamConfig, frame_samples: int) -> StreamGeometry:
        frame_ms = frame_samples * 1000 / SAMPLE_RATE_HZ
        return cls(
            frame_samples,
            max(1, round(config.chunk_ms / frame_ms)),
            round(config.right_context_ms / frame_ms),
            round(config.left_context_ms / frame_ms),
        )
