"""The model layer's output records: transcripts with word, segment and character timestamps.

Plain dataclasses with no torch, shared by the engine (parakeet/engine/, which fills them), the pipeline's
long-audio merge and the API's response formats (which serialise them).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class TimedSpan:
    """A word, segment or character (subword token) with its start and end in seconds from the clip start.

    `confidence` (words and tokens, when asked for): NeMo's greedy-decoding confidence in [0, 1] (README
    "Confidence"). `logprob` (tokens): the natural log of the token's probability under the joint network."""

    text: str
    start_s: float
    end_s: float
    confidence: float | None = None
    logprob: float | None = None

    def shifted(self, offset_s: float) -> TimedSpan:
        return replace(self, start_s=self.start_s + offset_s, end_s=self.end_s + offset_s)


@dataclass(frozen=True)
class Transcript:
    """One hypothesis.

    Attributes:
        text: the decoded text.
        num_tokens: number of emitted tokens.
        encoder_frames: encoder frames of this item (0.08 s each for Parakeet: 10 ms hop x 8 subsampling).
        words, segments, chars: timestamps from the TDT decoder's frame offsets (`parakeet.core.timestamps`,
            equal to NeMo's `compute_rnnt_timestamps` + `process_timestamp_outputs`); empty when not computed.
    """

    text: str
    num_tokens: int
    encoder_frames: int
    words: tuple[TimedSpan, ...] = ()
    segments: tuple[TimedSpan, ...] = ()
    chars: tuple[TimedSpan, ...] = ()


@dataclass(frozen=True)
class BatchResult:
    """A batch's transcripts (in input order) and its compute time (milliseconds, wall clock)."""

    transcripts: list[Transcript]
    compute_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)  # where compute_ms went, if the engine says


def transcript_record(t: Transcript) -> dict[str, Any]:
    """`t` as plain JSON values (`transcript_of` reads it back; a job's saved chunks use it)."""

    def span(x: TimedSpan) -> list[Any]:
        return [x.text, x.start_s, x.end_s, x.confidence, x.logprob]

    return {"text": t.text, "num_tokens": t.num_tokens, "encoder_frames": t.encoder_frames,
            "words": [span(w) for w in t.words], "segments": [span(x) for x in t.segments],
            "chars": [span(c) for c in t.chars]}  # fmt: skip


def transcript_of(record: dict[str, Any]) -> Transcript:
    """The Transcript a `transcript_record` holds."""

    def spans(key: str) -> tuple[TimedSpan, ...]:
        return tuple(TimedSpan(*x) for x in record[key])

    return Transcript(record["text"], int(record["num_tokens"]), int(record["encoder_frames"]), spans("words"),
                      spans("segments"), spans("chars"))  # fmt: skip
