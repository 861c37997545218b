"""Live streams of one worker: per-stream audio and decoder state, and the scheduler that advances them.

Two passes (docs/streaming.md). Partials come from buffered chunked streaming: every `chunk` of new audio, a window
[left context | chunk | right context] goes through the encoder and the chunk's frames are decoded from the
stream's carried TDT decoder state (`Engine.stream_step`); the steps of all ready streams of the worker run as one
batch on the worker's single GPU thread, between offline batches. The final of an utterance is NOT built from
the partials: the caller sends the utterance's audio through the offline batcher (`Worker.transcribe_waveform`),
so it equals `/transcribe` on the same samples.

Protocols (parakeet.api.routes.streams) own the sockets; this module never sees one, and never touches tensors.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from parakeet.core import errors, metrics
from parakeet.core.engine import SAMPLE_RATE_HZ, Engine, StepRequest, StepResult, Waveform
from parakeet.core.settings import Settings
from parakeet.pipeline.vad import VAD_FRAME_SAMPLES, SpeechBoundary, VadParams, VadSegmenter

log = logging.getLogger("parakeet.streaming")

# (chunk, right context, left context) in ms. balanced: chunk = right = 480 ms gave finals equal to offline on
# the digits model (docs/streaming.md); accurate: NVIDIA's streaming config for parakeet-tdt-0.6b-v3
# (NVIDIA-NeMo/Speech examples/asr/conf/asr_streaming_inference/parakeet_tdt_0.6b_v3.yaml: 9.6 / 0.8 / 1.6 s).
PRESETS_MS = {
    "low-latency": (240.0, 160.0, 4000.0),
    "balanced": (480.0, 480.0, 4000.0),
    "accurate": (800.0, 1600.0, 9600.0),
}
MAX_CONSECUTIVE_STEP_FAILURES = 3  # then the stream gets no more partials (its finals still work)


@dataclass(frozen=True)
class StreamConfig:
    """Streaming knobs (README "Settings", PARAKEET_STREAM_*)."""

    chunk_ms: float = 480.0
    right_context_ms: float = 480.0
    left_context_ms: float = 4000.0
    max_streams: int = 64
    max_step_batch: int = 64
    max_catchup_chunks: int = 4
    max_lag_s: float = 10.0
    max_utterance_s: float = 180.0
    vad: VadParams = VadParams()

    @classmethod
    def from_settings(cls, s: Settings) -> StreamConfig:
        chunk, right, left = PRESETS_MS[s.stream_preset]
        return cls(
            chunk_ms=s.stream_chunk_ms if s.stream_chunk_ms is not None else chunk,
            right_context_ms=s.stream_right_context_ms if s.stream_right_context_ms is not None else right,
            left_context_ms=s.stream_left_context_ms if s.stream_left_context_ms is not None else left,
            max_streams=s.stream_max_streams,
            max_step_batch=s.stream_max_step_batch,
            max_catchup_chunks=s.stream_max_catchup_chunks,
            max_lag_s=s.stream_max_lag_s,
            max_utterance_s=s.stream_max_utterance_s,
            vad=VadParams(s.stream_vad_threshold, s.stream_vad_prefix_ms, s.stream_vad_silence_ms),
        )


@dataclass(frozen=True)
class Utterance:
    """A finished utterance's audio. `start_sample`/`end_sample`: its place in the stream (16 kHz samples)."""

    waveform: Waveform
    start_sample: int
    end_sample: int

    @property
    def duration_s(self) -> float:
        return len(self.waveform) / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class Partial:
    """New partial text of the current utterance: `text` (committed + speculative), `committed_text`, and
    `audio_s`: the utterance audio the text covers (committed frames + right context), seconds."""

    text: str
    committed_text: str
    audio_s: float


@dataclass(frozen=True)
class SpeechStarted:
    """VAD: speech began at stream sample `sample` (prefix padding included)."""

    sample: int


@dataclass(frozen=True)
class UtteranceEnded:
    """The stream itself ended an utterance (VAD silence, or `max_utterance_s`); the caller finalizes it."""

    utterance: Utterance
    reason: Literal["vad", "max_length"]


@dataclass(frozen=True)
class StepFailed:
    """A streaming step failed for this stream (its partials stop after a few in a row; finals still work)."""

    message: str


StreamEvent = Partial | SpeechStarted | UtteranceEnded | StepFailed
Listener = Callable[[StreamEvent], None]


class _Samples:
    """A growing float32 buffer addressed by absolute stream sample, with the head droppable."""

    def __init__(self) -> None:
        self._data = np.zeros(SAMPLE_RATE_HZ, dtype=np.float32)
        self.base = 0  # absolute sample of _data[0]
        self.end = 0  # absolute sample one past the last

    def append(self, x: Waveform) -> None:
        n = self.end - self.base
        if n + len(x) > len(self._data):
            grown = np.zeros(max(2 * len(self._data), n + len(x)), dtype=np.float32)
            grown[:n] = self._data[:n]
            self._data = grown
        self._data[n : n + len(x)] = x
        self.end += len(x)

    def slice(self, start: int, stop: int) -> Waveform:
        """Samples [start, stop) (absolute), a copy."""
        return self._data[max(start, self.base) - self.base : stop - self.base].copy()

    def drop_before(self, sample: int) -> None:
        cut = min(max(sample, self.base), self.end) - self.base
        if cut > 0:
            n = self.end - self.base
            self._data[: n - cut] = self._data[cut:n]
            self.base += cut


@dataclass(eq=False)
class StreamSession:
    """One live stream: its audio, the current utterance and its decoder state. Created by `StreamScheduler.open`.

    Feed audio with `append`; end an utterance with `end_utterance` (EOS, commit) or drop it with `reset`; `close`
    when the socket goes. The listener receives `StreamEvent`s from the scheduler (on the event loop; it must not
    block). With VAD, utterances exist only between detected speech start and end.
    """

    scheduler: StreamScheduler
    id: int
    listener: Listener
    vad: VadSegmenter | None
    opened_at: float = field(default_factory=time.monotonic)
    closed: bool = False
    epoch: int = 0  # bumped at every utterance end/reset: step results of an older epoch are discarded
    steps: int = 0
    _audio: _Samples = field(default_factory=_Samples)
    _start: int | None = 0  # absolute sample where the current utterance starts; None: no utterance (VAD silence)
    _frames: int = 0  # encoder frames of the utterance committed so far
    _state: Any = None
    _tokens: tuple[int, ...] = ()
    _text: str = ""
    _in_flight: bool = False
    _vad_in_flight: bool = False
    _failures: int = 0
    _vad_failures: int = 0
    _last_step: float = 0.0
    _room: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self._room.set()
        if self.vad is not None:
            self._start = None

    # --- audio in ------------------------------------------------------------------------------------

    @property
    def received_samples(self) -> int:
        return self._audio.end

    @property
    def in_utterance(self) -> bool:
        return self._start is not None

    def append(self, samples: Waveform) -> None:
        """Add float32 16 kHz samples [N] at the end of the stream; ends the utterance at `max_utterance_s`."""
        if self.closed or len(samples) == 0:
            return
        self._audio.append(samples)
        metrics.STREAM_AUDIO.inc(len(samples) / SAMPLE_RATE_HZ)
        cfg = self.scheduler.config
        if self._start is not None and self._audio.end - self._start >= cfg.max_utterance_s * SAMPLE_RATE_HZ:
            self.listener(UtteranceEnded(self._cut(self._audio.end, keep_open=True), "max_length"))
        self._update_room()
        self.scheduler.wake()

    @property
    def lag_s(self) -> float:
        """Audio received but not yet processed (committed by a step, or read by the VAD), seconds. A stream whose
        steps keep failing has no partials any more and is not throttled for them (its finals still work)."""
        if self._start is not None and self._failures >= MAX_CONSECUTIVE_STEP_FAILURES:
            return 0.0
        if self._start is not None:
            done = self._start + self._frames * self.scheduler.frame_samples
        else:
            done = self.vad.position if self.vad is not None else self._audio.end
        return max(0, self._audio.end - done) / SAMPLE_RATE_HZ

    def _update_room(self) -> None:
        limit = self.scheduler.config.max_lag_s
        if self.lag_s > limit:
            self._room.clear()
        elif self.lag_s <= limit / 2:
            self._room.set()

    async def wait_for_room(self) -> None:
        """Return once this stream's unprocessed audio is at most `max_lag_s` (backpressure: the caller stops
        reading its socket meanwhile, so a client faster than real time is throttled and nothing is dropped)."""
        await self._room.wait()

    # --- utterances ----------------------------------------------------------------------------------

    def end_utterance(self) -> Utterance | None:
        """End the current utterance here (EOS / commit) and return its audio; None if there is none (VAD
        between speech). The next utterance starts at once (without VAD) or at the next detected speech."""
        if self._start is None:
            return None
        return self._cut(self._audio.end, keep_open=self.vad is None)

    def reset(self) -> None:
        """Discard the current utterance: its audio, its decoder state and any step in flight for it."""
        self.epoch += 1
        self._clear_decoder()
        if self.vad is not None:
            self.vad.triggered = False
            self._start = None
        else:
            self._start = self._audio.end
        self._audio.drop_before(self._audio.end)
        self._update_room()

    def _cut(self, end: int, *, keep_open: bool) -> Utterance:
        assert self._start is not None
        start = max(self._start, self._audio.base)
        utterance = Utterance(self._audio.slice(start, end), start, end)
        self.epoch += 1
        self._clear_decoder()
        self._start = end if keep_open else None
        keep_from = end - self._vad_preroll() if self.vad is not None else end
        self._audio.drop_before(keep_from)
        self._update_room()
        return utterance

    def _clear_decoder(self) -> None:
        self._frames, self._state, self._tokens, self._text = 0, None, (), ""

    def _vad_preroll(self) -> int:
        assert self.vad is not None
        return int(self.vad.params.prefix_padding_ms * SAMPLE_RATE_HZ / 1000) + 2 * VAD_FRAME_SAMPLES

    def close(self) -> None:
        """The client is gone or done: drop everything; a step in flight is discarded on return."""
        if not self.closed:
            self.closed = True
            self.epoch += 1
            self.scheduler._remove(self)

    # --- scheduler side ------------------------------------------------------------------------------

    def _step_request(self) -> StepRequest | None:
        """The next step, if a whole chunk plus its right context has arrived and none is in flight."""
        if self._start is None or self._in_flight or self.closed or self._failures >= MAX_CONSECUTIVE_STEP_FAILURES:
            return None
        s = self.scheduler
        frames_in = (self._audio.end - self._start) // s.frame_samples
        ready = frames_in - self._frames - s.right_frames
        if ready < s.chunk_frames:
            return None
        n_chunks = min(s.config.max_catchup_chunks, ready // s.chunk_frames)
        first = max(0, self._frames - s.left_frames)
        stop = self._frames + n_chunks * s.chunk_frames + s.right_frames
        window = self._audio.slice(self._start + first * s.frame_samples, self._start + stop * s.frame_samples)
        return StepRequest(window, self._frames - first, n_chunks * s.chunk_frames, self._state, self._tokens)

    def _apply(self, result: StepResult) -> None:
        self._frames += result.committed_frames
        self._state, self._tokens = result.state, result.tokens
        self._failures = 0
        self.steps += 1
        if result.text != self._text:
            self._text = result.text
            s = self.scheduler
            covered = min((self._frames + s.right_frames) * s.frame_samples, self._audio.end - (self._start or 0))
            self.listener(Partial(result.text, result.committed_text, covered / SAMPLE_RATE_HZ))
        self._update_room()

    def _vad_frame(self) -> Waveform | None:
        if self.vad is None or self._vad_in_flight or self.closed:
            return None
        if self._audio.end - self.vad.position < VAD_FRAME_SAMPLES:
            return None
        return self._audio.slice(self.vad.position, self.vad.position + VAD_FRAME_SAMPLES)

    def _vad_failed(self) -> None:
        """After MAX_CONSECUTIVE_STEP_FAILURES failed VAD calls, the stream goes on without VAD (utterances then
        end only when the client says so) and the client is told."""
        self._vad_failures += 1
        if self.vad is not None and self._vad_failures >= MAX_CONSECUTIVE_STEP_FAILURES:
            self.vad = None
            if self._start is None:  # the audio it could not classify becomes the utterance: nothing is dropped
                self._start = self._audio.base
            self._update_room()
            self.scheduler.wake()
            self.listener(StepFailed("voice activity detection failed; utterances now end only when you end them"))

    def _apply_vad(self, prob: float, state: Any) -> None:
        assert self.vad is not None
        self.vad.model_state = state
        boundary: SpeechBoundary | None = self.vad.feed(prob)
        if boundary is not None and boundary.is_start and self._start is None:
            self._start = max(boundary.sample, self._audio.base)
            self._clear_decoder()
            self.listener(SpeechStarted(self._start))
        elif boundary is not None and not boundary.is_start and self._start is not None:
            end = max(boundary.sample, self._start)
            self.listener(UtteranceEnded(self._cut(end, keep_open=False), "vad"))
        if self._start is None:  # silence: keep only the pre-roll the next speech start may reach back into
            self._audio.drop_before(self.vad.position - self._vad_preroll())
        self._update_room()


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
    """Admits streams and advances them: batched steps on the GPU thread, batched VAD on its own thread.

    At most one step per stream is in flight; streams whose audio became ready while a step ran form the next
    batch (oldest step first), so batches grow with load and no stream waits more than one step.
    """

    def __init__(
        self,
        engine: Engine,
        gpu_executor: Executor,
        vad_executor: Executor,
        config: StreamConfig,
    ) -> None:
        self.engine = engine
        self.gpu_executor = gpu_executor
        self.vad_executor = vad_executor
        self.config = config
        self.frame_samples = engine.encoder_frame_samples
        frame_ms = self.frame_samples * 1000 / SAMPLE_RATE_HZ
        self.chunk_frames = max(1, round(config.chunk_ms / frame_ms))
        self.right_frames = round(config.right_context_ms / frame_ms)
        self.left_frames = round(config.left_context_ms / frame_ms)
        self.sessions: dict[int, StreamSession] = {}
        self.stats = StreamStats()
        self.accepting = True
        self.closing = asyncio.Event()  # set at shutdown: routes finalize their utterance and close (1001)
        self._ids = itertools.count(1)
        self._wake = asyncio.Event()  # the step loop's
        self._wake_vad = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def open_streams(self) -> int:
        return len(self.sessions)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._step_loop(), name="stream-steps")]
        if self.engine.vad is not None:
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

    def open(self, listener: Listener, *, vad: VadParams | None = None) -> StreamSession:
        """Admit a stream.

        Args:
            listener: receives this stream's events (called on the event loop; must not block).
            vad: turn detection for this stream (utterances end at pauses), or None (they end when told).

        Raises:
            ShuttingDown: the worker is shutting down.
            TooManyStreams: `max_streams` streams are open.
            BadRequest: VAD asked for but the engine has no VAD model.
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
        if vad is not None and self.engine.vad is None:
            raise errors.BadRequest("voice activity detection is not available on this server")
        session = StreamSession(self, next(self._ids), listener, VadSegmenter(vad) if vad is not None else None)
        self.sessions[session.id] = session
        metrics.STREAMS_OPEN.set(len(self.sessions))
        return session

    def _remove(self, session: StreamSession) -> None:
        self.sessions.pop(session.id, None)
        metrics.STREAMS_OPEN.set(len(self.sessions))

    # --- steps ---------------------------------------------------------------------------------------

    async def _step_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._run_step()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a scheduling bug must not end every stream's partials
                log.exception("stream step scheduler fault; carrying on")

    async def _run_step(self) -> None:
        candidates = sorted(self.sessions.values(), key=lambda s: s._last_step)
        batch: list[tuple[StreamSession, StepRequest, int]] = []
        for session in candidates:
            request = session._step_request()
            if request is not None:
                batch.append((session, request, session.epoch))
                if len(batch) >= self.config.max_step_batch:
                    break
        if not batch:
            return
        now = time.monotonic()
        for session, _, _ in batch:
            session._in_flight, session._last_step = True, now
        loop = asyncio.get_running_loop()
        try:
            out = await loop.run_in_executor(self.gpu_executor, self.engine.stream_step, [r for _, r, _ in batch])
            if len(out.results) != len(batch):
                raise RuntimeError(f"the engine returned {len(out.results)} step results for {len(batch)} streams")
        except Exception as exc:  # noqa: BLE001 - fail this step's streams, keep streaming
            self.stats.failed_steps += 1
            log.error("stream step of %d failed: %s: %s", len(batch), type(exc).__name__, exc, exc_info=exc)
            for session, _, epoch in batch:
                session._in_flight = False
                if session.epoch == epoch and not session.closed:
                    session._failures += 1
                    session._update_room()
                    session.listener(StepFailed("the streaming step failed; partial results may pause"))
            return
        finally:
            self._wake.set()  # streams that became ready meanwhile, or have a backlog, go next
        for session, _, _ in batch:
            session._in_flight = False
        self.stats.observe(len(batch), out.compute_ms)
        metrics.STREAM_STEP_BATCH.observe(len(batch))
        metrics.STREAM_STEP_COMPUTE.observe(out.compute_ms / 1000)
        for (session, _, epoch), result in zip(batch, out.results, strict=True):
            if session.epoch == epoch and not session.closed:  # else: reset, ended or gone meanwhile
                session._apply(result)

    # --- VAD -----------------------------------------------------------------------------------------

    async def _vad_loop(self) -> None:
        """One VAD frame of every stream that has one pending per batched call, until none has."""
        vad = self.engine.vad
        assert vad is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._wake_vad.wait()
            self._wake_vad.clear()
            try:
                while True:
                    pending = [(s, f) for s in list(self.sessions.values()) if (f := s._vad_frame()) is not None]
                    if not pending:
                        break
                    for s, _ in pending:
                        s._vad_in_flight = True
                    try:
                        probs, states = await loop.run_in_executor(
                            self.vad_executor,
                            vad.speech_probs,
                            [f for _, f in pending],
                            [s.vad.model_state if s.vad else None for s, _ in pending],
                        )
                    except Exception:
                        for s, _ in pending:  # VAD that keeps failing must not hold its streams' readers for ever
                            s._vad_failed()
                        raise
                    finally:
                        for s, _ in pending:
                            s._vad_in_flight = False
                    for (s, _), prob, state in zip(pending, probs, states, strict=True):
                        if not s.closed:
                            s._apply_vad(prob, state)
                    self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("VAD fault; carrying on")
                await asyncio.sleep(0.1)
                self._wake_vad.set()  # retry the pending frames (a stream gives up VAD after three failures)
