"""parakeet/pipeline/diarization.py: files that wait for the diarizer while it is busy go in one batch (the oldest
and its nearest in length, within the caps), each caller gets its own file's segments, a batch that does not fit
is split, a failure fails only its batch, a caller that left is dropped before the GPU, and close fails the rest.
The diarizer is tests/fakes.py FakeDiarizer (tags in the first sample); a gate holds the GPU thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from parakeet.core.errors import DeviceOutOfMemory
from parakeet.pipeline.diarization import DiarizationConfig, DiarizationQueue
from parakeet.pipeline.gpu import GpuArbiter

from fakes import FakeDiarizer, tagged_wave
from helpers import until


def run(diarizer: FakeDiarizer, body: Any, max_batch_size: int = 8, max_batch_audio_s: float = 100.0) -> Any:
    async def main() -> Any:
        gpu = GpuArbiter()
        gpu.start()
        queue = DiarizationQueue(diarizer, gpu, DiarizationConfig(max_batch_size, max_batch_audio_s))
        queue.start()
        try:
            return await body(queue, gpu)
        finally:
            await queue.close()
            await gpu.close()

    return asyncio.run(main())


async def held(queue: DiarizationQueue, gpu: GpuArbiter, diarizer: FakeDiarizer) -> asyncio.Future[Any]:
    """Start a first file (tag 0) and wait until it holds the GPU thread (the diarizer's gate is closed)."""
    first = asyncio.ensure_future(queue.diarize(tagged_wave(0)))
    await until(lambda: gpu.jobs_run["batch"] == 1)
    return first


def test_files_that_wait_while_the_diarizer_runs_share_one_batch_and_get_their_own_segments() -> None:
    diarizer = FakeDiarizer(gate=threading.Event())

    async def body(queue: DiarizationQueue, gpu: GpuArbiter) -> list[Any]:
        first = await held(queue, gpu, diarizer)
        rest = [asyncio.ensure_future(queue.diarize(tagged_wave(tag, 1.0 + tag / 10))) for tag in (1, 2, 3, 5)]
        await until(lambda: queue.waiting_files == 4)
        assert diarizer.batches == []  # all held behind the first
        diarizer.gate.set()  # type: ignore[union-attr]
        return [await first, *[await r for r in rest]]

    results = run(diarizer, body)
    assert diarizer.batches == [[0], [1, 2, 3, 5]]  # the first alone at once; the others together
    assert [r[0].speaker for r in results] == [0, 1, 2, 3, 1]  # each its own (tag % 4)
    assert [r[0].end_s for r in results] == [1.0, 1.1, 1.2, 1.3, 1.5]


def test_batches_keep_the_count_and_padded_audio_caps_and_start_with_the_oldest() -> None:
    diarizer = FakeDiarizer(gate=threading.Event())

    async def body(queue: DiarizationQueue, gpu: GpuArbiter) -> None:
        first = await held(queue, gpu, diarizer)
        lengths = {1: 10.0, 2: 2.0, 3: 9.0, 4: 2.5, 5: 3.0, 6: 10.5}  # arrival order = tag
        rest = [asyncio.ensure_future(queue.diarize(tagged_wave(t, s))) for t, s in lengths.items()]
        await until(lambda: queue.waiting_files == 6)
        diarizer.gate.set()  # type: ignore[union-attr]
        await asyncio.gather(first, *rest)

    run(diarizer, body, max_batch_size=3, max_batch_audio_s=25.0)
    # the oldest (10 s) with its nearest in length, 10.5 s (2 x 10.5 padded; adding 9 s would be 3 x 10.5 > 25);
    # then the oldest left (2 s) with 2.5 s and 3 s (the count cap); then 9 s alone
    assert diarizer.batches == [[0], [1, 6], [2, 4, 5], [3]]


def test_a_batch_that_does_not_fit_is_split_and_a_single_file_that_does_not_fit_fails_alone() -> None:
    diarizer = FakeDiarizer(gate=threading.Event(), oom_above=1)

    async def body(queue: DiarizationQueue, gpu: GpuArbiter) -> None:
        first = await held(queue, gpu, diarizer)
        rest = [asyncio.ensure_future(queue.diarize(tagged_wave(t))) for t in (1, 2, 3)]
        await until(lambda: queue.waiting_files == 3)
        diarizer.gate.set()  # type: ignore[union-attr]
        results = await asyncio.gather(first, *rest)
        assert [r[0].speaker for r in results] == [0, 1, 2, 3]

    run(diarizer, body)
    assert diarizer.batches == [[0], [1], [2], [3]]

    too_big = FakeDiarizer(oom_above=0)

    async def alone(queue: DiarizationQueue, gpu: GpuArbiter) -> None:
        with pytest.raises(DeviceOutOfMemory, match="does not fit"):
            await queue.diarize(tagged_wave(7))
        too_big.oom_above = None  # the device has room again: the queue still serves
        assert (await queue.diarize(tagged_wave(8)))[0].speaker == 0

    run(too_big, alone)


def test_a_failing_batch_fails_only_its_files_and_the_queue_keeps_serving() -> None:
    diarizer = FakeDiarizer(gate=threading.Event(), fail_tag=2)

    async def body(queue: DiarizationQueue, gpu: GpuArbiter) -> None:
        first = await held(queue, gpu, diarizer)
        doomed = [asyncio.ensure_future(queue.diarize(tagged_wave(t))) for t in (1, 2)]
        await until(lambda: queue.waiting_files == 2)
        diarizer.gate.set()  # type: ignore[union-attr]
        assert (await first)[0].speaker == 0
        for d in doomed:
            with pytest.raises(RuntimeError, match="fake diarizer fault on tag 2"):
                await d
        assert (await queue.diarize(tagged_wave(3)))[0].speaker == 3

    run(diarizer, body)
    assert diarizer.batches == [[0], [1, 2], [3]]


def test_a_caller_that_left_is_dropped_before_the_gpu() -> None:
    diarizer = FakeDiarizer(gate=threading.Event())

    async def body(queue: DiarizationQueue, gpu: GpuArbiter) -> None:
        first = await held(queue, gpu, diarizer)
        gone = asyncio.ensure_future(queue.diarize(tagged_wave(1)))
        kept = asyncio.ensure_future(queue.diarize(tagged_wave(2)))
        await until(lambda: queue.waiting_files == 2)
        gone.cancel()
        diarizer.gate.set()  # type: ignore[union-attr]
        await first
        assert (await kept)[0].speaker == 2
        assert gone.cancelled()

    run(diarizer, body)
    assert diarizer.batches == [[0], [2]]


def test_close_fails_the_running_and_the_waiting_files() -> None:
    diarizer = FakeDiarizer(gate=threading.Event())

    async def body(queue: DiarizationQueue, gpu: GpuArbiter) -> None:
        first = await held(queue, gpu, diarizer)
        waiting = asyncio.ensure_future(queue.diarize(tagged_wave(1)))
        await until(lambda: queue.waiting_files == 1)
        await queue.close()
        diarizer.gate.set()  # type: ignore[union-attr]  # (lets the GPU thread finish the job it had started)
        for f in (first, waiting):
            with pytest.raises(RuntimeError, match="shutting down"):
                await f
        with pytest.raises(RuntimeError, match="not running"):
            await queue.diarize(tagged_wave(2))

    run(diarizer, body)


def test_a_batch_runs_in_pieces_and_live_stream_steps_run_between_them() -> None:
    """A diarization batch of three pieces is three turns of the GPU thread; a streaming step that arrives while
    the first piece runs goes before the second (the arbiter alternates), and the pieces are capped at the padded
    audio of one batch."""
    diarizer = FakeDiarizer(pieces=3)
    ran: list[str] = []
    first_piece = threading.Event()
    release = threading.Event()
    real_steps = diarizer.diarize_steps

    def steps(waveforms: Any, cap: float | None = None) -> Any:
        for k, out in enumerate(real_steps(waveforms, cap)):
            ran.append(f"piece {k}")
            if k == 0:
                first_piece.set()
                release.wait(30)
            yield out

    diarizer.diarize_steps = steps  # type: ignore[method-assign]

    async def body(queue: DiarizationQueue, gpu: GpuArbiter) -> None:
        file = asyncio.ensure_future(queue.diarize(tagged_wave(1)))
        await asyncio.get_running_loop().run_in_executor(None, first_piece.wait, 30)
        step = asyncio.ensure_future(gpu.run("step", ran.append, "stream step"))
        await until(lambda: gpu.waiting == 1)
        release.set()
        await step
        assert (await file)[0].speaker == 1

    run(diarizer, body, max_batch_audio_s=42.0)
    assert ran == ["piece 0", "stream step", "piece 1", "piece 2"]
    assert diarizer.step_caps == [42.0]
