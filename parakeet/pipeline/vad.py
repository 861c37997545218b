"""Speech segmentation of a live stream from frame-level speech probabilities (Silero VAD).

The rule is Silero's own streaming `VADIterator` (silero_vad/utils_vad.py in https://github.com/snakers4/silero-vad):
speech starts at the first 32 ms frame with probability >= threshold (reported `prefix_padding` earlier); it ends
once the probability has stayed below threshold - 0.15 for `silence_duration`, at the start of that silence plus
the padding. OpenAI's `server_vad` turn detection has the same three knobs (threshold, prefix_padding_ms,
silence_duration_ms: https://platform.openai.com/docs/api-reference/realtime), so both protocols share it.
This module holds the state machine; the model runs elsewhere (`parakeet.core.engine.VoiceActivityModel`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from parakeet.core.engine import SAMPLE_RATE_HZ

VAD_FRAME_SAMPLES = 512  # Silero VAD at 16 kHz: 32 ms frames
NEGATIVE_OFFSET = 0.15  # VADIterator: speech ends below threshold - 0.15


@dataclass(frozen=True)
class VadParams:
    """Turn detection knobs (OpenAI `server_vad` names).

    Attributes:
        threshold: speech probability that starts speech, in (0, 1).
        prefix_padding_ms: audio kept before the detected start, ms.
        silence_duration_ms: silence that ends speech, ms.
    """

    threshold: float = 0.5
    prefix_padding_ms: float = 300.0
    silence_duration_ms: float = 500.0


@dataclass(frozen=True)
class SpeechBoundary:
    """A start (`is_start`) or an end of speech, at absolute sample `sample` of the stream (16 kHz)."""

    is_start: bool
    sample: int


class VadSegmenter:
    """One stream's segmenter. Feed it one probability per VAD frame, in order (`feed`)."""

    def __init__(self, params: VadParams) -> None:
        self.params = params
        self.model_state: Any = None  # the VoiceActivityModel's opaque state for this stream
        self.position = 0  # samples of the stream consumed so far (a whole number of frames)
        self.triggered = False
        self._silence_start = 0  # absolute sample where the current run of silence began (0: none)
        self._pad = int(params.prefix_padding_ms * SAMPLE_RATE_HZ / 1000)
        self._min_silence = int(params.silence_duration_ms * SAMPLE_RATE_HZ / 1000)

    def feed(self, prob: float) -> SpeechBoundary | None:
        """Advance by one frame with speech probability `prob`; return a boundary if one happened."""
        self.position += VAD_FRAME_SAMPLES
        threshold = self.params.threshold
        if prob >= threshold and self._silence_start:
            self._silence_start = 0
        if prob >= threshold and not self.triggered:
            self.triggered = True
            return SpeechBoundary(True, max(0, self.position - self._pad - VAD_FRAME_SAMPLES))
        if prob < threshold - NEGATIVE_OFFSET and self.triggered:
            if not self._silence_start:
                self._silence_start = self.position
            if self.position - self._silence_start >= self._min_silence:
                end = min(self.position, self._silence_start + self._pad - VAD_FRAME_SAMPLES)
                self._silence_start = 0
                self.triggered = False
                return SpeechBoundary(False, max(end, 0))
        return None
