"""A waveform through the batcher: whole up to the long-audio threshold, as NeMo would run it; longer audio cut at
quiet points into chunks (parakeet.pipeline.long_audio) that go through the batcher like any request, a few in
flight at a time, so short requests interleave with a long one. Used by every request and by the finals of live
streams. No HTTP, no tensors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from parakeet.core.engine import SAMPLE_RATE_HZ, Waveform
from parakeet.core.settings import Settings
from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.core.tuning import Tuning
from parakeet.pipeline.batch_policy import ItemOptions
from parakeet.pipeline.batching import Batcher, ItemResult, Ticket
from parakeet.pipeline.long_audio import Chunk, kept_spans, merge_transcripts, plan_chunks

# Called with the words of each chunk, in file order and file time, as soon as it and all chunks before it are
# transcribed (one call for audio up to the long-audio threshold): streamed responses send them on at once.
WordsCallback = Callable[[Sequence[TimedSpan]], None]


@dataclass(frozen=True)
class LongAudioConfig:
    """README "Long audio": the threshold and the cut plan, from `Tuning`."""

    threshold_s: float
    chunk_s: float
    context_s: float
    search_s: float
    chunks_in_flight: int

    @classmethod
    def from_settings(cls, s: Settings, tuning: Tuning) -> LongAudioConfig:
        return cls(
            tuning.long_audio_threshold_s,
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


@dataclass
class ChunkCheckpoint:
    """What a resumed transcription reuses: `done` maps a chunk's index to its (start, end) samples and transcript
    from an earlier run; a saved chunk is reused only where this run's plan has the same chunk there (the plan is
    a function of the audio and the long-audio settings). `on_chunk(index, chunk, transcript)` is called for each
    chunk this run transcribes, in file order."""

    done: dict[int, tuple[int, int, Transcript]]
    on_chunk: Callable[[int, Chunk, Transcript], None]

    def reusable(self, plan: list[Chunk]) -> dict[int, Transcript]:
        return {i: t for i, (start, end, t) in self.done.items()
                if i < len(plan) and (plan[i].start, plan[i].end) == (start, end)}  # fmt: skip


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
        options: ItemOptions,
        *,
        on_words: WordsCallback | None = None,
        checkpoint: ChunkCheckpoint | None = None,
    ) -> Transcribed:
        """Transcribe `waveform` (float32 mono 16 kHz [T], T >= 1) under `ticket` (held by the caller).

        Args:
            options: what every chunk asks of the engine and its lane (`ItemOptions`); long audio computes
                timestamps anyway (its chunks are merged by them).
            on_words: see `WordsCallback` (needs timestamps).
            checkpoint: chunks a previous run of the same audio finished (reused, not sent to the GPU: a resumed
                job), and a callback for each chunk this run finishes.

        Raises:
            DeadlineExceeded, InferenceError, DeviceOutOfMemory: from the batcher; a failed chunk cancels the rest.
            asyncio.CancelledError: the caller was cancelled; queued chunks are dropped before the GPU.
        """
        chunks = self.plan(waveform)
        slots = asyncio.Semaphore(self.config.chunks_in_flight)
        # merge_transcripts places words by time (confidence implies timestamps in the engine itself)
        per_chunk = replace(options, timestamps=options.timestamps or len(chunks) > 1)

        async def one(piece: Waveform) -> ItemResult:
            async with slots:
                return await self.batcher.submit(ticket, piece, per_chunk)

        saved = checkpoint.reusable(chunks) if checkpoint is not None else {}
        tasks = [asyncio.ensure_future(_reused(saved[i]) if i in saved else one(waveform[c.start : c.end]))
                 for i, c in enumerate(chunks)]  # fmt: skip
        results = await _in_file_order(chunks, tasks, on_words, checkpoint, set(saved))
        return Transcribed(
            transcript=merge_transcripts(chunks, [r.transcript for r in results]),
            queue_ms=results[0].queue_ms,
            compute_ms=sum(r.compute_ms for r in results),
            batch_size=max(1, max(r.batch_size for r in results)),
            chunks=len(chunks),
        )


async def _reused(t: Transcript) -> ItemResult:
    return ItemResult(t, 0.0, 0.0, 0)


async def _in_file_order(
    chunks: list[Chunk], tasks: Sequence[asyncio.Future[ItemResult]], on_words: WordsCallback | None,
    checkpoint: ChunkCheckpoint | None, reused: set[int],
) -> list[ItemResult]:  # fmt: skip
    """The chunks' results in file order (they all run at once), each reported as it is known; a failed chunk
    cancels its siblings (they must not go on to the GPU for nothing)."""
    results: list[ItemResult] = []
    try:
        for i, (chunk, task) in enumerate(zip(chunks, tasks, strict=True)):
            results.append(await task)
            if checkpoint is not None and i not in reused:
                checkpoint.on_chunk(i, chunk, results[-1].transcript)
            if on_words is not None:
                on_words(kept_spans(results[-1].transcript.words, chunk))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    return results
