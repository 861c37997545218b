"""HTTP layer: the FastAPI app, its lifespan (claim a GPU, load, warm up), routes, limits and error table.

`uvicorn server:app --workers N` spawns N workers; each builds the app, claims one GPU through gpu_lock,
loads the model on a background thread (so /health answers 503 "loading" meanwhile) and serves. Importing
this module is cheap: no torch, no model, no lock (torch is imported inside the default engine factory).
Tensors never appear here: the engine takes float32 waveforms and returns transcripts.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any, NoReturn, Protocol

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

import errors
from audio import AudioDecoderPool
from batching import Batcher
from gpu_lock import NoFreeGpuError, claim_gpu
from http_errors import RETRY_AFTER_LOADING_S, install_error_handlers
from middleware import RequestIdMiddleware, UploadLimitMiddleware
from openai_api import install_openai_routes
from schemas import DeviceInfo, ErrorResponse, HealthResponse, Timestamps, TranscriptionResponse
from settings import Settings, load_settings
from worker import Engine, WorkerState, form_bool, transcribe_request

log = logging.getLogger("parakeet.server")

WARMUP_AUDIO_S = 2.0


class EngineFactory(Protocol):
    def visible_gpus(self) -> int: ...
    def __call__(self, settings: Settings, gpu_id: int | None) -> Engine: ...


class ParakeetEngineFactory:
    """Production factory: NeMo model named by PARAKEET_MODEL on the claimed GPU (or the CPU)."""

    def visible_gpus(self) -> int:
        import torch  # not inference: that imports NeMo (~5 s) before the worker can answer /health

        return torch.cuda.device_count() if torch.cuda.is_available() else 0

    def __call__(self, settings: Settings, gpu_id: int | None) -> Engine:
        import torch

        from inference import build_engine

        device = torch.device("cpu") if gpu_id is None else torch.device("cuda", gpu_id)
        return build_engine(
            settings.model,
            device,
            precision=settings.precision,
            cuda_graphs=settings.cuda_graphs,
            max_symbols_per_step=settings.max_symbols_per_step,
            torch_threads=settings.torch_threads,
        )


def exit_worker(message: str) -> NoReturn:
    """Log one line and end this worker with uvicorn's STARTUP_FAILURE code (3): the supervisor then stops
    instead of respawning a worker that would fail the same way."""
    log.critical("%s", message)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    os._exit(3)


# --- the app -------------------------------------------------------------------------------------------


def _setup_logging() -> None:
    root = logging.getLogger("parakeet")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _chain_shutdown_signals(state: WorkerState) -> None:
    """Mark the worker as shutting down the moment SIGTERM/SIGINT arrives, then let uvicorn's own handler
    run (it stops accepting and waits for in-flight requests; the lifespan then drains the queue). uvicorn
    installs its handlers before the lifespan starts, so ours wraps them."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: FrameType | None, previous: Any = previous) -> None:
            state.begin_shutdown()
            if callable(previous):
                previous(signum, frame)

        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. a test client's portal): nothing to wrap
            return


async def _load_model(state: WorkerState, factory: EngineFactory, on_fatal: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    try:
        engine = await loop.run_in_executor(state.gpu_executor, factory, state.settings, state.gpu_id)
        if state.settings.warmup:
            warm_ms = await loop.run_in_executor(state.gpu_executor, engine.warmup, WARMUP_AUDIO_S)
            log.info("warm-up batch took %.0f ms", warm_ms)
        state.device_info = await loop.run_in_executor(state.gpu_executor, engine.device_info)
        batcher = Batcher(engine.transcribe, state.gpu_executor, state.settings.batcher_config())
        if state.settings.warmup:
            batcher.stats.observe(WARMUP_AUDIO_S, warm_ms / 1000, 1)  # first Retry-After estimate
        batcher.start()
    except errors.ModelLoadError as exc:
        state.phase, state.detail = "failed", exc.message
        on_fatal(exc.message)
        return
    except Exception as exc:  # noqa: BLE001 - anything else at load time is just as fatal
        log.exception("model load failed")
        state.phase, state.detail = "failed", f"model load failed: {type(exc).__name__}: {exc}"
        on_fatal(state.detail)
        return
    if state.phase != "loading":  # shut down while loading
        return
    state.engine, state.batcher = engine, batcher
    state.phase, state.detail = "ok", None
    log.info("worker ready: model %s on %s", engine.model_name, state.device_info.get("name"))


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def create_app(
    settings: Settings | None = None,
    engine_factory: EngineFactory | None = None,
    on_fatal: Callable[[str], None] = exit_worker,
) -> FastAPI:
    """Build the app. Nothing heavy happens until the lifespan starts.

    Args:
        settings: defaults to the PARAKEET_* environment.
        engine_factory: builds the engine on the GPU thread; defaults to the NeMo Parakeet engine.
        on_fatal: called with one message when the worker cannot serve (no free GPU, model load failed);
            the default logs it and exits with code 3 so that uvicorn's supervisor stops, not respawns.
    """
    settings = settings or load_settings()
    factory: EngineFactory = engine_factory or ParakeetEngineFactory()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _setup_logging()
        state = WorkerState(settings=settings)
        app.state.worker = state
        if settings.device == "cpu":
            gpu_count = 0
        else:
            gpu_count = settings.gpu_count if settings.gpu_count is not None else factory.visible_gpus()
        if settings.device == "cuda" and gpu_count == 0:
            on_fatal("PARAKEET_DEVICE=cuda but no CUDA device is visible (check CUDA_VISIBLE_DEVICES, drivers)")
        if gpu_count > 0:
            try:
                state.gpu_claim = claim_gpu(settings.gpu_lock_dir, gpu_count)
            except NoFreeGpuError as exc:
                on_fatal(str(exc))
                raise
            log.info("claimed GPU %d (%s)", state.gpu_id, state.gpu_claim.path)
        else:
            log.info("no CUDA device: running on the CPU")
        state.decoder = AudioDecoderPool(
            settings.decode_workers, settings.decode_timeout_s, settings.decode_memory_limit_bytes
        )
        state.decoder.start()  # on this (the loop's) thread: see AudioDecoderPool.start
        loader = asyncio.create_task(_load_model(state, factory, on_fatal))
        _chain_shutdown_signals(state)
        try:
            yield
        finally:
            state.begin_shutdown()
            if state.batcher is not None:
                drained = await state.batcher.drain(settings.shutdown_drain_s)
                log.info("shutdown: %s", "all admitted requests answered" if drained else "drain timed out")
            loader.cancel()
            state.gpu_executor.shutdown(wait=True, cancel_futures=True)
            state.decoder.close()
            if state.gpu_claim is not None:
                state.gpu_claim.release()

    app = FastAPI(
        title="Parakeet-TDT transcription server",
        version="0.1.0",
        lifespan=lifespan,
        responses={400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
    )
    install_error_handlers(app)
    app.add_middleware(UploadLimitMiddleware, max_upload_bytes=settings.max_upload_bytes)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
    async def health(request: Request) -> JSONResponse:
        state: WorkerState = request.app.state.worker
        body = HealthResponse(
            status=state.phase,
            ready=state.ready,
            model=settings.model,
            gpu_id=state.gpu_id,
            device=DeviceInfo.model_validate(state.device_info) if state.device_info else None,
            worker_pid=os.getpid(),
            uptime_s=round(time.monotonic() - state.started_at, 3),
            requests_served=state.requests_served,
            queued_requests=state.batcher.queued_requests if state.batcher else 0,
            queued_audio_s=round(state.batcher.queued_audio_s, 3) if state.batcher else 0.0,
            mean_batch_size=_mean(state.batcher.stats.batch_sizes) if state.batcher else None,
            batches=state.batcher.stats.batches if state.batcher else 0,
            dropped_requests=state.batcher.stats.cancelled + state.batcher.stats.expired if state.batcher else 0,
            failed_batches=state.batcher.stats.failed_batches if state.batcher else 0,
            detail=state.detail,
        )
        headers = {} if state.ready else {"Retry-After": str(RETRY_AFTER_LOADING_S)}
        return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503, headers=headers)

    @app.post(
        "/transcribe",
        response_model=TranscriptionResponse,
        responses={413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}},
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        },
    )
    async def transcribe(request: Request, response: Response) -> TranscriptionResponse:
        """Transcribe one uploaded audio file (multipart field `file`; optional `timestamps=true`)."""
        state: WorkerState = request.app.state.worker
        want_timestamps, outcome = await transcribe_request(request, state, lambda form: form_bool(form, "timestamps"))
        response.headers.update(outcome.timing_headers(state.gpu_id))
        t = outcome.transcript
        return TranscriptionResponse(
            text=t.text,
            duration_sec=round(outcome.audio.duration_s, 4),
            processing_time_ms=round(outcome.processing_time_ms, 2),
            gpu_id=state.gpu_id,
            model=outcome.model,
            request_id=outcome.request_id,
            decode_ms=round(outcome.decode_ms, 2),
            queue_ms=round(outcome.queue_ms, 2),
            compute_ms=round(outcome.compute_ms, 2),
            batch_size=outcome.batch_size,
            chunks=outcome.chunks,
            source_sample_rate_hz=outcome.audio.source_sample_rate_hz,
            source_channels=outcome.audio.source_channels,
            timestamps=Timestamps.of(t) if want_timestamps else None,
        )

    install_openai_routes(app)
    return app


app = create_app()
