"""parakeet/pipeline/stream_scheduler.py and stream_session.py with the fake engine: how steps are cut and batched,
catch-up, backpressure, RESET and disconnect during a step in flight, the stream limit, failing steps and VAD, and
the order of events: each utterance's `Final` (its offline transcription, here a fake one the test controls) comes
before anything of the next utterance. Each test runs its own loop, GPU thread (the arbiter) and VAD thread;
orderings are reached by polling state, never by sleeping."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from parakeet.core.errors import InferenceError, TooManyStreams
from parakeet.core.settings import Settings
from parakeet.core.transcripts import Transcript
from parakeet.core.tuning import Tuning
from parakeet.pipeline.gpu import GpuArbiter
from parakeet.pipeline.requests import AudioSummary, Outcome
from parakeet.pipeline.stream_config import StreamConfig
from parakeet.pipeline.stream_scheduler import StreamScheduler
from parakeet.pipeline.stream_session import Final, Partial, StepFailed, StreamEvent, UtteranceEnded
from parakeet.pipeline.vad import VadParams

from fakes import FakeEngine
from helpers import until

FRAME = 1280  # samples per encoder frame (the fake says so too)
CFG = replace(
    StreamConfig.from_settings(Settings(stream_max_streams=3), Tuning(stream_max_lag_s=2.0)),
    chunk_ms=480, right_context_ms=480, left_context_ms=4000,
)  # fmt: skip


class Finals:
    """A fake offline transcription of utterances: "final <samples>", held until `release()` when gated."""

    def __init__(self, gated: bool = False) -> None:
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()
        self.asked: list[int] = []
        self.fail = False

    async def __call__(self, waveform: np.ndarray, timestamps: bool, keywords: object = None) -> Outcome:
        self.asked.append(len(waveform))
        await self.gate.wait()
        if self.fail:
            raise InferenceError("inference failed for this request's batch")
        transcript = Transcript(f"final {len(waveform)}", 1, 0)
        return Outcome(transcript, AudioSummary(len(waveform) / 16000, 16000, 1), "fake", 0, 0, 0, 1, 1)


def run_scheduler(
    engine: FakeEngine,
    body: Callable[[StreamScheduler], Awaitable[Any]],
    cfg: StreamConfig = CFG,
    vad: Any = None,
    finals: Finals | None = None,
) -> Any:
    async def main() -> Any:
        gpu = GpuArbiter()
        gpu.start()
        with ThreadPoolExecutor(1) as vad_thread:
            scheduler = StreamScheduler(
                engine, gpu, (vad, vad_thread) if vad is not None else None, cfg, finals or Finals()
            )
            scheduler.start()
            try:
                return await body(scheduler)
            finally:
                if engine.gate is not None:
                    engine.gate.set()
                scheduler.stop()
                await gpu.close()

    return asyncio.run(main())


def audio(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * 16000), np.float32)


def test_a_step_waits_for_a_whole_chunk_plus_right_context() -> None:
    engine = FakeEngine()

    async def body(s: StreamScheduler) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        session = s.open(events.append)
        session.append(audio(11 * FRAME / 16000))  # one frame short of chunk (6) + right (6)
        assert session.step_request(0.0) is None and engine.steps == []
        session.append(audio(FRAME / 16000))
        await until(lambda: events)
        return events

    events = run_scheduler(engine, body)
    (req,) = engine.steps[0]
    assert (len(req.window), req.left_frames, req.commit_frames, req.state) == (12 * FRAME, 0, 6, None)
    assert events == [Partial(str(12 * FRAME), "", 12 * FRAME / 16000)]


def test_a_stream_behind_catches_up_in_bigger_steps_with_left_context() -> None:
    engine = FakeEngine()

    async def body(s: StreamScheduler) -> None:
        session = s.open(lambda e: None)
        session.append(audio(100 * FRAME / 16000))
        await until(lambda: s.stats.steps == 4)

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
        await until(lambda: engine.steps)  # held at the gate
        for session in sessions:
            session.append(audio(12 * FRAME / 16000))  # the other two become ready while the step runs
        assert engine.gate is not None
        engine.gate.set()
        await until(lambda: len(engine.steps) == 2)

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
        await until(lambda: engine.steps)
        a.reset()
        b.close()
        assert engine.gate is not None
        engine.gate.set()
        await until(lambda: s.stats.steps == 1)  # the step's results came back (and were dropped)
        return events_a, events_b, s.open_streams

    events_a, events_b, open_streams = run_scheduler(engine, body)
    assert len(engine.steps) == 1 and len(engine.steps[0]) == 2
    assert events_a == [] and events_b == []
    assert open_streams == 1


def test_backpressure_room_closes_past_max_lag_and_reopens_at_half() -> None:
    engine = FakeEngine(gate=threading.Event())

    async def body(s: StreamScheduler) -> list[bool]:
        session = s.open(lambda e: None)
        seen = [session.has_room]
        session.append(audio(3.0))  # 3 s unprocessed > 2 s
        seen.append(session.has_room)
        assert engine.gate is not None
        engine.gate.set()
        await asyncio.wait_for(session.wait_for_room(), 10)
        seen.append(session.has_room)
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


def test_end_utterance_returns_its_audio_then_its_final_and_starts_the_next() -> None:
    async def body(s: StreamScheduler) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        session = s.open(events.append)
        first = np.arange(16000, dtype=np.float32)
        session.append(first)
        utterance = session.end_utterance()
        assert utterance is not None
        np.testing.assert_array_equal(utterance.waveform, first)
        assert (utterance.start_sample, utterance.end_sample, utterance.index) == (0, 16000, 0)
        session.append(audio(0.5))
        second = session.end_utterance()
        assert second is not None and (second.start_sample, second.end_sample, second.index) == (16000, 24000, 1)
        assert await session.wait_finals(10)
        return events

    events = run_scheduler(FakeEngine(), body)
    kinds = [(type(e).__name__, getattr(e, "reason", None)) for e in events if not isinstance(e, Partial)]
    assert kinds == [("UtteranceEnded", "client"), ("Final", None)] * 2
    finals = [e for e in events if isinstance(e, Final)]
    assert [f.outcome.transcript.text for f in finals if f.outcome] == ["final 16000", "final 8000"]


def test_nothing_of_the_next_utterance_overtakes_a_final_and_waiting_partials_collapse() -> None:
    """The first utterance's final is held (its transcription waits): the next utterance's partials and its own end
    queue behind it, the partials collapsed into the latest; then everything follows in order."""
    engine = FakeEngine()
    finals = Finals(gated=True)

    async def body(s: StreamScheduler) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        session = s.open(events.append)
        session.append(audio(12 * FRAME / 16000))
        await until(lambda: s.stats.steps == 1)  # its one step (chunk + right context) is done
        session.end_utterance()
        delivered = len(events)  # its partial and its UtteranceEnded
        for k in range(4):  # the next utterance streams on: 4 x 6 frames, a step at 12, 18 and 24 frames
            session.append(audio(6 * FRAME / 16000))
            await until(lambda k=k: s.stats.steps == 1 + max(0, k))
        session.end_utterance()
        assert len(events) == delivered  # all held behind the first final
        finals.gate.set()
        assert await session.wait_finals(10)
        return events

    events = run_scheduler(engine, body, finals=finals)
    kinds = [type(e).__name__ for e in events]
    first_final = kinds.index("Final")
    assert kinds[first_final - 1] == "UtteranceEnded" and kinds.count("Final") == 2
    after = kinds[first_final + 1 :]
    assert after == ["Partial", "UtteranceEnded", "Final"]  # the partials that waited: only the latest
    partials = [e for e in events[first_final + 1 :] if isinstance(e, Partial)]
    assert partials[0].text == str(len(engine.steps[-1][0].window))  # the latest text


def test_a_closed_stream_cancels_its_pending_finals() -> None:
    finals = Finals(gated=True)

    async def body(s: StreamScheduler) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        session = s.open(events.append)
        session.append(audio(1.0))
        session.end_utterance()
        await until(lambda: finals.asked)
        session.close()  # the client left: its final must not reach the listener (nor, in the worker, the GPU)
        finals.gate.set()
        assert session.pending_finals == 0
        return events

    events = run_scheduler(FakeEngine(), body, finals=finals)
    assert [type(e).__name__ for e in events] == ["UtteranceEnded"]


def test_a_failed_final_is_an_event_with_its_error_and_a_short_commit_is_discarded() -> None:
    finals = Finals()
    finals.fail = True

    async def body(s: StreamScheduler) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        session = s.open(events.append)
        session.append(audio(0.05))
        assert session.end_utterance(min_s=0.1) is None  # below the minimum: discarded, no event
        assert session.utterance_s == 0.0
        session.append(audio(0.5))
        assert session.end_utterance(min_s=0.1) is not None
        await session.wait_finals(10)
        return events

    events = run_scheduler(FakeEngine(), body, finals=finals)
    assert [type(e).__name__ for e in events] == ["UtteranceEnded", "Final"]
    final = events[1]
    assert isinstance(final, Final) and final.outcome is None and isinstance(final.error, InferenceError)


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
        await until(lambda: len(events) == 3)
        assert session.step_request(0.0) is None  # no fourth step for it
        return events, session.has_room, session.lag_s

    events, room, lag = run_scheduler(engine, body)
    assert len(engine.steps) == 3  # then no more steps for it
    assert [type(e).__name__ for e in events] == ["StepFailed"] * 3
    assert room and lag == 0.0  # its reader is not held back for partials that will not come


def test_a_failing_vad_is_dropped_after_three_tries_and_the_stream_goes_on() -> None:
    class BrokenVad:
        frame_samples = 512
        calls = 0

        def speech_probs(self, frames: Any, states: Any) -> Any:
            BrokenVad.calls += 1
            raise RuntimeError("vad broke")

    engine = FakeEngine()

    async def body(s: StreamScheduler) -> tuple[list[StreamEvent], bool]:
        events: list[StreamEvent] = []
        session = s.open(events.append, vad=VadParams())
        session.append(audio(3.0))  # past the 2 s lag limit: only VAD progress could open the room
        await until(lambda: session.vad is None and engine.steps and session.has_room)
        return events, session.has_room

    events, room = run_scheduler(engine, body, vad=BrokenVad())
    assert BrokenVad.calls == 3
    failed = [e for e in events if isinstance(e, StepFailed)]
    assert any("voice activity detection failed" in e.message for e in failed)
    assert engine.steps and room  # the stream streams on without VAD, and its reader is not held
    assert not any(isinstance(e, UtteranceEnded) for e in events)


def test_a_partials_only_stream_is_never_cut_and_keeps_only_the_left_context_it_needs() -> None:
    """`finals=False` (Wyoming's streaming transcripts): past `max_utterance_s` the utterance goes on (no
    `UtteranceEnded`, no final asked); its steps see the same windows as a stream that keeps all its audio."""
    engine, finals = FakeEngine(), Finals()
    cfg = replace(CFG, max_utterance_s=2.0)

    async def body(s: StreamScheduler) -> list[StreamEvent]:
        events: list[StreamEvent] = []
        session = s.open(events.append, finals=False)
        for n in range(1, 15):  # 14 steps of 6 frames, 6.2 s in all: past the 2 s limit
            session.append(audio(6 * FRAME / 16000) if n > 1 else audio(12 * FRAME / 16000))
            await until(lambda n=n: s.stats.steps == n)
        assert session.held_samples == (50 + 6) * FRAME  # the next window's left context (capped) and its 6 new
        session.close()
        return events

    events = run_scheduler(engine, body, cfg, finals=finals)
    assert not any(isinstance(e, UtteranceEnded | Final) for e in events) and finals.asked == []
    lefts = [step[0].left_frames for step in engine.steps]
    assert lefts == [0, 6, 12, 18, 24, 30, 36, 42, 48, 50, 50, 50, 50, 50]  # all there (4000 ms = 50 frames cap)
    assert [len(step[0].window) for step in engine.steps] == [(left + 12) * FRAME for left in lefts]
