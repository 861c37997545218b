"""The one request lifecycle: what every transcription request holds from before its body is read until it is
answered, and the order it takes things in. `Worker.request()` opens a `RequestLifecycle`; every entry point
(`/transcribe`, `/v1/audio/transcriptions` with or without SSE, Wyoming) goes through it and nothing else:

1. at open: readiness (503), the memory budget for the declared body (429 `memory_full`), the GPU queue's room
   (429 `queue_full`), and a place in the upload pool (429 `uploads_full`), all before a byte of the body is read;
2. `receive()`: the body, read while the upload place is held; the lifecycle keeps the audio bytes;
3. `transcribe()` / `transcribe_stream()`: a GPU-queue ticket, decoding in a subprocess with the waveform's memory
   reserved before its samples exist, the batcher, and a race with the client's disconnect (the work of a client
   that left is dropped before the GPU);
4. at close: everything released, once (a streamed answer takes the resources over until it ends).

This module never sees a request, a form or a socket (the routes pass a `disconnected` awaitable), and never
touches tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from parakeet.core import errors, metrics
from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.core.keywords import KeyPhrases, merge_key_phrases
from parakeet.core.speakers import Speakers, no_diarizer, speakers_of
from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.pipeline.audio import DecodedAudio
from parakeet.pipeline.batch_policy import ItemOptions, Lane
from parakeet.pipeline.batching import Batcher
from parakeet.pipeline.decoder_pool import AudioDecoderPool
from parakeet.pipeline.diarization import DiarizationQueue
from parakeet.pipeline.memory import Reservation
from parakeet.pipeline.transcriber import ChunkCheckpoint, Transcriber

T = TypeVar("T")


@dataclass(frozen=True)
class TranscribeOptions:
    """What a request asks for beyond the text.

    Attributes:
        timestamps: word, segment and char timestamps (they cost the GPU thread Python time; README).
        confidence: word and token confidence and token log-probabilities (implies timestamps).
        keywords: phrases to boost in the decoding (custom vocabulary, `parakeet.core.keywords`); None: none.
        diarize: who spoke each word (implies timestamps; needs PARAKEET_DIARIZATION_MODEL).
    """

    timestamps: bool = False
    confidence: bool = False
    keywords: KeyPhrases | None = None
    diarize: bool = False

    @property
    def word_times(self) -> bool:
        """Whether the transcript needs word timestamps: asked for, or implied by confidence or speakers (the
        words carry them)."""
        return self.timestamps or self.confidence or self.diarize


@dataclass(frozen=True)
class AudioSummary:
    """What a response says about the audio: its decoded duration and the upload's own format."""

    duration_s: float
    source_sample_rate_hz: int
    source_channels: int

    @classmethod
    def of(cls, audio: DecodedAudio) -> AudioSummary:
        return cls(audio.duration_s, audio.source_sample_rate_hz, audio.source_channels)


@dataclass(frozen=True)
class Outcome:
    """A finished transcription and where its time went.

    Attributes:
        transcript: the (merged) transcript of the whole audio.
        audio: its duration and source format.
        model: the engine's model name.
        decode_ms: decoding and resampling, ms (0 for audio that came as samples).
        queue_ms: wait of its (first) item before its batch started, ms.
        compute_ms: engine time of its batch (summed over chunks), ms.
        batch_size: requests in its batch (the largest over chunks).
        chunks: pieces the audio was transcribed in (1 up to the long-audio threshold).
        speakers: each word's speaker and the turns, when diarization was asked for.
    """

    transcript: Transcript
    audio: AudioSummary
    model: str
    decode_ms: float
    queue_ms: float
    compute_ms: float
    batch_size: int
    chunks: int
    speakers: Speakers | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a loaded worker can do, from the models it loaded (never from its settings): every entry point asks
    this record (`Worker.capabilities`) before it accepts an option.

    Attributes:
        model_name: the ASR model, as responses name it.
        diarizer: the speaker diarizer's name; None: this worker has none (`diarize` is a 400).
        diarizer_max_audio_s: the longest audio it takes (an offline Sortformer: 90 s); None: any length.
    """

    model_name: str
    diarizer: str | None = None
    diarizer_max_audio_s: float | None = None

    def require_speakers(self, param: str) -> None:
        """Raises: BadRequest naming PARAKEET_DIARIZATION_MODEL (param `param`) when there is no diarizer."""
        if self.diarizer is None:
            raise no_diarizer(param)


class WorkerHooks(Protocol):
    """What a request tells and asks its worker (`Worker` implements it)."""

    def served(self, outcome: Outcome) -> None:
        """A request was answered (the worker's counters and metrics)."""
        ...

    def server_phrases(self) -> KeyPhrases | None:
        """The server-wide key phrases (PARAKEET_KEYWORDS_FILE, as it is now), merged into each request's."""
        ...

    def check_key_phrases(self, keywords: KeyPhrases | None) -> None:
        """Raises: BadRequest for a phrase the loaded model cannot spell."""
        ...


@dataclass(frozen=True)
class ServingPipeline:
    """The worker's pipeline a request runs through (`Worker.request` hands it over once the worker is ready).

    Attributes:
        decoder, batcher, transcriber: decoding, the GPU queue, long audio.
        capabilities: what the worker can do.
        hooks: the worker's side (`WorkerHooks`).
        max_audio_duration_s: the longest decoded audio (PARAKEET_MAX_AUDIO_DURATION_S).
        diarization: the speakers' queue, when the worker has a diarizer.
        diarization_bytes_per_s: memory a diarized request holds per second of audio (Tuning).
    """

    decoder: AudioDecoderPool
    batcher: Batcher
    transcriber: Transcriber
    capabilities: Capabilities
    hooks: WorkerHooks
    max_audio_duration_s: float
    diarization: DiarizationQueue | None = None
    diarization_bytes_per_s: int = 0


class RequestLifecycle:
    """One request inside `Worker.request()`; see the module docstring for the order of things.

    Args:
        serving: the worker's pipeline (`ServingPipeline`).
        reservation: the request's share of the memory budget (its declared body size so far).
        give_back_upload: returns the request's place in the upload pool.
        disconnected: returns when the client goes away (None: never watched).
    """

    def __init__(
        self,
        serving: ServingPipeline,
        reservation: Reservation,
        give_back_upload: Callable[[], None],
        disconnected: Callable[[], Awaitable[object]] | None,
    ) -> None:
        self._serving, self._reservation = serving, reservation
        self._give_back_upload, self._disconnected = give_back_upload, disconnected
        self._audio: bytes | None = None
        self._handed_off = self._closed = False

    async def receive(self, body: Awaitable[tuple[bytes, T]]) -> T:
        """Read the body (`body` gives the audio bytes and whatever else the route parsed) while holding the upload
        place. The lifecycle keeps the bytes, so that once decoding starts only the decoder holds them.

        Raises:
            Whatever `body` raises.
        """
        try:
            self._audio, rest = await body
        finally:
            self.received()
        return rest

    def received(self) -> None:
        """The body is in hand (or never will be): the upload place is free for another request."""
        self._give_back_upload()

    def hold_memory(self, nbytes: int, what: str) -> None:
        """Hold `nbytes` of the memory budget in all (audio that arrives in pieces, as Wyoming's does).

        Raises:
            MemoryBudgetFull: past the budget.
        """
        self._reservation.grow_to(nbytes, what)

    async def transcribe(
        self, options: TranscribeOptions, *, audio: DecodedAudio | None = None, audio_param: str = "file"
    ) -> Outcome:
        """Transcribe the received audio bytes (or `audio`, already samples), watching the client.

        Args:
            audio_param: the request field an audio error names (`param` of the error response).

        Raises:
            ParakeetError subclasses: every refusal in the error table (README "Errors"); ClientDisconnected when
            the client left first (its queued work is dropped before the GPU).
        """
        self.received()
        task = asyncio.ensure_future(self._run(options, audio, audio_param, None))
        del audio
        return await self._race(task, task)

    async def transcribe_stream(
        self, options: TranscribeOptions, *, audio_param: str = "file", checkpoint: ChunkCheckpoint | None = None,
        lane: Lane = "live",
    ) -> WordStream:  # fmt: skip
        """Transcribe the received bytes, chunk by chunk: returns once the first chunk's words are ready (so a
        refusal is still an ordinary error), then yields each chunk's words in file order; the finished
        `Outcome` is the value of `WordStream.outcome()`. The stream takes over the request's resources until it is
        exhausted or closed (`aclose`: the client left, queued chunks are dropped).

        `checkpoint`: chunks an earlier run finished, reused (a resumed job; `Transcriber.run`). `lane`: the batcher's
        (`ItemOptions.lane`; a stored job's audio is "background", batched behind live requests).

        Raises:
            As `transcribe`, before the first words.
        """
        self.received()
        words: asyncio.Queue[Sequence[TimedSpan]] = asyncio.Queue()
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def on_words(chunk_words: Sequence[TimedSpan]) -> None:
            words.put_nowait(chunk_words)
            if not first.done():
                first.set_result(None)

        task = asyncio.ensure_future(self._run(options, None, audio_param, on_words, checkpoint, lane))
        await self._race(task, first)
        self._handed_off = True
        return WordStream(words, task, self._release)

    async def _race(self, task: asyncio.Future[Outcome], wanted: asyncio.Future[T]) -> T:
        """Wait for `wanted` (or the transcription's end); cancel the transcription if the client leaves first."""
        waiters: set[asyncio.Future[Any]] = {task, wanted}
        gone = asyncio.ensure_future(self._disconnected()) if self._disconnected is not None else None
        if gone is not None:
            waiters.add(gone)
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            if gone is not None:
                gone.cancel()
        if not wanted.done() and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise errors.ClientDisconnected("the client closed the connection before its transcript was ready")
        if wanted.done():
            return wanted.result()
        task.result()  # the transcription failed: raise its error
        raise RuntimeError("the transcription finished without reporting its words")

    async def _run(
        self,
        options: TranscribeOptions,
        audio: DecodedAudio | None,
        audio_param: str,
        on_words: Callable[[Sequence[TimedSpan]], None] | None,
        checkpoint: ChunkCheckpoint | None = None,
        lane: Lane = "live",
    ) -> Outcome:
        s = self._serving
        s.hooks.check_key_phrases(options.keywords)
        if options.diarize:
            s.capabilities.require_speakers("diarize")
        ticket = s.batcher.admit()  # the GPU queue: taken once the audio is in hand, before decoding
        try:
            t0 = time.perf_counter()
            try:
                decoded = audio if audio is not None else await self._decode()
            except (errors.AudioError, errors.DecoderUnavailable) as exc:
                exc.param = audio_param
                raise
            del audio
            decode_ms = (time.perf_counter() - t0) * 1000 if decoded.decoder != "pcm" else 0.0
            if decoded.decoder != "pcm":
                metrics.DECODE.observe(decode_ms / 1000)
            features = self._hold_diarization(decoded) if options.diarize else 0  # refused before any GPU time
            try:
                item = ItemOptions(
                    timestamps=options.word_times, confidence=options.confidence,
                    keywords=merge_key_phrases(options.keywords, s.hooks.server_phrases()), lane=lane,
                )  # fmt: skip
                done = await s.transcriber.run(ticket, decoded.waveform, item, on_words=on_words, checkpoint=checkpoint)
                speakers = None
                if options.diarize and s.diarization is not None:
                    speakers = speakers_of(done.transcript.words, await s.diarization.diarize(decoded.waveform))
            finally:
                self._reservation.shrink_to(max(0, self._reservation.nbytes - features))
        finally:
            s.batcher.release(ticket)
        outcome = Outcome(
            done.transcript, AudioSummary.of(decoded), s.capabilities.model_name, decode_ms, done.queue_ms,
            done.compute_ms, done.batch_size, done.chunks, speakers,
        )  # fmt: skip
        s.hooks.served(outcome)
        return outcome

    def _hold_diarization(self, decoded: DecodedAudio) -> int:
        """Check that the diarizer takes this audio and hold its features' memory (until the speakers are known).

        Returns:
            The bytes held for the features (`Tuning.diarization_bytes_per_s` per second of audio).

        Raises:
            BadRequest: past the diarizer's length. MemoryBudgetFull: the features do not fit in the budget.
        """
        s = self._serving
        limit = s.capabilities.diarizer_max_audio_s
        if limit is not None and decoded.duration_s > limit:
            raise errors.BadRequest(
                f"the audio is {decoded.duration_s:.1f} s long; this diarization model takes at most {limit:g} s "
                "(an offline model; a streaming Sortformer such as nvidia/diar_streaming_sortformer_4spk-v2 takes "
                "any length)",
                param="diarize",
            )
        features = int(decoded.duration_s * s.diarization_bytes_per_s)
        self._reservation.grow_to(self._reservation.nbytes + features, f"the diarizer's features ({features} bytes)")
        return features

    async def _decode(self) -> DecodedAudio:
        """The received bytes, decoded in a subprocess. The reservation grows from the bytes to the bytes plus the
        waveform being produced (the decoder holds both), then shrinks to the waveform alone."""
        data, self._audio = self._audio, None
        if data is None:
            raise RuntimeError("no audio was received for this request")
        upload = len(data)
        self._reservation.grow_to(upload, f"the audio ({upload} bytes)")

        def reserve(wave_bytes: int) -> None:
            if self._closed:
                raise errors.ClientDisconnected("the client left while its audio was being decoded")
            seconds = wave_bytes / (4 * SAMPLE_RATE_HZ)
            what = f"the upload ({upload} bytes) with its decoded audio ({seconds:.0f} s, {wave_bytes} bytes)"
            self._reservation.grow_to(upload + wave_bytes, what)

        s = self._serving
        decoded = await s.decoder.decode(data, max_duration_s=s.max_audio_duration_s, reserve=reserve)
        self._reservation.shrink_to(decoded.waveform.nbytes)
        return decoded

    def _release(self) -> None:
        self._closed = True
        self._audio = None
        self._give_back_upload()
        self._reservation.release()

    def close(self) -> None:
        """The end of `Worker.request()`: release everything, unless a `WordStream` took it over."""
        if not self._handed_off:
            self._release()


class WordStream:
    """The words of a transcription as each chunk finishes (`async for words in stream`), then `await outcome()`.
    Owns the request's resources until the transcription ends or `aclose()` is called."""

    def __init__(
        self, queue: asyncio.Queue[Sequence[TimedSpan]], task: asyncio.Future[Outcome], release: Callable[[], None]
    ) -> None:
        self._queue, self._task, self._release = queue, task, release

    def __aiter__(self) -> WordStream:
        return self

    async def __anext__(self) -> Sequence[TimedSpan]:
        while self._queue.empty():
            if self._task.done():
                raise StopAsyncIteration
            getter = asyncio.ensure_future(self._queue.get())
            waiters: set[asyncio.Future[Any]] = {self._task, getter}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                return getter.result()
            getter.cancel()
        return self._queue.get_nowait()

    async def outcome(self) -> Outcome:
        """The finished transcription (after the last words).

        Raises:
            ParakeetError: the transcription failed after its first words.
        """
        return await self._task

    async def aclose(self) -> None:
        """End the stream: a transcription still running is cancelled (queued chunks never reach the GPU)."""
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, errors.ParakeetError):
                await self._task
        self._release()
