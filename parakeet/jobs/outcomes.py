"""A finished job's outcome as the JSON its row keeps, stored once and rendered when the result is read
(parakeet.api.formats). The transcript with all its timestamps, the audio's summary, the model, the speakers and the
run's own figures (its batch, chunks, times and GPU), so every format renders exactly what the synchronous route
would have answered."""

from __future__ import annotations

from typing import Any

from parakeet.core.speakers import Speakers, SpeakerTurn
from parakeet.core.transcripts import TimedSpan, transcript_of, transcript_record
from parakeet.pipeline.requests import AudioSummary, Outcome


def outcome_record(outcome: Outcome, gpu_id: int | None) -> dict[str, Any]:
    """`outcome` (of a run on GPU `gpu_id`, None: the CPU) as plain JSON values; `outcome_of` reads it back."""
    sp = outcome.speakers
    speakers = None if sp is None else {
        "words": list(sp.words),
        "turns": [[t.speaker, t.start_s, t.end_s, [_span(w) for w in t.words]] for t in sp.turns],
    }  # fmt: skip
    a = outcome.audio
    return {
        "transcript": transcript_record(outcome.transcript),
        "audio": [a.duration_s, a.source_sample_rate_hz, a.source_channels], "model": outcome.model,
        "decode_ms": outcome.decode_ms, "queue_ms": outcome.queue_ms, "compute_ms": outcome.compute_ms,
        "batch_size": outcome.batch_size, "chunks": outcome.chunks, "speakers": speakers, "gpu_id": gpu_id,
    }  # fmt: skip


def outcome_of(record: dict[str, Any]) -> tuple[Outcome, int | None]:
    """The Outcome an `outcome_record` holds, and the GPU it ran on."""
    sp = record["speakers"]
    speakers = None if sp is None else Speakers(
        tuple(sp["words"]),
        tuple(SpeakerTurn(s, a, b, tuple(TimedSpan(*w) for w in words)) for s, a, b, words in sp["turns"]),
    )  # fmt: skip
    duration_s, rate, channels = record["audio"]
    outcome = Outcome(
        transcript=transcript_of(record["transcript"]), audio=AudioSummary(float(duration_s), int(rate), int(channels)),
        model=record["model"], decode_ms=record["decode_ms"], queue_ms=record["queue_ms"],
        compute_ms=record["compute_ms"], batch_size=record["batch_size"], chunks=record["chunks"], speakers=speakers,
    )  # fmt: skip
    return outcome, record["gpu_id"]


def _span(x: TimedSpan) -> list[Any]:
    return [x.text, x.start_s, x.end_s, x.confidence, x.logprob]
