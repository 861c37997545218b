"""A waveform through the batcher: whole up to the long-audio threshold, as NeMo would run it; longer audio cut at
quiet points into chunks (parakeet.pipeline.long_audio) that go through the batcher like any request, a few in
flight at a time, so short requests interleave with a long one. Used by every request and by the finals of live
streams. No HTTP, no tensors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from parakeet.core.engine import SAMPLE_RATE_HZ, Waveform
from parakeet.core.keywords import KeyPhrases
from parakeet.core.settings import Settings
from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.core.tuning import Tuning
from parakeet.pipeline.batching import Batcher, ItemResult, Ticket
from parakeet.pipeline.long_audio import Chunk, kept_spans, merge_transcripts, plan_chunks

# Called with the words of each chunk, in file order and file time, as soon as it and all chunks before it are
# transcribed (one call for audio up to the long-audio threshold): streamed responses send them on at once.
WordsCallback = Callable[[Sequence[TimedSpan]], None]


@dataclass(frozen=True)
class LongAudioConfig:
    """README "Long audio": `threshold_s` from the settings, the cut plan from `Tuning`."""

    threshold_s: float
    chunk_s: float
    context_s: float
    search_s: float
    chunks_in_flight: int

    @classmethod
    def from_settings(cls, s: Settings, tuning: Tuning) -> LongAudioConfig:
        return cls(
            s.long_audio_threshold_s,
            tuning.long_audio_chunk_s,
            tuning.long_audio_context_s,
            tuning.long_audio_search_s,
            tuning.long_audio_chunks_in_flight,
        )


@dataclass(frozen=True)
class Transcribed:
    """A waveform's transcript and where the time went: the first chunk's queue wait, the engine time summed over
    chunks, the largest batch it ran in, and how many chunks it took."""

    transcript: Transcript
    queue_ms: float
    compute_ms: float
    batch_size: int
    chunks: int


class Transcriber:
    def __init__(self, batcher: Batcher, config: LongAudioConfig) -> None:
        self.batcher, self.config = batcher, config

    def plan(self, waveform: Waveform) -> list[Chunk]:
        """One chunk up to the threshold; otherwise cuts at quiet points (`plan_chunks`)."""
        cfg = self.config
        if len(waveform) <= cfg.threshold_s * SAMPLE_RATE_HZ:
            return [Chunk(0, len(waveform), float("-inf"), float("inf"))]
        return plan_chunks(waveform, cfg.chunk_s, cfg.context_s, cfg.search_s)

    async def run(
        self,
        ticket: Ticket,
        waveform: Waveform,
        *,
        timestamps: bool,
        confidence: bool = False,
        priority: bool = False,
        on_words: WordsCallback | None = None,
        keywords: KeyPhrases | None = None,
    ) -> Transcribed:
        """Transcribe `waveform` (float32 mono 16 kHz [T], T >= 1) under `ticket` (held by the caller).

        Args:
            timestamps: word/segment/char timestamps wanted (long audio computes them anyway: its chunks are merged
                by them).
            confidence: word/token confidence and token log-probabilities (implies timestamps).
            priority: the batcher forms its next batch around this one (a live stream's final).
            on_words: see `WordsCallback` (needs timestamps).
            keywords: phrases to boost, in every chunk.

        Raises:
            DeadlineExceeded, InferenceError, DeviceOutOfMemory: from the batcher; a failed chunk cancels the rest.
            asyncio.CancelledError: the caller was cancelled; queued chunks are dropped before the GPU.
        """
        chunks = self.plan(waveform)
        slots = asyncio.Semaphore(self.config.chunks_in_flight)
        with_times = timestamps or confidence or len(chunks) > 1  # merge_transcripts places words by time

        async def one(piece: Waveform) -> ItemResult:
            async with slots:
                return await self.batcher.submit(
                    ticket, piece, timestamps=with_times, priority=priority, confidence=confidence, keywords=keywords
                )

        tasks = [asyncio.ensure_future(one(waveform[c.start : c.end])) for c in chunks]
        results: list[ItemResult] = []
        try:
            for chunk, task in zip(chunks, tasks, strict=True):  # all run at once; answered in file order
                results.append(await task)
                if on_words is not None:
                    on_words(kept_spans(results[-1].transcript.words, chunk))
        except BaseException:
            for task in tasks:  # one chunk failed: its siblings must not go on to the GPU for nothing
                task.cancel()
            raise
        return Transcribed(
            transcript=merge_transcripts(chunks, [r.transcript for r in results]),
            queue_ms=results[0].queue_ms,
            compute_ms=sum(r.compute_ms for r in results),
            batch_size=max(r.batch_size for r in results),
            chunks=len(chunks),
        )
