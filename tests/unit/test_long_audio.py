"""long_audio.py: cuts land in silence, chunks cover the file with context, and merging keeps every word
exactly once in file time."""

from __future__ import annotations

from typing import Any

import numpy as np

from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.pipeline.long_audio import Chunk, merge_transcripts, plan_chunks

SR = 16_000


def speechlike(seconds: float, pauses: list[tuple[float, float]]) -> np.ndarray:
    """Noise everywhere except the given (start, end) pauses, which are silent."""
    w = (0.3 * np.random.default_rng(0).standard_normal(int(seconds * SR))).astype(np.float32)
    for a, b in pauses:
        w[int(a * SR) : int(b * SR)] = 0
    return w


def test_long_audio_short_file_is_one_chunk() -> None:
    chunks = plan_chunks(np.zeros(SR * 50, dtype=np.float32), chunk_s=60, context_s=2, search_s=4)
    assert chunks == [Chunk(0, SR * 50, float("-inf"), float("inf"))]


def test_long_audio_cuts_land_in_the_pauses() -> None:
    pauses = [(57.5, 58.0), (113.0, 113.6), (171.2, 171.5)]
    w = speechlike(200, pauses)
    chunks = plan_chunks(w, chunk_s=60, context_s=2, search_s=4)
    cuts = [c.keep_end_s for c in chunks[:-1]]
    assert len(cuts) == 3
    for cut, (a, b) in zip(cuts, pauses, strict=True):
        assert a <= cut <= b, (cut, a, b)
    # consecutive chunks share the cut; each hears 2 s beyond it; together they cover the file
    for left, right in zip(chunks, chunks[1:], strict=False):
        assert left.keep_end_s == right.keep_start_s
        assert left.end == round(left.keep_end_s * SR) + 2 * SR or left.end == len(w)
        assert right.start == round(right.keep_start_s * SR) - 2 * SR
    assert chunks[0].start == 0 and chunks[-1].end == len(w)
    assert all(c.end - c.start <= (60 + 4) * SR for c in chunks)


def test_long_audio_merge_keeps_each_word_once_in_file_time() -> None:
    chunks = [Chunk(0, 62 * SR, float("-inf"), 60.0), Chunk(58 * SR, 100 * SR, 60.0, float("inf"))]
    # word "b" (59.0-59.5 s) is heard by both chunks; "c" (60.5-61.0 s) too; each must appear once
    first = Transcript(
        "a b c", 3, 0, words=(TimedSpan("a", 10, 10.5), TimedSpan("b", 59, 59.5), TimedSpan("c", 60.5, 61))
    )
    second = Transcript("b c d", 3, 0, words=(TimedSpan("b", 1, 1.5), TimedSpan("c", 2.5, 3), TimedSpan("d", 20, 20.4)))
    merged = merge_transcripts(chunks, [first, second])
    assert merged.text == "a b c d"
    assert [(w.text, w.start_s) for w in merged.words] == [("a", 10), ("b", 59), ("c", 60.5), ("d", 78)]


def test_long_audio_single_chunk_merge_is_the_transcript_itself() -> None:
    t = Transcript("x y", 2, 10, words=(TimedSpan("x", 0, 1), TimedSpan("y", 1, 2)))
    assert merge_transcripts([Chunk(0, SR, float("-inf"), float("inf"))], [t]) is t


def test_a_checkpoint_reuses_the_chunks_an_earlier_run_finished_and_nothing_else() -> None:
    """Transcriber.run with a ChunkCheckpoint: saved chunks whose samples match this run's plan are not sent to the
    engine (a saved chunk with other boundaries is), the merged transcript equals a full run's, and each chunk this
    run transcribes is reported once, in file order."""
    import asyncio
    from dataclasses import replace

    from parakeet.core.settings import Settings
    from parakeet.core.tuning import Tuning
    from parakeet.pipeline.batch_policy import BatcherConfig, ItemOptions
    from parakeet.pipeline.batching import Batcher
    from parakeet.pipeline.gpu import GpuArbiter
    from parakeet.pipeline.transcriber import ChunkCheckpoint, LongAudioConfig, Transcriber

    from fakes import FakeEngine

    wave = speechlike(40, [(9.0, 9.5), (19.0, 19.5), (29.0, 29.5)])
    config = LongAudioConfig(threshold_s=10, chunk_s=10, context_s=1, search_s=2, chunks_in_flight=1)

    async def main(checkpoint: ChunkCheckpoint | None, engine: FakeEngine) -> Any:
        gpu = GpuArbiter()
        gpu.start()
        batcher = Batcher(engine, gpu, replace(BatcherConfig.from_settings(Settings(), Tuning()), max_wait_ms=0))
        batcher.start()
        ticket = batcher.admit()
        try:
            return await Transcriber(batcher, config).run(ticket, wave, ItemOptions(), checkpoint=checkpoint)
        finally:
            batcher.release(ticket)
            await batcher.drain(5)
            await gpu.close()

    full_engine = FakeEngine()
    reported: list[tuple[int, Any]] = []
    keep = ChunkCheckpoint({}, lambda i, c, t: reported.append((i, (c.start, c.end, t))))
    full = asyncio.run(main(keep, full_engine))
    assert [i for i, _ in reported] == list(range(full.chunks)) and full.chunks >= 4
    saved = dict(reported)
    saved[2] = (saved[2][0] + 1, saved[2][1], saved[2][2])  # planned differently: must not be reused
    again: list[int] = []
    engine = FakeEngine()
    resumed = asyncio.run(main(ChunkCheckpoint({0: saved[0], 1: saved[1], 2: saved[2]},
                                               lambda i, c, t: again.append(i)), engine))  # fmt: skip
    assert again == list(range(2, full.chunks)) and sum(len(b) for b in engine.batches) == full.chunks - 2
    assert resumed.transcript == full.transcript and resumed.chunks == full.chunks
