"""The live streams of one worker and what advances them: batched streaming steps on the GPU thread (through the
worker's arbiter, parakeet.pipeline.gpu) and batched VAD on the VAD thread.

Every `chunk` of new audio, a window [left context | chunk | right context] of each ready stream goes through the
encoder and the chunk's frames are decoded from the stream's carried TDT decoder state (`Engine.stream_step`); the
steps of all ready streams run as one batch (docs/streaming.md). This module never sees a socket and never touches
tensors; the sessions are parakeet.pipeline.stream_session.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field

from parakeet.core import errors, metrics
from parakeet.core.engine import Engine, StepRequest, VoiceActivityModel
from parakeet.core.keywords import KeyPhrases
from parakeet.pipeline.gpu import GpuArbiter
from parakeet.pipeline.stream_config import StreamConfig, StreamGeometry
from parakeet.pipeline.stream_session import Finalize, Listener, StreamSession
from parakeet.pipeline.vad import VadParams

log = logging.getLogger("parakeet.streaming")


@dataclass
class StreamStats:
    steps: int = 0
    refused: int = 0
    failed_steps: int = 0
    batch_sizes: list[int] = field(default_factory=list)  # the last 1000
    compute_ms: list[float] = field(default_factory=list)  # the last 1000

    def observe(self, batch_size: int, compute_ms: float) -> None:
        self.steps += 1
        self.batch_sizes.append(batch_size)
        self.compute_ms.append(compute_ms)
        del self.batch_sizes[:-1000], self.compute_ms[:-1000]


class StreamScheduler:
    """Admits streams and advances them (and is each session's `SessionHost`).

    At most one step per stream is in flight; streams whose audio became ready while a step ran form the next
    batch (oldest step first), so batches grow with load and no stream waits more than one step (plus, by the
    arbiter's policy, at most one offline batch).

    Args:
        engine: `stream_step` runs on the GPU thread; `encoder_frame_samples` sets the windows.
        gpu: the worker's GPU thread and its arbiter.
        vad: the speech detector and its own thread, or None (then streams cannot ask for VAD).
        config: limits and windows.
        finalize: the offline transcription of an ended utterance (the worker's batcher).
    """

    def __init__(
        self,
        engine: Engine,
        gpu: GpuArbiter,
        vad: tuple[VoiceActivityModel, Executor] | None,
        config: StreamConfig,
        finalize: Finalize,
    ) -> None:
        self.engine, self.gpu, self.vad, self.config, self.finalize = engine, gpu, vad, config, finalize
        self.geometry = StreamGeometry.of(config, engine.encoder_frame_samples)
        self.sessions: dict[int, StreamSession] = {}
        self.stats = StreamStats()
        self.accepting = True
        self.closing = asyncio.Event()  # set at shutdown: protocols finalize their utterance and close (1001)
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()  # the step loop's
        self._wake_vad = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def open_streams(self) -> int:
        return len(self.sessions)

    @property
    def max_lag_s(self) -> float:
        return max((s.lag_s for s in self.sessions.values()), default=0.0)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._step_loop(), name="stream-steps")]
        if self.vad is not None:
            self._tasks.append(loop.create_task(self._vad_loop(), name="stream-vad"))

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    def begin_shutdown(self) -> None:
        """Refuse new streams; ask open ones to finalize and close."""
        self.accepting = False
        self.closing.set()

    def wake(self) -> None:
        self._wake.set()
        self._wake_vad.set()

    def open(
        self,
        listener: Listener,
        *,
        vad: VadParams | None = None,
        timestamps: bool = False,
        keywords: KeyPhrases | None = None,
        finals: bool = True,
    ) -> StreamSession:
        """Admit a stream.

        Args:
            listener: receives this stream's events (called on the event loop; must not block).
            vad: turn detection for this stream (utterances end at pauses), or None (they end when told).
            timestamps: whether its finals carry word timestamps.
            keywords: phrases boosted in its partials and finals.
            finals: False: partials only (`StreamSession`).

        Raises:
            ShuttingDown: the worker is shutting down.
            TooManyStreams: `max_streams` streams are open.
            BadRequest: VAD asked for but the worker has no VAD model.
        """
        if not self.accepting:
            metrics.STREAMS_REFUSED.labels(reason="shutting_down").inc()
            raise errors.ShuttingDown("the worker is shutting down; reconnect to another worker")
        if len(self.sessions) >= self.config.max_streams:
            self.stats.refused += 1
            metrics.STREAMS_REFUSED.labels(reason="too_many_streams").inc()
            raise errors.TooManyStreams(
                f"this worker has {len(self.sessions)} streams open, the limit is {self.config.max_streams} "
                "(PARAKEET_STREAM_MAX_STREAMS); retry shortly or on another worker"
            )
        if vad is not None and self.vad is None:
            raise errors.BadRequest("voice activity detection is not available on this server")
        session = StreamSession(self, next(self._ids), listener, vad, timestamps, keywords, finals)
        self.sessions[session.id] = session
        metrics.STREAMS_OPEN.set(len(self.sessions))
        return session

    def remove(self, session: StreamSession) -> None:
        """Forget a closed session (StreamSession.close calls it)."""
        self.sessions.pop(session.id, None)
        metrics.STREAMS_OPEN.set(len(self.sessions))

    async def wait_closed(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every open stream to close; True if they all did."""
        deadline = time.monotonic() + timeout_s
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self.sessions

    # --- steps ---------------------------------------------------------------------------------------

    async def _step_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._run_step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("stream step scheduler fault; carrying on")

    async def _run_step(self) -> None:
        now = time.monotonic()
        batch: list[tuple[StreamSession, StepRequest, int]] = []
        for session in sorted(self.sessions.values(), key=lambda s: s.last_step_at):
            request = session.step_request(now)
            if request is not None:
                batch.append((session, request, session.epoch))
                if len(batch) >= self.config.max_step_batch:
                    break
        if not batch:
            return
        try:
            out = await self.gpu.run("step", self.engine.stream_step, [r for _, r, _ in batch])
            if len(out.results) != len(batch):
                raise RuntimeError(f"the engine returned {len(out.results)} step results for {len(batch)} streams")
        except Exception as exc:
            self.stats.failed_steps += 1
            log.error("stream step of %d failed: %s: %s", len(batch), type(exc).__name__, exc, exc_info=exc)
            for session, _, epoch in batch:
                session.step_failed(epoch)
            return
        finally:
            self._wake.set()  # streams that became ready meanwhile, or have a backlog, go next
        self.stats.observe(len(batch), out.compute_ms)
        metrics.STREAM_STEP_BATCH.observe(len(batch))
        metrics.STREAM_STEP_COMPUTE.observe(out.compute_ms / 1000)
        for (session, _, epoch), result in zip(batch, out.results, strict=True):
            session.apply_step(result, epoch)

    # --- VAD -----------------------------------------------------------------------------------------

    async def _vad_loop(self) -> None:
        """One VAD frame of every stream that has one pending per batched call, until none has."""
        while True:
            await self._wake_vad.wait()
            self._wake_vad.clear()
            try:
                while await self._vad_round():
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("VAD fault; carrying on")
                await asyncio.sleep(0.1)
                self._wake_vad.set()  # retry the pending frames (a stream gives up VAD after three failures)

    async def _vad_round(self) -> bool:
        """One batched VAD call over the streams with a frame ready; False if none had one."""
        assert self.vad is not None
        model, executor = self.vad
        pending = [(s, f) for s in list(self.sessions.values()) if (f := s.vad_frame()) is not None]
        if not pending:
            return False
        loop = asyncio.get_running_loop()
        try:
            probs, states = await loop.run_in_executor(
                executor, model.speech_probs, [f for _, f in pending], [s.vad_state for s, _ in pending]
            )
        except Exception:
            for s, _ in pending:  # VAD that keeps failing must not hold its streams' readers for ever
                s.vad_failed()
            raise
        for (s, _), prob, state in zip(pending, probs, states, strict=True):
            s.apply_vad(prob, state)
        return True
