"""parakeet/pipeline/batching.py with a deterministic fake engine: how batches form, where results go, what is dropped,
what fails, and admission limits. Each test runs its own event loop and GPU thread (the arbiter). Orderings are
reached by polling the batcher's and the engine's own state, never by sleeping; nothing asserts how long anything
took."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from parakeet.core.errors import DeadlineExceeded, DeviceOutOfMemory, InferenceError, Overloaded, ShuttingDown
from parakeet.core.settings import Settings
from parakeet.core.tuning import Tuning
from parakeet.pipeline.batch_policy import BatcherConfig as _Config
from parakeet.pipeline.batch_policy import ItemOptions
from parakeet.pipeline.batching import Batcher
from parakeet.pipeline.gpu import GpuArbiter

from fakes import FakeEngine, tagged_wave
from helpers import until

# Longer than pytest's per-test timeout (pyproject.toml): a batcher that waited for this clock would fail
# the test by timing out, so no test needs to assert how long anything took.
BIG_WAIT_MS = 3_600_000.0


def BatcherConfig(**overrides: Any) -> _Config:
    return replace(_Config.from_settings(Settings(), Tuning()), **overrides)


def run_with_batcher(engine: FakeEngine, config: BatcherConfig, body: Callable[[Batcher], Awaitable[Any]]) -> Any:
    async def main() -> Any:
        gpu = GpuArbiter()
        gpu.start()
        batcher = Batcher(engine, gpu, config)
        batcher.start()
        try:
            return await body(batcher)
        finally:
            if engine.gate is not None:
                engine.gate.set()
            await batcher.drain(5)
            await gpu.close()

    return asyncio.run(main())


async def request(batcher: Batcher, tag: int, duration_s: float = 1.0) -> Any:
    ticket = batcher.admit()
    try:
        return await batcher.submit(ticket, tagged_wave(tag, duration_s))
    finally:
        batcher.release(ticket)


def test_batch_forms_when_max_batch_size_is_reached() -> None:
    engine = FakeEngine()
    cfg = BatcherConfig(max_batch_size=4, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(request(b, i) for i in range(4)))  # would hang for an hour on the wait clock

    run_with_batcher(engine, cfg, body)
    assert engine.batches == [[0, 1, 2, 3]]


def test_batch_forms_when_padded_audio_budget_is_reached() -> None:
    engine = FakeEngine()
    cfg = BatcherConfig(max_batch_size=10, max_batch_audio_s=3.0, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> None:
        await asyncio.gather(*(request(b, i, 1.0) for i in range(6)))

    run_with_batcher(engine, cfg, body)
    assert [len(batch) for batch in engine.batches] == [3, 3]


def test_batch_waits_for_a_request_on_its_way() -> None:
    """With the GPU idle and a third admitted request still uploading, the first request waits for company: the
    second, which arrives after the scheduler has seen the first, joins its batch."""
    engine = FakeEngine()
    cfg = BatcherConfig(max_batch_size=10, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> None:
        decoding = b.admit()  # a third request still on its way: worth waiting for
        first = asyncio.ensure_future(request(b, 1))
        await until(lambda: b.waiting_items == 1)
        second = asyncio.ensure_future(request(b, 2))
        await until(lambda: b.waiting_items == 2)
        b.release(decoding)  # it was refused on its way (say, a 415): nothing more will come
        await asyncio.gather(first, second)

    run_with_batcher(engine, cfg, body)
    assert engine.batches == [[1, 2]]


def test_batch_forms_when_max_wait_has_passed() -> None:
    """The request on its way never comes (its ticket is held): the batch starts once max_wait_ms has passed (a
    batcher that waited for the request would hang until pytest's timeout)."""
    engine = FakeEngine()
    cfg = BatcherConfig(max_batch_size=10, max_wait_ms=100)

    async def body(b: Batcher) -> None:
        decoding = b.admit()
        await asyncio.gather(request(b, 1), request(b, 2))
        b.release(decoding)

    run_with_batcher(engine, cfg, body)
    assert engine.batches == [[1, 2]]


def test_idle_gpu_with_nothing_else_on_the_way_starts_at_once() -> None:
    engine = FakeEngine()
    cfg = BatcherConfig(max_batch_size=10, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> None:
        await request(b, 1)  # would hang for an hour if the batcher waited for the batch to fill
        await asyncio.gather(request(b, 2), request(b, 3))  # both queued before the scheduler runs

    run_with_batcher(engine, cfg, body)
    assert engine.batches == [[1], [2, 3]]


def test_batch_stops_waiting_when_the_request_on_its_way_is_answered_elsewhere() -> None:
    engine = FakeEngine()
    cfg = BatcherConfig(max_batch_size=10, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> None:
        decoding = b.admit()
        first = asyncio.ensure_future(request(b, 1))
        await until(lambda: b.waiting_items == 1)
        assert not first.done()  # waiting for the request on its way
        b.release(decoding)  # e.g. its upload was refused (415): nothing more will come
        await first

    run_with_batcher(engine, cfg, body)
    assert engine.batches == [[1]]


def test_max_batch_size_one_reproduces_one_request_at_a_time_in_arrival_order() -> None:
    engine = FakeEngine(per_item_s=0.01)
    cfg = BatcherConfig(max_batch_size=1, max_wait_ms=0)

    async def body(b: Batcher) -> list[Any]:
        arrived: list[int] = []

        async def arrive(i: int) -> Any:
            arrived.append(i)  # the request is queued in this same step (admit + submit run to their first await)
            return await request(b, i, 1.0 + (i % 3))

        tasks = []
        for i in range(6):
            tasks.append(asyncio.ensure_future(arrive(i)))
            await until(lambda i=i: len(arrived) == i + 1)  # arrival order 0..5
        return await asyncio.gather(*tasks)

    results = run_with_batcher(engine, cfg, body)
    assert engine.batches == [[i] for i in range(6)]
    assert all(r.batch_size == 1 for r in results)


def test_results_go_back_to_the_right_request() -> None:
    engine = FakeEngine(per_item_s=0.001)
    cfg = BatcherConfig(max_batch_size=5, max_wait_ms=20)

    async def body(b: Batcher) -> list[Any]:
        return await asyncio.gather(*(request(b, i, 0.5 + (i % 7) * 0.3) for i in range(40)))

    results = run_with_batcher(engine, cfg, body)
    for i, r in enumerate(results):
        assert r.transcript.text == f"{i} {int((0.5 + (i % 7) * 0.3) * 16000)}"
    assert sorted(t for batch in engine.batches for t in batch) == list(range(40))
    assert max(len(batch) for batch in engine.batches) <= 5


def test_batches_group_similar_lengths_around_the_oldest_request() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    cfg = BatcherConfig(max_batch_size=3, max_wait_ms=0)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(request(b, 99, 1.0))  # occupies the GPU until the gate opens
        await until(lambda: engine.timestamps_asked)
        lengths = {1: 10.0, 2: 2.0, 3: 9.5, 4: 2.2, 5: 9.8, 6: 2.1}
        waiting = []
        for tag, duration in lengths.items():  # arrival order as listed
            waiting.append(asyncio.ensure_future(request(b, tag, duration)))
            n = len(waiting)
            await until(lambda n=n: b.waiting_items == n)
        gate.set()
        await asyncio.gather(first, *waiting)

    run_with_batcher(engine, cfg, body)
    assert engine.batches[0] == [99]
    # the oldest waiting item (tag 1, 10 s) goes first, with the two closest in length (9.5 s, 9.8 s)
    assert sorted(engine.batches[1]) == [1, 3, 5]
    assert sorted(engine.batches[2]) == [2, 4, 6]


def test_cancelled_request_never_reaches_the_engine() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    cfg = BatcherConfig(max_batch_size=8, max_wait_ms=0)

    async def body(b: Batcher) -> Any:
        first = asyncio.ensure_future(request(b, 1))
        await until(lambda: engine.timestamps_asked)  # batch [1] is running, blocked on the gate
        gone = asyncio.ensure_future(request(b, 2))
        stays = asyncio.ensure_future(request(b, 3))
        await until(lambda: b.waiting_items == 2)
        gone.cancel()  # the client went away while waiting
        await until(lambda: gone.done())
        gate.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await gone
        return await stays

    result = run_with_batcher(engine, cfg, body)
    assert result.transcript.text.startswith("3 ")
    assert all(2 not in batch for batch in engine.batches)
    assert engine.batches == [[1], [3]]


def test_engine_error_fails_only_its_batch_and_the_loop_keeps_serving() -> None:
    engine = FakeEngine(fail_tag=13)
    cfg = BatcherConfig(max_batch_size=2, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> list[Any]:
        outcomes = await asyncio.gather(*(request(b, t) for t in (13, 14, 15, 16)), return_exceptions=True)
        later = await asyncio.gather(request(b, 17), request(b, 18))
        return [*outcomes, *later]

    out = run_with_batcher(engine, cfg, body)
    assert isinstance(out[0], InferenceError) and isinstance(out[1], InferenceError)
    assert [r.transcript.text.split()[0] for r in out[2:]] == ["15", "16", "17", "18"]


def test_device_out_of_memory_splits_the_batch_and_retries_the_halves() -> None:
    engine = FakeEngine(oom_above=2)
    cfg = BatcherConfig(max_batch_size=8, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> tuple[list[Any], int]:
        results = await asyncio.gather(*(request(b, i) for i in range(8)))
        return results, b.stats.oom_splits

    results, splits = run_with_batcher(engine, cfg, body)
    assert [r.transcript.text.split()[0] for r in results] == [str(i) for i in range(8)]
    assert [len(batch) for batch in engine.batches] == [2, 2, 2, 2]
    assert splits == 3  # 8 -> 4+4 -> 2+2+2+2
    assert all(r.batch_size == 8 for r in results)


def test_queue_full_in_requests_is_refused_with_retry_after() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    cfg = BatcherConfig(max_batch_size=1, max_wait_ms=0, max_queue_requests=3)

    async def body(b: Batcher) -> Overloaded:
        tickets = [b.admit() for _ in range(3)]
        with pytest.raises(Overloaded) as info:
            b.admit()
        for t in tickets:
            b.release(t)
        b.release(b.admit())  # room again
        return info.value

    err = run_with_batcher(engine, cfg, body)
    assert "3 requests queued, the limit is 3" in err.message
    assert 1 <= err.retry_after_s <= 120


def test_queue_full_in_audio_seconds_is_refused() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    cfg = BatcherConfig(max_batch_size=1, max_wait_ms=0, max_queue_audio_s=20)

    async def body(b: Batcher) -> Overloaded:
        waiting = [asyncio.ensure_future(request(b, i, 8.0)) for i in range(3)]
        await until(lambda: b.queued_audio_s >= 24)  # 24 s of audio waiting or running
        with pytest.raises(Overloaded) as info:
            b.admit()
        gate.set()
        await asyncio.gather(*waiting)
        return info.value

    err = run_with_batcher(engine, cfg, body)
    assert "24 s of audio queued, the limit is 20 s" in err.message


def test_retry_after_follows_the_work_ahead() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    cfg = BatcherConfig(max_batch_size=1, max_wait_ms=0)

    async def body(b: Batcher) -> int:
        b.stats.observe(audio_s=10.0, compute_s=1.0, batch_size=1)  # RTFx 10
        waiting = [asyncio.ensure_future(request(b, i, 10.0)) for i in range(5)]
        await until(lambda: b.queued_audio_s >= 50)
        ahead = b.retry_after_s()
        gate.set()
        await asyncio.gather(*waiting)
        return ahead

    assert run_with_batcher(engine, cfg, body) == 5  # 50 s of audio at RTFx 10


def test_request_past_its_deadline_is_dropped_with_503() -> None:
    gate = threading.Event()
    engine = FakeEngine(gate=gate)
    cfg = BatcherConfig(max_batch_size=1, max_wait_ms=0, request_timeout_s=0.3)

    async def body(b: Batcher) -> Any:
        first = asyncio.ensure_future(request(b, 1))
        await until(lambda: engine.timestamps_asked)
        late = asyncio.ensure_future(request(b, 2))
        await until(lambda: late.done())  # refused at its deadline while the GPU was still busy
        gate.set()
        await first
        return await asyncio.gather(late, return_exceptions=True)

    (outcome,) = run_with_batcher(engine, cfg, body)
    assert isinstance(outcome, DeadlineExceeded)
    assert "longer than the limit of 0.3 s" in outcome.message and outcome.retry_after_s >= 1
    assert engine.batches == [[1]]


def test_drain_answers_admitted_requests_and_refuses_new_ones() -> None:
    engine = FakeEngine(delay_s=0.05)
    cfg = BatcherConfig(max_batch_size=2, max_wait_ms=0)

    async def body(b: Batcher) -> tuple[list[Any], bool]:
        tasks = [asyncio.ensure_future(request(b, i)) for i in range(5)]
        await until(lambda: b.queued_requests == 5)
        drained = await b.drain(5)
        with pytest.raises(ShuttingDown):
            b.admit()
        return await asyncio.gather(*tasks), drained

    results, drained = run_with_batcher(engine, cfg, body)
    assert drained and [r.transcript.text.split()[0] for r in results] == ["0", "1", "2", "3", "4"]


def test_engine_returning_the_wrong_number_of_transcripts_fails_its_batch_and_the_loop_keeps_serving() -> None:
    engine = FakeEngine(short_by=1)
    cfg = BatcherConfig(max_batch_size=2, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> tuple[list[Any], Any]:
        broken = await asyncio.gather(request(b, 1), request(b, 2), return_exceptions=True)
        engine.short_by = 0
        ok = await asyncio.gather(request(b, 3), request(b, 4))
        return broken, ok

    broken, ok = run_with_batcher(engine, cfg, body)
    assert [type(e) for e in broken] == [InferenceError, InferenceError]
    assert "returned 1 transcripts for a batch of 2" in str(broken[0].__cause__)
    assert [r.transcript.text for r in ok] == ["3 16000", "4 16000"]
    assert engine.batches == [[1, 2], [3, 4]]


def test_device_out_of_memory_on_a_request_alone_is_reported_as_such() -> None:
    engine = FakeEngine(oom_above=0)  # even a batch of one runs out of memory
    cfg = BatcherConfig(max_batch_size=2, max_wait_ms=BIG_WAIT_MS)

    async def body(b: Batcher) -> list[Any]:
        return await asyncio.gather(request(b, 1), request(b, 2), return_exceptions=True)

    out = run_with_batcher(engine, cfg, body)
    assert [type(e) for e in out] == [DeviceOutOfMemory, DeviceOutOfMemory]  # 503 + Retry-After, not a 500
    assert "ran out of memory on this request alone" in out[0].message


def test_priority_item_jumps_older_waiting_items() -> None:
    """A live stream's final (priority) goes into the next batch ahead of uploads that queued before it."""
    engine = FakeEngine(gate=threading.Event())
    cfg = BatcherConfig(max_batch_size=1, max_wait_ms=0)

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(request(b, 0))
        await until(lambda: engine.timestamps_asked)  # batch [0] is on the GPU thread, held by the gate
        ordinary = [asyncio.ensure_future(request(b, i)) for i in (1, 2)]
        await until(lambda: b.waiting_items == 2)
        ticket = b.admit(reserved=True)
        final = asyncio.ensure_future(b.submit(ticket, tagged_wave(3, 1.0), ItemOptions(lane="final")))
        await until(lambda: b.waiting_items == 3)
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, final, *ordinary)
        b.release(ticket)

    run_with_batcher(engine, cfg, body)
    assert engine.batches == [[0], [3], [1], [2]]


def test_background_items_wait_behind_live_requests_and_fill_their_batches() -> None:
    """A stored job's chunks (background) queued first; a live request that arrives later goes into the next batch
    (it waits behind only the batch already running), and the background items fill what room that batch has."""
    engine = FakeEngine(gate=threading.Event())

    async def body(b: Batcher) -> None:
        first = asyncio.ensure_future(request(b, 0))
        await until(lambda: engine.timestamps_asked)  # batch [0] holds the GPU thread
        ticket = b.admit()
        jobs = [
            asyncio.ensure_future(b.submit(ticket, tagged_wave(t, 1.0), ItemOptions(lane="background")))
            for t in (10, 11, 12)
        ]
        await until(lambda: b.waiting_items == 3)
        live = asyncio.ensure_future(request(b, 5))
        await until(lambda: b.waiting_items == 4)
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.gather(first, live, *jobs)
        b.release(ticket)

    run_with_batcher(engine, BatcherConfig(max_batch_size=2, max_wait_ms=0), body)
    assert engine.batches[0] == [0] and 5 in engine.batches[1]  # the live request: the very next batch
    assert sorted(t for batch in engine.batches[1:] for t in batch) == [5, 10, 11, 12]
    assert len(engine.batches[1]) == 2  # with a job's chunk as fill


def test_reserved_admission_ignores_the_queue_limits_but_counts() -> None:
    cfg = BatcherConfig(max_queue_requests=1)

    async def body(b: Batcher) -> int:
        upload = b.admit()
        with pytest.raises(Overloaded):
            b.admit()
        final = b.admit(reserved=True)  # the utterance of a stream admitted at connect
        held = b.queued_requests
        b.release(upload)
        b.release(final)
        return held

    assert run_with_batcher(FakeEngine(), cfg, body) == 2
