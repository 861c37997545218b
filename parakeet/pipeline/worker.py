"""One worker: its life cycle (loading -> ok -> shutting_down, or failed) and its transcription pipeline.

admit (429 before the caller reads the upload) -> decode in a subprocess -> batch on the GPU thread (long
audio: in chunks cut at quiet points, a few in flight at a time) -> merge. Routes of any protocol (HTTP
upload today, WebSocket later) call `admitted()` and `transcribe()`; this module never sees a request,
a form or a socket, and never touches tensors (the engine does).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from parakeet import VERSION
from parakeet.core import errors, metrics
from parakeet.core.engine import SAMPLE_RATE_HZ, DeviceInfo, Engine, EngineFactory, Waveform
from parakeet.core.settings import Settings
from parakeet.core.transcripts import TimedSpan, Transcript
from parakeet.pipeline.audio import DecodedAudio
from parakeet.pipeline.batching import Batcher, BatcherConfig, ItemResult, Ticket
from parakeet.pipeline.decoder_pool import AudioDecoderPool
from parakeet.pipeline.long_audio import Chunk, kept_spans, merge_transcripts, plan_chunks
from parakeet.pipeline.streaming import Listener, StreamConfig, StreamScheduler, StreamSession
from parakeet.pipeline.vad import VadParams

log = logging.getLogger("parakeet.worker")

WARMUP_AUDIO_S = 2.0
Phase = Literal["loading", "ok", "shutting_down", "failed"]
# Called with the words of each chunk, in file order and file time, as soon as it and all chunks before it are
# transcribed (one call for audio up to the long-audio threshold): streamed responses send them on at once.
WordsCallback = Callable[[Sequence[TimedSpan]], None]


@dataclass(frozen=True)
class Outcome:
    """A finished transcription and where its time went.

    Attributes:
        transcript: the (merged) transcript of the whole file.
        audio: the decoded upload (its waveform, source rate and channels).
        model: the engine's model name.
        decode_ms: decoding and resampling, ms.
        queue_ms: wait of its (first) item before its batch started, ms.
        compute_ms: engine time of its batch (summed over chunks), ms.
        batch_size: requests in its batch (the largest over chunks).
        chunks: pieces the audio was transcribed in (1 up to `long_audio_threshold_s`).
    """

    transcript: Transcript
    audio: DecodedAudio
    model: str
    decode_ms: float
    queue_ms: float
    compute_ms: float
    batch_size: int
    chunks: int


@dataclass(eq=False)
class MemoryReservation:
    """Bytes of audio one request holds, counted against `max_inflight_audio_bytes`: its upload's declared size
    while it is received, then the bytes actually read, then its decoded waveform (`resize`), until released."""

    worker: Worker
    nbytes: int = 0

    def resize(self, nbytes: int) -> None:
        self.worker.inflight_audio_bytes += nbytes - self.nbytes
        self.nbytes = nbytes

    def grow_to(self, nbytes: int, what: str) -> None:
        """Resize to `nbytes`, refusing if the growth would pass the budget (compressed uploads decode to far more
        bytes than they were admitted with).

        Raises:
            MemoryBudgetFull: with a message naming `what`, the bytes, and the budget (429).
        """
        limit = self.worker.settings.max_inflight_audio_bytes
        if nbytes > self.nbytes and self.worker.inflight_audio_bytes + nbytes - self.nbytes > limit:
            held = self.worker.inflight_audio_bytes - self.nbytes
            batcher = self.worker.batcher
            raise errors.MemoryBudgetFull(
                f"server busy: {what} is {nbytes} bytes, {held} bytes of other audio are held, the budget is "
                f"{limit} bytes (PARAKEET_MAX_INFLIGHT_AUDIO_BYTES)",
                retry_after_s=max(1, batcher.retry_after_s()) if batcher is not None else 10,
            )
        self.resize(nbytes)


@dataclass
class Worker:
    """Per-worker runtime state and pipeline (one per process, on `app.state`; no module globals).

    Create it, `await start()` on the event loop, `load()` the engine (the worker answers /health meanwhile),
    then serve with `admitted()` + `transcribe()`; `close()` at shutdown.
    """

    settings: Settings
    gpu_id: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    phase: Phase = "loading"
    detail: str | None = "model is loading"
    engine: Engine | None = None
    decoder: AudioDecoderPool | None = None
    batcher: Batcher | None = None
    streams: StreamScheduler | None = None
    device_info: DeviceInfo | None = None
    requests_served: int = 0
    uploads_in_progress: int = 0
    inflight_audio_bytes: int = 0
    gpu_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
    )
    vad_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
    )
    _device_refresh: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.phase == "ok"

    # --- life cycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the audio-decoder subprocesses (call on the event loop's thread: see AudioDecoderPool.start),
        and publish this worker's first metrics (after dropping those of workers that died uncleanly)."""
        s = self.settings
        dead = metrics.sweep_dead_workers()
        if dead:
            log.info("removed the live metrics of %d dead worker(s): pids %s", len(dead), dead)
        metrics.WORKER_READY.set(0)
        metrics.WORKER_DRAINING.set(0)
        device = "cpu" if self.gpu_id is None else f"cuda:{self.gpu_id}"
        metrics.BUILD_INFO.labels(version=VERSION, model=s.model, precision=s.precision, device=device).set(1)
        self.decoder = AudioDecoderPool(s.decode_workers, s.decode_timeout_s, s.decode_memory_limit_bytes)
        await self.decoder.start()

    async def load(self, factory: EngineFactory) -> None:
        """Build the engine on the GPU thread, warm it up, start the batcher, and become ready.

        Raises:
            ModelLoadError: from the factory (phase becomes "failed", detail says why).
            Exception: anything else the factory or warm-up raised (phase "failed" too).
        """
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(self.gpu_executor, factory, self.settings, self.gpu_id)
            warm_ms = None
            if self.settings.warmup:
                warm_ms = await loop.run_in_executor(self.gpu_executor, engine.warmup, WARMUP_AUDIO_S)
                log.info("warm-up batch took %.0f ms", warm_ms)
            device_info = await loop.run_in_executor(self.gpu_executor, engine.device_info)
        except errors.ModelLoadError as exc:
            self.phase, self.detail = "failed", exc.message
            raise
        except Exception as exc:
            self.phase, self.detail = "failed", f"model load failed: {type(exc).__name__}: {exc}"
            raise
        batcher = Batcher(engine, self.gpu_executor, BatcherConfig.from_settings(self.settings))
        if warm_ms is not None:
            batcher.stats.observe(WARMUP_AUDIO_S, warm_ms / 1000, 1)  # the first Retry-After estimate
        if self.phase != "loading":  # shut down while loading
            return
        batcher.start()
        streams = StreamScheduler(
            engine, self.gpu_executor, self.vad_executor, StreamConfig.from_settings(self.settings)
        )
        streams.start()
        self.engine, self.batcher, self.streams, self.device_info = engine, batcher, streams, device_info
        self.phase, self.detail = "ok", None
        metrics.WORKER_READY.set(1)
        self._publish_device(device_info)
        self._device_refresh = asyncio.get_running_loop().create_task(self._refresh_device())
        log.info("worker ready: model %s on %s", engine.model_name, device_info.name)

    def _publish_device(self, info: DeviceInfo) -> None:
        if info.memory_used_bytes is not None:
            metrics.GPU_MEMORY_USED.labels(gpu=str(info.index)).set(info.memory_used_bytes)

    async def _refresh_device(self, every_s: float = 15.0) -> None:
        """Refresh the device memory gauge now and then, on the GPU thread (between batches)."""
        loop = asyncio.get_running_loop()
        while self.engine is not None and self.phase == "ok":
            await asyncio.sleep(every_s)
            info = await loop.run_in_executor(self.gpu_executor, self.engine.device_info)
            self.device_info = info
            self._publish_device(info)

    def begin_shutdown(self) -> None:
        """From the first shutdown signal on: not ready, new requests get 503; admitted ones finish."""
        if self.phase not in ("failed", "shutting_down"):
            self.phase, self.detail = "shutting_down", "worker is shutting down"
            metrics.WORKER_READY.set(0)
            metrics.WORKER_DRAINING.set(1)
        if self.batcher is not None:
            self.batcher.stop_accepting()
        if self.streams is not None:
            self.streams.begin_shutdown()

    async def wait_streams_closed(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for every open stream to finalize and close; True if they all did."""
        deadline = time.monotonic() + timeout_s
        while self.streams is not None and self.streams.open_streams and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.streams is None or not self.streams.open_streams

    async def close(self) -> None:
        """Let open streams finalize, drain admitted requests (up to `shutdown_drain_s` each), then stop the GPU
        thread, the VAD thread and the decoders."""
        self.begin_shutdown()
        if self.streams is not None:
            if not await self.wait_streams_closed(self.settings.shutdown_drain_s):
                log.info("shutdown: %d stream(s) still open after the drain time", self.streams.open_streams)
            self.streams.stop()
        if self.batcher is not None:
            drained = await self.batcher.drain(self.settings.shutdown_drain_s)
            log.info("shutdown: %s", "all admitted requests answered" if drained else "drain timed out")
        if self._device_refresh is not None:
            self._device_refresh.cancel()
        self.gpu_executor.shutdown(wait=True, cancel_futures=True)
        self.vad_executor.shutdown(wait=True, cancel_futures=True)
        if self.decoder is not None:
            await self.decoder.close()
        metrics.mark_this_worker_gone()

    # --- serving ---------------------------------------------------------------------------------------

    @contextmanager
    def reserved_memory(self, nbytes: int) -> Iterator[MemoryReservation]:
        """Reserve `nbytes` of the worker's audio memory budget for one request, until the block exits (resize it
        as the request's audio changes form). Enter it before the body is read, with its Content-Length.

        Raises:
            MemoryBudgetFull: the audio held now plus `nbytes` would pass `max_inflight_audio_bytes` (429).
        """
        self._serving_batcher()  # ShuttingDown / NotReady first, as for every request
        reservation = MemoryReservation(self)
        reservation.grow_to(nbytes, "the request body (its Content-Length, or the upload cap)")
        try:
            yield reservation
        finally:
            reservation.resize(0)

    @contextmanager
    def receiving(self) -> Iterator[None]:
        """A place for one request body being received (or one `audio_url` being fetched), held until the block
        exits. Separate from the GPU queue (`admitted()`), so that slow or stalled uploads cannot take the places
        of requests that are ready: uploads in progress are capped by `max_uploads_in_progress` instead. A GPU
        queue that is already full refuses here, before the body is read.

        Raises:
            ShuttingDown, NotReady, Overloaded: as `admitted()`, checked now without taking a place.
            UploadsFull: `max_uploads_in_progress` bodies are being received (429 with Retry-After).
        """
        batcher = self._serving_batcher()
        batcher.check_admission()
        limit = self.settings.max_uploads_in_progress
        if self.uploads_in_progress >= limit:
            raise errors.UploadsFull(
                f"server busy: {self.uploads_in_progress} uploads in progress, the limit is {limit} "
                "(PARAKEET_MAX_UPLOADS_IN_PROGRESS)",
                retry_after_s=max(1, batcher.retry_after_s()),
            )
        self.uploads_in_progress += 1
        try:
            yield
        finally:
            self.uploads_in_progress -= 1

    def _serving_batcher(self) -> Batcher:
        if self.phase == "shutting_down":
            raise errors.ShuttingDown("the worker is shutting down; retry on another worker")
        if self.batcher is None or self.decoder is None or self.engine is None:
            raise errors.NotReady(f"the model is not ready yet ({self.detail}); retry shortly")
        return self.batcher

    @contextmanager
    def admitted(self) -> Iterator[Ticket]:
        """A place in this worker's GPU queue for one request, held until the block exits: enter it once the
        audio is in hand (after `receiving()`), before decoding it.

        Raises:
            ShuttingDown: draining for shutdown.
            NotReady: the model is loading (or failed to load).
            Overloaded: the queue is full (carries `retry_after_s`).
        """
        batcher = self._serving_batcher()
        ticket = batcher.admit()
        try:
            yield ticket
        finally:
            batcher.release(ticket)

    def open_stream(self, listener: Listener, *, vad: VadParams | None = None) -> StreamSession:
        """Admit a live stream (see `StreamScheduler.open`).

        Raises:
            ShuttingDown, NotReady, TooManyStreams, BadRequest (VAD unavailable).
        """
        if self.phase == "shutting_down":
            raise errors.ShuttingDown("the worker is shutting down; reconnect to another worker")
        if self.streams is None:
            raise errors.NotReady(f"the model is not ready yet ({self.detail}); retry shortly")
        return self.streams.open(listener, vad=vad)

    async def transcribe_waveform(self, waveform: Waveform, *, timestamps: bool) -> Outcome:
        """Transcribe the audio of a live stream's utterance through the offline batcher (so its text equals
        `/transcribe` on the same samples). Admitted as part of its stream: no queue limit applies; its batch
        is formed ahead of older uploads (a speaker is waiting).

        Args:
            waveform: float32 mono 16 kHz samples [T], T >= 1.
            timestamps: whether to compute word timestamps.

        Raises:
            DeadlineExceeded, InferenceError, DeviceOutOfMemory: as for uploads.
        """
        if self.batcher is None or self.engine is None:
            raise errors.NotReady(f"the model is not ready yet ({self.detail}); retry shortly")
        ticket = self.batcher.admit(reserved=True)
        try:
            audio = DecodedAudio(waveform, SAMPLE_RATE_HZ, 1, "stream")
            return await self._transcribe_waveform(ticket, audio, 0.0, timestamps, priority=True)
        finally:
            self.batcher.release(ticket)

    async def transcribe(
        self,
        ticket: Ticket,
        data: bytes,
        *,
        timestamps: bool,
        on_words: WordsCallback | None = None,
        confidence: bool = False,
        memory: MemoryReservation | None = None,
    ) -> Outcome:
        """Decode one uploaded file and transcribe it.

        Args:
            ticket: from `admitted()`, still held.
            data: the file's bytes, any container `parakeet.pipeline.audio.decode_audio` reads.
            timestamps: whether the caller needs word/segment/char timestamps (long audio computes them
                anyway: its chunks are merged by them).
            on_words: called with each chunk's words in order as they are ready (needs `timestamps`).
            confidence: word and token confidence and token log-probabilities on words and chars (implies
                timestamps; the text is unchanged).
            memory: the request's reservation of the audio memory budget: resized to the decoded waveform.

        Returns:
            The transcript and its timings.

        Raises:
            ParakeetError subclasses: every refusal in the error table (README, "Errors").
            asyncio.CancelledError: the caller was cancelled (client gone); queued chunks are dropped.
        """
        assert self.decoder is not None and self.batcher is not None and self.engine is not None
        t0 = time.perf_counter()
        if memory is not None:
            memory.resize(len(data))  # the bytes actually received
        decoded = await self.decoder.decode(data, max_duration_s=self.settings.max_audio_duration_s)
        del data  # the upload's bytes are not needed past decoding: do not hold them while queued
        if memory is not None:  # the decoded waveform (64 KB per second) replaces the upload's bytes
            memory.grow_to(decoded.waveform.nbytes, f"the decoded audio ({decoded.duration_s:.0f} s)")
        decode_ms = (time.perf_counter() - t0) * 1000
        metrics.DECODE.observe(decode_ms / 1000)
        outcome = await self._transcribe_waveform(
            ticket, decoded, decode_ms, timestamps or confidence, on_words=on_words, confidence=confidence
        )
        self.requests_served += 1
        metrics.AUDIO_DURATION.observe(decoded.duration_s)
        metrics.AUDIO_PROCESSED.inc(decoded.duration_s)
        return outcome

    async def _transcribe_waveform(
        self,
        ticket: Ticket,
        decoded: DecodedAudio,
        decode_ms: float,
        timestamps: bool,
        *,
        priority: bool = False,
        on_words: WordsCallback | None = None,
        confidence: bool = False,
    ) -> Outcome:
        """Up to `long_audio_threshold_s` the waveform is one batch item, as NeMo would run it. Longer audio is
        cut at quiet points into chunks that go through the batcher like any request, at most
        `long_audio_chunks_in_flight` at a time, so short requests interleave with a long one."""
        assert self.batcher is not None and self.engine is not None
        settings, batcher, waveform = self.settings, self.batcher, decoded.waveform
        if len(waveform) <= settings.long_audio_threshold_s * SAMPLE_RATE_HZ:
            chunks = [Chunk(0, len(waveform), float("-inf"), float("inf"))]
        else:
            chunks = plan_chunks(
                waveform, settings.long_audio_chunk_s, settings.long_audio_context_s, settings.long_audio_search_s
            )
        slots = asyncio.Semaphore(settings.long_audio_chunks_in_flight)
        timestamps = timestamps or len(chunks) > 1  # merge_transcripts places words by their timestamps

        async def one(piece: Waveform) -> ItemResult:
            async with slots:
                return await batcher.submit(
                    ticket, piece, timestamps=timestamps, priority=priority, confidence=confidence
                )

        tasks = [asyncio.ensure_future(one(waveform[c.start : c.end])) for c in chunks]
        results: list[ItemResult] = []
        try:
            for chunk, task in zip(chunks, tasks, strict=True):  # all run at once; answered in file order
                results.append(await task)
                if on_words is not None:
                    on_words(kept_spans(results[-1].transcript.words, chunk))
        except BaseException:
            for task in tasks:  # one chunk failed: its siblings must not go on to the GPU for nothing
                task.cancel()
            raise
        return Outcome(
            transcript=merge_transcripts(chunks, [r.transcript for r in results]),
            audio=decoded,
            model=self.engine.model_name,
            decode_ms=decode_ms,
            queue_ms=results[0].queue_ms,
            compute_ms=sum(r.compute_ms for r in results),
            batch_size=max(r.batch_size for r in results),
            chunks=len(chunks),
        )
