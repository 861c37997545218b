"""One live stream: its audio, its current utterance and decoder state, and the events it gives its protocol.

Two passes (docs/streaming.md). Partials come from buffered chunked streaming, stepped by the scheduler
(parakeet.pipeline.stream_scheduler). The final of an utterance is NOT built from the partials: when an utterance
ends (VAD silence, its length limit, or the client), its audio goes through the offline batcher, so the `Final`
event carries the same outcome `/transcribe` gives for the same samples. Events reach the listener in order, and
nothing of a later utterance overtakes the final of an earlier one (partials waiting behind a final collapse into
the latest). Protocol adapters (parakeet.api) turn the events into their messages; this module never sees a socket.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from parakeet.core import errors, metrics
from parakeet.core.engine import SAMPLE_RATE_HZ, StepRequest, StepResult, Waveform
from parakeet.core.keywords import KeyPhrases
from parakeet.pipeline.requests import Outcome
from parakeet.pipeline.stream_audio import SampleBuffer
from parakeet.pipeline.stream_config import StreamConfig, StreamGeometry
from parakeet.pipeline.vad import VAD_FRAME_SAMPLES, VadParams, VadSegmenter

MAX_CONSECUTIVE_FAILURES = 3  # of steps (then no more partials; finals still work) or of VAD calls (then no VAD)


@dataclass(frozen=True)
class Utterance:
    """A finished utterance's audio: its place in the stream (16 kHz samples) and its number (0, 1, ...)."""

    waveform: Waveform
    start_sample: int
    end_sample: int
    index: int

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
    """An utterance ended (`vad` silence, `max_length`, or the `client` ended it); its `Final` follows."""

    utterance: Utterance
    reason: Literal["vad", "max_length", "client"]


@dataclass(frozen=True)
class Final:
    """The offline transcript of an utterance (`outcome`), or why there is none (`error`); both None for an
    utterance without audio. `final_ms`: from the utterance's end to this event."""

    utterance: Utterance | None
    outcome: Outcome | None
    error: errors.ParakeetError | None
    final_ms: float


@dataclass(frozen=True)
class StepFailed:
    """A streaming step or VAD call failed for this stream (partials or VAD stop after a few in a row)."""

    message: str


StreamEvent = Partial | SpeechStarted | UtteranceEnded | Final | StepFailed
Listener = Callable[[StreamEvent], None]
# (utterance audio, timestamps?, key phrases) -> offline outcome
Finalize = Callable[[Waveform, bool, KeyPhrases | None], Awaitable[Outcome]]


def text_delta(sent: str, text: str, *, whole_words: bool = True) -> str:
    """What `text` (a stream's committed text, which only grows) adds to the `sent` text of a protocol that sends
    deltas (Realtime's `delta` events, Wyoming's `transcript-chunk`s): up to its last whole word when `whole_words`
    (the word being spoken may still grow), "" when it adds nothing or no longer extends `sent` (a delta cannot be
    taken back; the utterance's final corrects it)."""
    if whole_words:
        text = text[: text.rfind(" ") + 1].rstrip()
    return text[len(sent) :] if len(text) > len(sent) and text.startswith(sent) else ""


class SessionHost(Protocol):
    """What a session needs of the scheduler that owns it (parakeet.pipeline.stream_scheduler.StreamScheduler)."""

    config: StreamConfig
    geometry: StreamGeometry
    closing: asyncio.Event  # set at shutdown: the protocols finalize their utterance and close
    finalize: Finalize

    def wake(self) -> None:
        """New audio: a step or a VAD frame may be ready."""

    def remove(self, session: StreamSession) -> None:
        """The session closed."""


class StreamSession:
    """One live stream. Created by `StreamScheduler.open`.

    Protocol side: feed audio with `append`; end an utterance with `end_utterance` (EOS, commit) or drop it with
    `reset`; `close` when the socket goes. `has_room`/`wait_for_room` are the backpressure, `closing` is set when
    the worker shuts down. A session opened with `finals=False` gives partials only, of one utterance of any length
    (no length limit cuts it; its audio is kept only as far back as the next step's left context): a protocol that
    transcribes the whole utterance itself (Wyoming) uses it for the partials alone. Scheduler side:
    `step_request`/`apply_step`/`step_failed` and `vad_frame`/`apply_vad`/`vad_failed`. With VAD, utterances exist
    only between detected speech start and end.
    """

    def __init__(
        self,
        scheduler: SessionHost,
        stream_id: int,
        listener: Listener,
        vad: VadParams | None,
        timestamps: bool,
        keywords: KeyPhrases | None = None,
        finals: bool = True,
    ) -> None:
        self.scheduler, self.id, self.listener, self.timestamps = scheduler, stream_id, listener, timestamps
        self.keywords = keywords  # boosted in the partials' steps and in each final alike
        self.finals = finals  # False: partials only (its protocol transcribes the utterance itself; Wyoming)
        self.vad = VadSegmenter(vad) if vad is not None else None
        self.closed = False
        self.epoch = 0  # bumped at every utterance end/reset: step results of an older epoch are discarded
        self.last_step_at = 0.0
        self.closing = scheduler.closing
        self._audio = SampleBuffer()
        self._start: int | None = 0 if vad is None else None  # utterance start (absolute sample); None: silence
        self._frames = 0  # encoder frames of the utterance committed so far
        self._state: Any = None
        self._tokens: tuple[int, ...] = ()
        self._text = ""
        self._utterances = 0
        self._step_in_flight = self._vad_in_flight = False
        self._failures = self._vad_failures = 0
        self._room = asyncio.Event()
        self._room.set()
        self._outbox: deque[StreamEvent | asyncio.Task[Final]] = deque()
        self._retired = False

    # --- audio in ------------------------------------------------------------------------------------

    @property
    def received_samples(self) -> int:
        return self._audio.end

    @property
    def held_samples(self) -> int:
        """The stream's samples in memory now (16 kHz)."""
        return self._audio.held

    @property
    def in_utterance(self) -> bool:
        return self._start is not None

    @property
    def utterance_s(self) -> float:
        """Audio of the current utterance so far, seconds (0 between utterances)."""
        return 0.0 if self._start is None else (self._audio.end - max(self._start, self._audio.base)) / SAMPLE_RATE_HZ

    def append(self, samples: Waveform) -> None:
        """Add float32 16 kHz samples [N] at the end of the stream; ends the utterance at its length limit."""
        if self.closed or self._retired or len(samples) == 0:
            return
        self._audio.append(samples)
        metrics.STREAM_AUDIO.inc(len(samples) / SAMPLE_RATE_HZ)
        limit = self.scheduler.config.max_utterance_s * SAMPLE_RATE_HZ
        if self.finals and self._start is not None and self._audio.end - self._start >= limit:
            self._finish(self._cut(self._audio.end, keep_open=True), "max_length")
        self._update_room()
        self.scheduler.wake()

    @property
    def lag_s(self) -> float:
        """Audio received but not yet processed (committed by a step, or read by the VAD), seconds. A stream whose
        steps keep failing has no partials any more and is not throttled for them (its finals still work)."""
        if self._start is not None and self._failures >= MAX_CONSECUTIVE_FAILURES:
            return 0.0
        if self._start is not None:
            done = self._start + self._frames * self.scheduler.geometry.frame_samples
        else:
            done = self.vad.position if self.vad is not None else self._audio.end
        return max(0, self._audio.end - done) / SAMPLE_RATE_HZ

    def _update_room(self) -> None:
        limit = self.scheduler.config.max_lag_s
        if self.lag_s > limit:
            self._room.clear()
        elif self.lag_s <= limit / 2:
            self._room.set()

    @property
    def has_room(self) -> bool:
        """False while the stream holds more than `max_lag_s` of unprocessed audio (until it is back to half)."""
        return self._room.is_set()

    async def wait_for_room(self) -> None:
        """Return once the stream has room (backpressure: the caller stops reading its socket meanwhile, so a
        client faster than real time is throttled and nothing is dropped)."""
        await self._room.wait()

    # --- utterances ----------------------------------------------------------------------------------

    def end_utterance(self, *, min_s: float | None = None) -> Utterance | None:
        """End the current utterance here (EOS, commit): `UtteranceEnded`, then its `Final`. The next utterance
        starts at once (without VAD) or at the next detected speech.

        Args:
            min_s: None: always answer with a `Final` (an empty one when there is no audio). A number: an utterance
                shorter than this is discarded without any event (Realtime's "buffer too small").

        Returns:
            The ended utterance, or None when there was none (VAD between speech) or it was discarded.
        """
        utterance = None if self._start is None else self._cut(self._audio.end, keep_open=self.vad is None)
        if min_s is not None:
            if utterance is None or utterance.duration_s < min_s:
                return None
        elif utterance is None or len(utterance.waveform) == 0:
            self._emit(Final(utterance, None, None, 0.0))
            return utterance
        self._finish(utterance, "client")
        return utterance

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
        utterance = Utterance(self._audio.slice(start, end), start, end, self._utterances)
        self._utterances += 1
        self.epoch += 1
        self._clear_decoder()
        self._start = end if keep_open else None
        keep_from = end - self._vad_preroll() if self.vad is not None else end
        self._audio.drop_before(keep_from)
        self._update_room()
        return utterance

    def _finish(self, utterance: Utterance, reason: Literal["vad", "max_length", "client"]) -> None:
        """`UtteranceEnded` now, and the utterance's offline transcription, whose `Final` follows in order."""
        self._emit(UtteranceEnded(utterance, reason))
        task = asyncio.get_running_loop().create_task(self._final(utterance, time.monotonic()))
        task.add_done_callback(lambda _: self._deliver())
        self._outbox.append(task)

    async def _final(self, utterance: Utterance, ended_at: float) -> Final:
        try:
            outcome = await self.scheduler.finalize(utterance.waveform, self.timestamps, self.keywords)
        except errors.ParakeetError as exc:
            return Final(utterance, None, exc, (time.monotonic() - ended_at) * 1000)
        return Final(utterance, outcome, None, (time.monotonic() - ended_at) * 1000)

    def _clear_decoder(self) -> None:
        self._frames, self._state, self._tokens, self._text = 0, None, (), ""

    def _vad_preroll(self) -> int:
        assert self.vad is not None
        return int(self.vad.params.prefix_padding_ms * SAMPLE_RATE_HZ / 1000) + 2 * VAD_FRAME_SAMPLES

    def retire(self) -> None:
        """No more audio for this session (its protocol opened another, e.g. for a new format): it closes as soon as
        the finals of its ended utterances are delivered."""
        self._retired = True
        self.reset()
        self._deliver()

    def close(self) -> None:
        """The client is gone or done: drop everything; its pending finals are cancelled before the GPU."""
        if not self.closed:
            self.closed = True
            self.epoch += 1
            for entry in self._outbox:
                if isinstance(entry, asyncio.Task):
                    entry.cancel()
            self._outbox.clear()
            self.scheduler.remove(self)

    # --- events out ----------------------------------------------------------------------------------

    def _emit(self, event: StreamEvent) -> None:
        if isinstance(event, Partial) and self._outbox and isinstance(self._outbox[-1], Partial):
            self._outbox[-1] = event  # a partial waiting behind a final: only the latest matters
        else:
            self._outbox.append(event)
        self._deliver()

    def _deliver(self) -> None:
        """Hand the listener every event up to the first final still being transcribed."""
        while self._outbox and not self.closed:
            head = self._outbox[0]
            if isinstance(head, asyncio.Task):
                if not head.done():
                    return
                self._outbox.popleft()
                if not head.cancelled():
                    self.listener(head.result())
            else:
                self._outbox.popleft()
                self.listener(head)
        if self._retired and not self._outbox:
            self.close()

    @property
    def pending_finals(self) -> int:
        return sum(isinstance(e, asyncio.Task) for e in self._outbox)

    async def wait_finals(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` until every ended utterance's `Final` was delivered; True if they all were."""
        pending = [e for e in self._outbox if isinstance(e, asyncio.Task)]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        self._deliver()
        return self.pending_finals == 0

    # --- scheduler side ------------------------------------------------------------------------------

    def step_request(self, now: float) -> StepRequest | None:
        """The next step, if a whole chunk plus its right context has arrived and none is in flight; the step is
        then in flight (until `apply_step` or `step_failed` with the current `epoch`)."""
        if self._start is None or self._step_in_flight or self.closed or self._failures >= MAX_CONSECUTIVE_FAILURES:
            return None
        g, cfg = self.scheduler.geometry, self.scheduler.config
        frames_in = (self._audio.end - self._start) // g.frame_samples
        ready = frames_in - self._frames - g.right_frames
        if ready < g.chunk_frames:
            return None
        n_chunks = min(cfg.max_catchup_chunks, ready // g.chunk_frames)
        first = max(0, self._frames - g.left_frames)
        stop = self._frames + n_chunks * g.chunk_frames + g.right_frames
        window = self._audio.slice(self._start + first * g.frame_samples, self._start + stop * g.frame_samples)
        self._step_in_flight, self.last_step_at = True, now
        frames, commit = self._frames - first, n_chunks * g.chunk_frames
        return StepRequest(window, frames, commit, self._state, self._tokens, self.keywords)

    def apply_step(self, result: StepResult, epoch: int) -> None:
        """A step's result; dropped if the utterance was reset or ended meanwhile (`epoch` is then older)."""
        self._step_in_flight = False
        if epoch != self.epoch or self.closed:
            return
        self._frames += result.committed_frames
        self._state, self._tokens = result.state, result.tokens
        self._failures = 0
        g = self.scheduler.geometry
        if not self.finals:  # no final needs the utterance's audio: keep only the next window's left context on
            self._audio.drop_before((self._start or 0) + max(0, self._frames - g.left_frames) * g.frame_samples)
        if result.text != self._text:
            self._text = result.text
            covered = min((self._frames + g.right_frames) * g.frame_samples, self._audio.end - (self._start or 0))
            self._emit(Partial(result.text, result.committed_text, covered / SAMPLE_RATE_HZ))
        self._update_room()

    def step_failed(self, epoch: int) -> None:
        """The step given at `epoch` failed: after a few in a row the stream gets no more partials."""
        self._step_in_flight = False
        if epoch == self.epoch and not self.closed:
            self._failures += 1
            self._update_room()
            self._emit(StepFailed("the streaming step failed; partial results may pause"))

    def vad_frame(self) -> Waveform | None:
        """The next VAD frame, if one has arrived and none is in flight (it then is, until `apply_vad`/`vad_failed`)."""
        if self.vad is None or self._vad_in_flight or self.closed:
            return None
        if self._audio.end - self.vad.position < VAD_FRAME_SAMPLES:
            return None
        self._vad_in_flight = True
        return self._audio.slice(self.vad.position, self.vad.position + VAD_FRAME_SAMPLES)

    @property
    def vad_state(self) -> Any:
        """The VAD model's opaque state for this stream (None at the start)."""
        return self.vad.model_state if self.vad is not None else None

    def vad_failed(self) -> None:
        """After MAX_CONSECUTIVE_FAILURES failed VAD calls, the stream goes on without VAD (utterances then end only
        when the client says so) and the client is told."""
        self._vad_in_flight = False
        self._vad_failures += 1
        if self.vad is not None and self._vad_failures >= MAX_CONSECUTIVE_FAILURES:
            self.vad = None
            if self._start is None:  # the audio it could not classify becomes the utterance: nothing is dropped
                self._start = self._audio.base
            self._update_room()
            self.scheduler.wake()
            self._emit(StepFailed("voice activity detection failed; utterances now end only when you end them"))

    def apply_vad(self, prob: float, state: Any) -> None:
        """One VAD frame's speech probability and the model's new state for this stream."""
        self._vad_in_flight = False
        if self.vad is None or self.closed:
            return
        self.vad.model_state = state
        boundary = self.vad.feed(prob)
        if boundary is not None and boundary.is_start and self._start is None:
            self._start = max(boundary.sample, self._audio.base)
            self._clear_decoder()
            self._emit(SpeechStarted(self._start))
        elif boundary is not None and not boundary.is_start and self._start is not None:
            self._finish(self._cut(max(boundary.sample, self._start), keep_open=False), "vad")
        if self._start is None:  # silence: keep only the pre-roll the next speech start may reach back into
            self._audio.drop_before(self.vad.position - self._vad_preroll())
        self._update_room()
