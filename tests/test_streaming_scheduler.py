"""parakeet/pipeline/streaming.py with the fake engine: how steps are cut and batched, catch-up, backpressure,
RESET and disconnect during a step in flight, the stream limit. Each test runs its own loop and GPU thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from parakeet.core.errors import TooManyStreams
from parakeet.pipeline.streaming import Partial, StreamConfig, StreamEvent, StreamScheduler, StreamSession

from fakes import FakeEngine

FRAME = 1280  # samples per encoder frame (the fake says so too)
CFG = StreamConfig(chunk_ms=480, right_context_ms=480, left_context_ms=4000, max_streams=3, max_catchup_chunks=4,
                   max_lag_s=2.0)  # fmt: skip


def run_scheduler(
    engine: FakeEngine, body: Callable[[StreamScheduler], Awaitable[Any]], cfg: StreamConfig = CFG
) -> Any:
    async def main() -> Any:
        with ThreadPoolExecutor(1) as gpu, ThreadPoolExecutor(1) as vad:
            scheduler = StreamScheduler(engine, gpu, vad, cfg)
            scheduler.start()
            try:
                return await body(scheduler)
            finally:
                if engine.gate is not None:
                    engine.gate.set()
                scheduler.stop()

    return asyncio.run(main())


def audio(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), np.float32)


async def settle(engine: FakeEngine, steps: int, timeout_s: float = 10.0) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if len(engine.steps) >= steps:
            await asyncio.sleep(0.05)
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"only {len(engine.steps)} steps ran")


def test_a_step_waits_for_a_whole_chunk_plus_right_context() -> None:
    engine = FakeEngine()

    async def body(s: StreamScheduler) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        session = s.open(events.append)
        session.append(audio(11 * FRAME / 16000))  # one frame short of chunk (6) + right (6)
        await asyncio.sleep(0.1)
        assert engine.steps == []
        session.append(audio(FRAME / 16000))
        await settle(engine, 1)
        return events

    events = run_scheduler(engine, body)
    (req,) = engine.steps[0]
    assert (len(req.window), req.left_frames, req.commit_frames, req.state) == (12 * FRAME, 0, 6, None)
    assert events == [Partial(str(12 * FRAME), "", 12 * FRAME / 16000)]


def test_a_stream_behind_catches_up_in_bigger_steps_with_left_context() -> None:
    engine = FakeEngine()

    async def body(s: StreamScheduler) -> StreamSession:
        session = s.open(lambda e: None)
        session.append(audio(100 * FRAME / 16000))
        await settle(engine, 4)
        return session

    run_scheduler(engine, body)
    commits = [step[0].commit_frames for step in engine.steps]
    lefts = [step[0].left_frames for step in engine.steps]
    assert commits == [24, 24, 24, 18]  # at most 4 chunks per step; whole chunks of the 100 - 6 (right) frames
    assert lefts == [0, 24, 48, 50]  # left context capped at 4000 ms = 50 frames
    assert [len(step[0].window) for step in engine.steps] == [f * FRAME for f in (30, 54, 78, 74)]


def test_streams_ready_together_share_one_step() -> None:
    engine = FakeEngine(gate=threading.Event())

    async def body(s: StreamScheduler) -> None:
        sessions = [s.open(lambda e: None) for _ in range(3)]
        sessions[0].append(audio(12 * FRAME / 16000))
        await settle(engine, 1)  # held at the gate
        for session in sessions:
            session.append(audio(12 * FRAME / 16000))  # the other two become ready while the step runs
        assert engine.gate is not None
        engine.gate.set()
        await settle(engine, 2)

    run_scheduler(engine, body)
    assert [len(step) for step in engine.steps] == [1, 3]


def test_reset_or_close_during_a_step_drops_its_result() -> None:
    engine = FakeEngine(gate=threading.Event())

    async def body(s: StreamScheduler) -> tuple[list[StreamEvent], list[StreamEvent], int]:
        events_a: list[StreamEvent] = []
        events_b: list[StreamEvent] = []
        a, b = s.open(events_a.append), s.open(events_b.append)
        a.append(audio(12 * FRAME / 16000))
        b.append(audio(12 * FRAME / 16000))
        await settle(engine, 1)
        a.reset()
        b.close()
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.sleep(0.2)
        return events_a, events_b, s.open_streams

    events_a, events_b, open_streams = run_scheduler(engine, body)
    assert len(engine.steps) == 1 and len(engine.steps[0]) == 2
    assert events_a == [] and events_b == []
    assert open_streams == 1


def test_backpressure_room_closes_past_max_lag_and_reopens_at_half() -> None:
    engine = FakeEngine(gate=threading.Event())

    async def body(s: StreamScheduler) -> list[bool]:
        session = s.open(lambda e: None)
        seen = [session._room.is_set()]
        session.append(audio(3.0))  # 3 s unprocessed > 2 s
        seen.append(session._room.is_set())
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.wait_for(session.wait_for_room(), 10)
        seen.append(session._room.is_set())
        return seen

    assert run_scheduler(engine, body) == [True, False, True]
    assert engine.steps  # the room opened because steps committed the backlog


def test_the_stream_limit_refuses_and_a_closed_stream_frees_its_place() -> None:
    async def body(s: StreamScheduler) -> None:
        sessions = [s.open(lambda e: None) for _ in range(3)]
        with pytest.raises(TooManyStreams, match="limit is 3"):
            s.open(lambda e: None)
        sessions[0].close()
        s.open(lambda e: None)
        assert s.stats.refused == 1

    run_scheduler(FakeEngine(), body)


def test_end_utterance_returns_its_audio_and_starts_the_next() -> None:
    async def body(s: StreamScheduler) -> None:
        session = s.open(lambda e: None)
        first = np.arange(16000, dtype=np.float32)
        session.append(first)
        utterance = session.end_utterance()
        assert utterance is not None
        np.testing.assert_array_equal(utterance.waveform, first)
        assert (utterance.start_sample, utterance.end_sample) == (0, 16000)
        session.append(audio(0.5))
        second = session.end_utterance()
        assert second is not None and (second.start_sample, second.end_sample) == (16000, 24000)

    run_scheduler(FakeEngine(), body)


def test_a_stream_whose_steps_keep_failing_stops_stepping_but_is_not_throttled() -> None:
    class FailingEngine(FakeEngine):
        def stream_step(self, requests: Any) -> Any:
            self.steps.append(list(requests))
            raise RuntimeError("broken step")

    engine = FailingEngine()

    async def body(s: StreamScheduler) -> tuple[list[StreamEvent], bool, float]:
        events: list[StreamEvent] = []
        session = s.open(events.append)
        session.append(audio(3.0))  # over the 2 s lag limit: the room closes while steps are expected
        await settle(engine, 3)
        await asyncio.sleep(0.2)
        return events, session._room.is_set(), session.lag_s

    events, room, lag = run_scheduler(engine, body)
    assert len(engine.steps) == 3  # then no more steps for it
    assert [type(e).__name__ for e in events] == ["StepFailed"] * 3
    assert room and lag == 0.0  # its reader is not held back for partials that will not come


def test_a_failing_vad_is_dropped_after_three_tries_and_the_stream_goes_on() -> None:
    from parakeet.pipeline.vad import VadParams

    class BrokenVad:
        frame_samples = 512
        calls = 0

        def speech_probs(self, frames: Any, states: Any) -> Any:
            BrokenVad.calls += 1
            raise RuntimeError("vad broke")

    engine = FakeEngine()
    engine.vad = BrokenVad()

    async def body(s: StreamScheduler) -> tuple[list[StreamEvent], bool]:
        events: list[StreamEvent] = []
        session = s.open(events.append, vad=VadParams())
        session.append(audio(3.0))  # past the 2 s lag limit: only VAD progress could open the room
        for _ in range(100):
            if session.vad is None and engine.steps and session._room.is_set():
                break
            await asyncio.sleep(0.05)
        return events, session._room.is_set()

    events, room = run_scheduler(engine, body)
    assert BrokenVad.calls == 3
    assert any(isinstance(e, type(events[0])) and "voice activity detection failed" in getattr(e, "message", "")
               for e in events)  # fmt: skip
    assert engine.steps and room  # the stream streams on without VAD, and its reader is not held
