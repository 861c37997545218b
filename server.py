"""The composition root: `create_app` wires settings, the GPU lock, the engine, the worker and the routers.

`uvicorn server:app --workers N` (or `uvicorn --factory server:create_app`) spawns N workers; each builds
the app, and its lifespan claims one GPU through gpu_lock, starts the audio decoders, loads the model on
the worker's GPU thread in the background (so /health answers 503 "loading" meanwhile) and serves.
Importing this module is cheap: no torch, no model, no lock (torch is imported inside the engine factory).
The layers it wires: parakeet.api (HTTP) -> parakeet.pipeline (bytes to transcript) -> parakeet.core.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from standardwebhooks.webhooks import Webhook

from gpu_lock import GpuClaim, NoFreeGpuError, claim_gpu
from parakeet import VERSION
from parakeet.api.errors import install_error_handlers
from parakeet.api.middleware import (
    PROBE_AND_METRICS_PATHS,
    ApiKeyMiddleware,
    RequestIdMiddleware,
    UploadLimitMiddleware,
)
from parakeet.api.routes import health, jobs, metrics, openai, realtime, streams, transcribe, web
from parakeet.api.schemas import ErrorResponse
from parakeet.api.wyoming import WyomingServer
from parakeet.core import errors
from parakeet.core.engine import DiarizerFactory, EngineFactory, VadFactory
from parakeet.core.logs import configure_logging
from parakeet.core.settings import Settings, load_settings
from parakeet.core.tuning import Tuning
from parakeet.engine.factories import ParakeetEngineFactory, SileroVadFactory, SortformerDiarizerFactory
from parakeet.jobs.audio import job_audio_for
from parakeet.jobs.databases import open_database
from parakeet.jobs.runner import JobRunner, RunnerConfig
from parakeet.jobs.store import JobStore
from parakeet.jobs.webhooks import WebhookConfig, WebhookSender
from parakeet.pipeline.fetch import UrlPolicy
from parakeet.pipeline.worker import Worker

log = logging.getLogger("parakeet.server")
_background: set[asyncio.Task[None]] = set()  # tasks started from signal handlers (the loop keeps weak refs)


def exit_worker(message: str) -> NoReturn:
    """Log one line and end this worker with uvicorn's STARTUP_FAILURE code (3): the supervisor then stops
    instead of respawning a worker that would fail the same way."""
    if not logging.getLogger("parakeet").handlers:  # settings may be what failed: log as text
        configure_logging()
    log.critical("%s", message)
    for handler in logging.getLogger().handlers + logging.getLogger("parakeet").handlers:
        handler.flush()
    os._exit(3)


def _reload_phrases_on_hup(worker: Worker) -> Callable[[], None]:
    """SIGHUP re-reads PARAKEET_KEYWORDS_FILE at once, changed or not (a change is also seen at the next request
    without it). Only in a worker that is its own process's main thread (one worker: the server's pid; with
    several, uvicorn's supervisor takes SIGHUP as "restart the workers"). Returns a function that puts the
    previous handler back."""
    loop = asyncio.get_running_loop()

    def handler(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(worker.phrases.reload)

    try:
        previous = signal.signal(signal.SIGHUP, handler)
    except ValueError:  # not the main thread
        return lambda: None

    def restore() -> None:
        signal.signal(signal.SIGHUP, previous)

    return restore


def _chain_shutdown_signals(worker: Worker) -> Callable[[], None]:
    """The first step of the worker's one shutdown path: `begin_shutdown()` the moment SIGTERM/SIGINT arrives, then
    let uvicorn's own handler run (it stops accepting and waits for in-flight requests; the lifespan then calls
    `worker.close()`). uvicorn installs its handlers before the lifespan starts, so ours wraps them. Returns a
    function that puts the previous handlers back (an app served in-process, as in the tests, must not leave its
    handlers behind)."""
    previous_handlers: dict[int, Any] = {}
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            first = worker.phase != "shutting_down"
            worker.begin_shutdown()
            if not callable(previous):
                return
            if first and worker.streams is not None and worker.streams.open_streams:
                # uvicorn would close every WebSocket at once (1012): let open streams send the final of their
                # current utterance and close with 1001 first (bounded by shutdown_drain_s; a second signal
                # does not wait).
                async def then_uvicorn() -> None:
                    await worker.wait_streams_closed(worker.settings.shutdown_drain_s)
                    previous(signum, frame)

                def schedule() -> None:
                    task = loop.create_task(then_uvicorn())
                    _background.add(task)
                    task.add_done_callback(_background.discard)

                loop.call_soon_threadsafe(schedule)
                return
            previous(signum, frame)

        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread: nothing to wrap
            break
        previous_handlers[sig] = previous

    def restore() -> None:
        for sig, previous in previous_handlers.items():
            signal.signal(sig, previous)

    return restore


def _claim_device(
    settings: Settings, tuning: Tuning, factory: EngineFactory, on_fatal: Callable[[str], None]
) -> GpuClaim | None:
    """The GPU lock this worker holds for its life, or None to run on the CPU."""
    gpu_count = 0 if settings.device == "cpu" else factory.visible_gpus()
    if settings.device == "cuda" and gpu_count == 0:
        on_fatal("PARAKEET_DEVICE=cuda but no CUDA device is visible (check CUDA_VISIBLE_DEVICES, drivers)")
    if gpu_count == 0:
        log.info("no CUDA device: running on the CPU")
        return None
    try:
        claim = claim_gpu(Path(tuning.gpu_lock_dir), gpu_count, settings.workers_per_gpu)
    except NoFreeGpuError as exc:
        on_fatal(str(exc))
        raise
    log.info("claimed GPU %d slot %d of %d (%s)", claim.gpu_id, claim.slot, settings.workers_per_gpu, claim.path)
    return claim


@dataclass(frozen=True)
class Factories:
    """What builds a worker's models on its GPU and VAD threads (production: `parakeet.engine.factories`)."""

    engine: EngineFactory
    vad: VadFactory
    diarizer: DiarizerFactory


async def _load(worker: Worker, factories: Factories, on_fatal: Callable[[str], None]) -> None:
    try:
        await worker.load(factories.engine, factories.vad, factories.diarizer)
    except (errors.ModelLoadError, errors.InvalidSettings) as exc:
        on_fatal(exc.message)
    except Exception:
        log.exception("model load failed")
        on_fatal(worker.detail or "model load failed")


async def _start_wyoming(settings: Settings, worker: Worker, on_fatal: Callable[[str], None]) -> WyomingServer | None:
    """The Wyoming listener when PARAKEET_WYOMING_PORT is set (a port that cannot be bound is fatal)."""
    if settings.wyoming_port is None:
        return None
    server = WyomingServer(worker, settings.host, settings.wyoming_port)
    try:
        await server.start()
    except OSError as exc:
        on_fatal(f"cannot listen for Wyoming on {settings.host}:{settings.wyoming_port}: {exc.strerror}")
        raise
    return server


def _start_jobs(
    app: FastAPI, settings: Settings, tuning: Tuning, worker: Worker, on_fatal: Callable[[str], None]
) -> JobRunner | None:
    """Open the jobs database and start this worker's job runner and webhook sender (PARAKEET_JOBS; a database
    that cannot be opened is fatal). The webhook secret was checked with the settings."""
    if not settings.jobs:
        return None
    try:
        store = JobStore(open_database(settings.jobs_database_url, Path(settings.data_dir)))
    except errors.InvalidSettings as exc:
        on_fatal(exc.message)
        raise
    app.state.job_store = store
    app.state.job_audio = audio = job_audio_for(store, Path(settings.data_dir))
    secret = settings.jobs_webhook_secret
    signer = Webhook(secret.get_secret_value()) if secret is not None else None
    app.state.job_signer = signer
    webhooks = WebhookSender(store, WebhookConfig(signer, app.state.url_policy, tuning.webhook_backoff_s,
                                                  tuning.jobs_lease_s, tuning.jobs_poll_s))  # fmt: skip
    runner = JobRunner(store, audio, worker, RunnerConfig.from_settings(settings, tuning), webhooks)
    runner.start()
    return runner


def _lifespan(
    settings: Settings, tuning: Tuning, factories: Factories, on_fatal: Callable[[str], None]
) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        claim = _claim_device(settings, tuning, factories.engine, on_fatal)
        try:
            worker = Worker(
                settings, tuning, gpu_id=claim.gpu_id if claim else None, gpu_slot=claim.slot if claim else None
            )
        except errors.InvalidSettings as exc:  # PARAKEET_KEYWORDS_FILE unreadable or invalid
            on_fatal(exc.message)
            raise
        app.state.worker = worker
        await worker.start()
        runner = _start_jobs(app, settings, tuning, worker, on_fatal)
        wyoming = await _start_wyoming(settings, worker, on_fatal)
        loader = asyncio.create_task(_load(worker, factories, on_fatal))
        restore_signals = _chain_shutdown_signals(worker)
        restore_hup = _reload_phrases_on_hup(worker)
        try:
            yield
        finally:
            loader.cancel()
            if wyoming is not None:
                await wyoming.stop()
            if runner is not None:
                await runner.stop()  # its running job goes back to the queue, for the next start or another worker
            await worker.close()
            if runner is not None:
                runner.store.close()
            restore_signals()
            restore_hup()
            if claim is not None:
                claim.release()

    return lifespan


# Response headers a browser app may read (CORS): the request id, where the time went, and back-off.
_EXPOSED = ["X-Request-Id", "X-Queue-Ms", "X-Compute-Ms", "X-Batch-Size", "X-Gpu-Id", "Retry-After"]


def _api_keys(settings: Settings, on_fatal: Callable[[str], None]) -> list[str]:
    try:
        return settings.api_key_list()
    except errors.InvalidSettings as exc:
        on_fatal(exc.message)
        raise


def create_app(
    settings: Settings | None = None,
    engine_factory: EngineFactory | None = None,
    on_fatal: Callable[[str], None] = exit_worker,
    *,
    vad_factory: VadFactory | None = None,
    diarizer_factory: DiarizerFactory | None = None,
    tuning: Tuning | None = None,
) -> FastAPI:
    """Build the app. Nothing heavy happens until the lifespan starts.

    Args:
        settings: defaults to the PARAKEET_* environment (invalid or unknown values: `on_fatal` with one message).
        engine_factory: builds the engine on the GPU thread; defaults to the NeMo Parakeet engine.
        on_fatal: called with one message when the worker cannot serve (bad settings, no free GPU, model load
            failed); the default logs it and exits with code 3 so that uvicorn's supervisor stops, not respawns.
        vad_factory: builds the live streams' speech detector; defaults to Silero VAD.
        diarizer_factory: builds the speaker diarizer on the GPU thread; defaults to NeMo's Sortformer named by
            PARAKEET_DIARIZATION_MODEL (none without it).
        tuning: the internal constants (parakeet/core/tuning.py); tests pass smaller limits.

    Raises:
        InvalidSettings: `settings` not given, the environment is invalid, and `on_fatal` returned.
    """
    if settings is None:
        try:
            settings = load_settings()
        except errors.InvalidSettings as exc:
            on_fatal(exc.message)
            raise
    tuning = tuning or Tuning()
    configure_logging(settings.log_format, settings.log_level)
    factories = Factories(engine_factory or ParakeetEngineFactory(tuning), vad_factory or SileroVadFactory(),
                          diarizer_factory or SortformerDiarizerFactory())  # fmt: skip
    app = FastAPI(
        title="Parakeet-TDT transcription server",
        version=VERSION,
        lifespan=_lifespan(settings, tuning, factories, on_fatal),
        responses={400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    )
    try:
        app.state.url_policy = UrlPolicy.from_settings(settings, tuning)
    except errors.InvalidSettings as exc:
        on_fatal(exc.message)
        raise
    install_error_handlers(app)
    _add_middleware(app, settings, tuning, on_fatal)
    for router in (transcribe.router, *((jobs.router,) if settings.jobs else ()), health.router, metrics.router,
                   openai.router, streams.router, realtime.router):  # fmt: skip
        app.include_router(router)
    if settings.web_ui:
        web.install(app)
    return app


def _add_middleware(app: FastAPI, settings: Settings, tuning: Tuning, on_fatal: Callable[[str], None]) -> None:
    """Outermost last: request id -> CORS (preflights need no key) -> API key -> upload cap -> routes."""
    app.add_middleware(
        UploadLimitMiddleware,
        max_upload_bytes=settings.max_upload_bytes,
        body_idle_timeout_s=tuning.body_idle_timeout_s,
        body_min_rate_bytes_s=tuning.body_min_rate_bytes_s,
        body_grace_s=tuning.body_grace_s,
    )
    if keys := _api_keys(settings, on_fatal):
        # The browser page and its files are open (it asks for the key itself); the API calls it makes are not.
        app.add_middleware(
            ApiKeyMiddleware,
            keys=keys,
            open_paths=[*PROBE_AND_METRICS_PATHS, *(web.OPEN_PATHS if settings.web_ui else ())],
            open_prefixes=web.OPEN_PREFIXES if settings.web_ui else (),
        )
    if origins := settings.cors_origin_list():
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["*"], allow_headers=["*"], expose_headers=_EXPOSED
        )
    app.add_middleware(RequestIdMiddleware)


app = create_app()
