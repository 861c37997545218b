"""One worker: its life cycle (loading -> ok -> shutting_down, or failed) and what it serves with.

Requests enter through `request()` (the lifecycle: parakeet.pipeline.requests), live streams through
`open_stream()` (parakeet.pipeline.stream_scheduler); `/health` reads `snapshot()`. Shutdown has one path:
`begin_shutdown()` (from the first signal: refuse new work, ask open streams to finalize), then `close()` (drain,
stop). This module never sees a request, a form or a socket, and never touches tensors (the engine does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

from parakeet import VERSION
from parakeet.core import errors, metrics
from parakeet.core.engine import (
    SAMPLE_RATE_HZ,
    DeviceInfo,
    Diarizer,
    DiarizerFactory,
    Engine,
    EngineFactory,
    VadFactory,
    VoiceActivityModel,
    Waveform,
)
from parakeet.core.keywords import KeyPhrases, check_spelling, merge_key_phrases
from parakeet.core.settings import Settings, decoder_pool_size, host_workers
from parakeet.core.tuning import Tuning
from parakeet.pipeline.batch_policy import BatcherConfig, ItemOptions
from parakeet.pipeline.batching import Batcher
from parakeet.pipeline.decoder_pool import AudioDecoderPool
from parakeet.pipeline.diarization import DiarizationConfig, DiarizationQueue
from parakeet.pipeline.gpu import GpuArbiter
from parakeet.pipeline.memory import MemoryBudget
from parakeet.pipeline.phrase_file import ServerPhrases
from parakeet.pipeline.requests import (
    AudioSummary,
    Capabilities,
    Outcome,
    RequestLifecycle,
    ServingPipeline,
)
from parakeet.pipeline.stream_config import StreamConfig
from parakeet.pipeline.stream_scheduler import StreamScheduler
from parakeet.pipeline.stream_session import Listener, StreamSession
from parakeet.pipeline.transcriber import LongAudioConfig, Transcriber
from parakeet.pipeline.upload_pool import UploadPool
from parakeet.pipeline.vad import VadParams

log = logging.getLogger("parakeet.worker")

Phase = Literal["loading", "ok", "shutting_down", "failed"]


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, as taskset and container CPU sets narrow it)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class WorkerSnapshot:
    """The worker's state and load at one moment, as `/health` reports it (README "GET /health")."""

    phase: Phase
    ready: bool
    detail: str | None
    model: str
    diarization_model: str | None
    gpu_id: int | None
    gpu_slot: int | None
    device: DeviceInfo | None
    uptime_s: float
    requests_served: int
    queued_requests: int
    uploads_in_progress: int
    inflight_audio_bytes: int
    queued_audio_s: float
    batch_sizes: tuple[int, ...]
    batches: int
    dropped_requests: int
    failed_batches: int
    streams_open: int
    streams_refused: int
    stream_steps: int
    step_batch_sizes: tuple[int, ...]
    step_compute_ms: tuple[float, ...]
    max_stream_lag_s: float


class Worker:
    """Per-worker runtime state and pipeline (one per process, on `app.state`; no module globals).

    Create it, `await start()` on the event loop, `await load(...)` the engine (the worker answers /health
    meanwhile), serve with `request()` and `open_stream()`; `begin_shutdown()` then `await close()` at the end.
    """

    def __init__(
        self, settings: Settings, tuning: Tuning, gpu_id: int | None = None, gpu_slot: int | None = None
    ) -> None:
        self.settings, self.tuning, self.gpu_id, self.gpu_slot = settings, tuning, gpu_id, gpu_slot
        self.started_at = time.monotonic()
        self.phase: Phase = "loading"
        self.detail: str | None = "model is loading"
        self.engine: Engine | None = None
        self.batcher: Batcher | None = None
        self.streams: StreamScheduler | None = None
        self.diarization: DiarizationQueue | None = None  # with PARAKEET_DIARIZATION_MODEL
        self.device_info: DeviceInfo | None = None
        self.requests_served = 0
        self.gpu = GpuArbiter()
        pool = decoder_pool_size(tuning.decode_workers, available_cores(), host_workers())
        self.decoder = AudioDecoderPool(pool, tuning.decode_timeout_s,
                                        tuning.decode_memory_limit_bytes)  # fmt: skip
        self.memory = MemoryBudget(settings.max_inflight_audio_bytes, self._retry_after_s)
        self.phrases = ServerPhrases(settings.keywords_file)  # raises InvalidSettings on a bad file
        self.uploads = UploadPool(
            tuning.uploads_per_queue_place * settings.max_queue_requests, self._retry_after_s,
            f"{tuning.uploads_per_queue_place} x PARAKEET_MAX_QUEUE_REQUESTS",
        )  # fmt: skip
        self._serving: ServingPipeline | None = None
        self.capabilities: Capabilities | None = None  # known once the models are loaded
        self._vad_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vad")
        self._device_refresh: asyncio.Task[None] | None = None

    @property
    def ready(self) -> bool:
        return self.phase == "ok"

    def _retry_after_s(self) -> int:
        return self.batcher.retry_after_s() if self.batcher is not None else 10

    # --- life cycle ------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the GPU thread and the audio-decoder subprocesses (call on the event loop's thread: see
        AudioDecoderPool.start), and publish this worker's first metrics (after dropping those of workers that
        died uncleanly)."""
        dead = metrics.sweep_dead_workers()
        if dead:
            log.info("removed the live metrics of %d dead worker(s): pids %s", len(dead), dead)
        metrics.WORKER_READY.set(0)
        metrics.WORKER_DRAINING.set(0)
        self.gpu.start()
        await self.decoder.start()

    async def load(
        self, engine_factory: EngineFactory, vad_factory: VadFactory, diarizer_factory: DiarizerFactory | None = None
    ) -> None:
        """Build the engine and the diarizer on the GPU thread and the VAD on its own, warm up, start the
        schedulers, become ready.

        Raises:
            ModelLoadError: from a factory (phase becomes "failed", detail says why).
            InvalidSettings: the server-wide phrase list holds a phrase the model cannot spell (phase "failed").
            Exception: anything else the factories or the warm-up raised (phase "failed" too).
        """
        try:
            engine, diarizer, vad, warm_ms, device_info = await self._build(
                engine_factory, vad_factory, diarizer_factory
            )
        except errors.ModelLoadError as exc:
            self.phase, self.detail = "failed", exc.message
            raise
        except Exception as exc:
            self.phase, self.detail = "failed", f"model load failed: {type(exc).__name__}: {exc}"
            raise
        if self.phase != "loading":  # shut down while loading
            return
        try:
            self.phrases.check_with(engine.unspellable)
        except errors.InvalidSettings as exc:
            self.phase, self.detail = "failed", exc.message
            raise
        self._serve_with(engine, diarizer, vad, warm_ms)
        self.device_info = device_info
        self.phase, self.detail = "ok", None
        metrics.WORKER_READY.set(1)
        self._publish_device(device_info)
        device = "cpu" if self.gpu_id is None else f"cuda:{self.gpu_id}"
        s, graphs = self.settings, "on" if device_info.cuda_graphs else "off"
        metrics.BUILD_INFO.labels(
            version=VERSION,
            model=s.model,
            precision=s.precision,
            device=device,
            cuda_graphs=graphs,
            encoder=device_info.encoder_backend,
        ).set(1)
        self._device_refresh = asyncio.get_running_loop().create_task(self._refresh_device())
        log.info(
            "worker ready: model %s on %s, encoder %s, CUDA graphs %s (%s)",
            engine.model_name, device_info.name, device_info.encoder_backend, graphs, device_info.cuda_graphs_reason,
        )  # fmt: skip

    async def _build(
        self, engine_factory: EngineFactory, vad_factory: VadFactory, diarizer_factory: DiarizerFactory | None
    ) -> tuple[Engine, Diarizer | None, VoiceActivityModel | None, float, DeviceInfo]:
        """The factories' models, warmed up: engine, diarizer (None without one), VAD, the engine's warm-up ms and
        its device."""
        engine = await self.gpu.run("control", engine_factory, self.settings, self.gpu_id)
        warm_ms = await self.gpu.run("control", engine.warmup, self.tuning.warmup_audio_s)
        log.info("warm-up batch took %.0f ms", warm_ms)
        diarizer = None
        if diarizer_factory is not None:
            diarizer = await self.gpu.run("control", diarizer_factory, self.settings, self.gpu_id)
        if diarizer is not None:
            log.info("diarizer warm-up took %.0f ms", await self.gpu.run("control", diarizer.warmup))
        device_info = await self.gpu.run("control", engine.device_info)
        vad = await asyncio.get_running_loop().run_in_executor(self._vad_executor, vad_factory)
        return engine, diarizer, vad, warm_ms, device_info

    def _serve_with(
        self, engine: Engine, diarizer: Diarizer | None, vad: VoiceActivityModel | None, warm_ms: float
    ) -> None:
        s, t = self.settings, self.tuning
        batcher = Batcher(engine, self.gpu, BatcherConfig.from_settings(s, t))
        batcher.stats.observe(t.warmup_audio_s, warm_ms / 1000, 1)  # the first Retry-After estimate
        batcher.start()
        transcriber = Transcriber(batcher, LongAudioConfig.from_settings(s, t))
        streams = StreamScheduler(
            engine, self.gpu, (vad, self._vad_executor) if vad is not None else None,
            StreamConfig.from_settings(s, t), self._final,
        )  # fmt: skip
        streams.start()
        self.engine, self.batcher, self.streams = engine, batcher, streams
        if diarizer is not None:
            self.diarization = DiarizationQueue(
                diarizer, self.gpu, DiarizationConfig(t.diarization_max_batch, s.max_batch_audio_s)
            )
            self.diarization.start()
        self.capabilities = Capabilities(
            model_name=engine.model_name,
            diarizer=diarizer.model_name if diarizer is not None else None,
            diarizer_max_audio_s=diarizer.max_audio_s if diarizer is not None else None,
        )
        self._serving = ServingPipeline(
            decoder=self.decoder, batcher=batcher, transcriber=transcriber, capabilities=self.capabilities,
            hooks=self, max_audio_duration_s=s.max_audio_duration_s, diarization=self.diarization,
            diarization_bytes_per_s=t.diarization_bytes_per_s,
        )  # fmt: skip

    def _publish_device(self, info: DeviceInfo) -> None:
        if info.memory_used_bytes is not None:
            metrics.GPU_MEMORY_USED.labels(gpu=str(info.index)).set(info.memory_used_bytes)

    async def _refresh_device(self) -> None:
        """Refresh the device memory gauge now and then, on the GPU thread (between batches)."""
        while self.engine is not None and self.phase == "ok":
            await asyncio.sleep(self.tuning.device_refresh_s)
            info = await self.gpu.run("control", self.engine.device_info)
            self.device_info = info
            self._publish_device(info)

    def begin_shutdown(self) -> None:
        """From the first shutdown signal on: not ready, new requests and streams get 503/1012, admitted ones
        finish, open streams finalize their utterance and close (1001). Idempotent."""
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
        return self.streams is None or await self.streams.wait_closed(timeout_s)

    async def close(self) -> None:
        """Shut down (`begin_shutdown`), let open streams finalize, drain admitted requests (up to
        `shutdown_drain_s` each), then stop the GPU thread, the VAD thread and the decoders."""
        self.begin_shutdown()
        drain_s = self.settings.shutdown_drain_s
        if self.streams is not None:
            if not await self.streams.wait_closed(drain_s):
                log.info("shutdown: %d stream(s) still open after the drain time", self.streams.open_streams)
            self.streams.stop()
        if self.batcher is not None:
            drained = await self.batcher.drain(drain_s)
            log.info("shutdown: %s", "all admitted requests answered" if drained else "drain timed out")
        if self._device_refresh is not None:
            self._device_refresh.cancel()
        if self.diarization is not None:
            await self.diarization.close()
        await self.gpu.close()
        self._vad_executor.shutdown(wait=True, cancel_futures=True)
        await self.decoder.close()
        metrics.mark_this_worker_gone()

    # --- serving ---------------------------------------------------------------------------------------

    def _check_serving(self, reconnect: str = "retry") -> ServingPipeline:
        """The one readiness check of every entry point.

        Raises:
            ShuttingDown: draining for shutdown. NotReady: the model is loading (or failed to load).
        """
        if self.phase == "shutting_down":
            raise errors.ShuttingDown(f"the worker is shutting down; {reconnect} on another worker")
        if self._serving is None or self.phase != "ok":
            raise errors.NotReady(f"the model is not ready yet ({self.detail}); retry shortly")
        return self._serving

    @contextlib.asynccontextmanager
    async def request(
        self, *, declared_bytes: int, disconnected: Callable[[], Awaitable[object]] | None = None
    ) -> AsyncIterator[RequestLifecycle]:
        """The lifecycle of one transcription request (parakeet.pipeline.requests): open it before the body is read.

        Args:
            declared_bytes: the body's Content-Length (the upload cap when none is sent; 0 for audio that arrives
                in pieces and is held as it comes: `RequestLifecycle.hold_memory`).
            disconnected: returns when the client goes away.

        Raises:
            ShuttingDown, NotReady (503); MemoryBudgetFull, Overloaded, UploadsFull (429): all before the body.
        """
        serving = self._check_serving()
        reservation = self.memory.reserve(declared_bytes, "the request body (its Content-Length, or the upload cap)")
        try:
            serving.batcher.check_admission()
            give_back = self.uploads.take()
        except BaseException:
            reservation.release()
            raise
        lifecycle = RequestLifecycle(serving, reservation, give_back, disconnected)
        try:
            yield lifecycle
        finally:
            lifecycle.close()

    @contextlib.asynccontextmanager
    async def upload(self, *, declared_bytes: int) -> AsyncIterator[None]:
        """Receive a body that is stored rather than transcribed now (a job's audio): its memory and an upload
        place, as `request()` holds them, without the GPU queue's admission or the model's readiness.

        Raises:
            ShuttingDown (503); MemoryBudgetFull, UploadsFull (429).
        """
        if self.phase == "shutting_down":
            raise errors.ShuttingDown("the worker is shutting down; retry on another worker")
        reservation = self.memory.reserve(declared_bytes, "the request body (its Content-Length, or the upload cap)")
        try:
            give_back = self.uploads.take()
            try:
                yield
            finally:
                give_back()
        finally:
            reservation.release()

    def served(self, outcome: Outcome) -> None:
        """A request was answered: the served count and the audio metrics (`WorkerHooks`)."""
        self.requests_served += 1
        metrics.AUDIO_DURATION.observe(outcome.audio.duration_s)
        metrics.AUDIO_PROCESSED.inc(outcome.audio.duration_s)

    async def _final(self, waveform: Waveform, timestamps: bool, keywords: KeyPhrases | None = None) -> Outcome:
        """A live stream's utterance through the offline batcher (so its text equals `/transcribe` on the same
        samples). Admitted as part of its stream: no queue limit applies, not even shutdown (its stream is
        finalizing); its batch is formed ahead of older uploads (a speaker is waiting).

        Raises:
            DeadlineExceeded, InferenceError, DeviceOutOfMemory: as for uploads.
        """
        if self._serving is None:
            raise errors.NotReady(f"the model is not ready yet ({self.detail}); retry shortly")
        s = self._serving
        ticket = s.batcher.admit(reserved=True)
        try:
            options = ItemOptions(timestamps=timestamps, keywords=keywords, lane="final")
            done = await s.transcriber.run(ticket, waveform, options)
        finally:
            s.batcher.release(ticket)
        audio = AudioSummary(len(waveform) / SAMPLE_RATE_HZ, SAMPLE_RATE_HZ, 1)
        return Outcome(done.transcript, audio, s.capabilities.model_name, 0.0, done.queue_ms, done.compute_ms,
                       done.batch_size, done.chunks)  # fmt: skip

    def open_stream(
        self,
        listener: Listener,
        *,
        vad: VadParams | None = None,
        timestamps: bool = False,
        keywords: KeyPhrases | None = None,
        finals: bool = True,
    ) -> StreamSession:
        """Admit a live stream (see `StreamScheduler.open`; `finals=False`: partials only); `keywords` and the
        server-wide list (PARAKEET_KEYWORDS_FILE, as it is when the stream opens) are boosted in its partials and
        finals.

        Raises:
            ShuttingDown, NotReady, TooManyStreams, BadRequest (VAD unavailable, a phrase the model cannot spell).
        """
        self._check_serving("reconnect")
        assert self.streams is not None
        self.check_key_phrases(keywords)
        phrases = merge_key_phrases(keywords, self.phrases.current())
        return self.streams.open(listener, vad=vad, timestamps=timestamps, keywords=phrases, finals=finals)

    def server_phrases(self) -> KeyPhrases | None:
        """The server-wide key phrases as they are now (PARAKEET_KEYWORDS_FILE; `WorkerHooks`)."""
        return self.phrases.current()

    def check_key_phrases(self, keywords: KeyPhrases | None) -> None:
        """Refuse phrases the loaded model cannot spell (`check_spelling`; nothing to check before it is loaded).

        Raises:
            BadRequest: param `keywords`.
        """
        if self.engine is not None:
            check_spelling(keywords, self.engine.unspellable)

    def snapshot(self) -> WorkerSnapshot:
        """The state and load, read from counters only (never waits behind the GPU)."""
        b, st = self.batcher, self.streams
        return WorkerSnapshot(
            phase=self.phase, ready=self.ready, detail=self.detail, model=self.settings.model, gpu_id=self.gpu_id,
            gpu_slot=self.gpu_slot,
            diarization_model=self.capabilities.diarizer if self.capabilities is not None else None,
            device=self.device_info, uptime_s=time.monotonic() - self.started_at,
            requests_served=self.requests_served,
            queued_requests=b.queued_requests if b else 0,
            uploads_in_progress=self.uploads.taken,
            inflight_audio_bytes=self.memory.held_bytes,
            queued_audio_s=b.queued_audio_s if b else 0.0,
            batch_sizes=tuple(b.stats.batch_sizes) if b else (),
            batches=b.stats.batches if b else 0,
            dropped_requests=b.stats.cancelled + b.stats.expired if b else 0,
            failed_batches=b.stats.failed_batches if b else 0,
            streams_open=st.open_streams if st else 0,
            streams_refused=st.stats.refused if st else 0,
            stream_steps=st.stats.steps if st else 0,
            step_batch_sizes=tuple(st.stats.batch_sizes) if st else (),
            step_compute_ms=tuple(st.stats.compute_ms) if st else (),
            max_stream_lag_s=st.max_lag_s if st else 0.0,
        )  # fmt: skip
