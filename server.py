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
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn, Protocol

import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

import errors
from audio import AudioDecoderPool
from batching import Batcher, ItemResult, Ticket
from gpu_lock import GpuClaim, NoFreeGpuError, claim_gpu
from http_errors import RETRY_AFTER_LOADING_S, install_error_handlers, request_id
from middleware import RequestIdMiddleware, UploadLimitMiddleware
from schemas import DeviceInfo, ErrorResponse, HealthResponse, TranscriptionResponse
from settings import Settings, load_settings

log = logging.getLogger("parakeet.server")

WARMUP_AUDIO_S = 2.0


class Engine(Protocol):
    """What the server needs of a model (inference.ParakeetEngine, or a fake in tests)."""

    model_name: str

    def transcribe(self, waveforms: Sequence[npt.NDArray[np.float32]]) -> Any: ...  # -> inference.BatchResult
    def warmup(self, duration_s: float = WARMUP_AUDIO_S) -> float: ...
    def device_info(self) -> dict[str, Any]: ...


class EngineFactory(Protocol):
    def visible_gpus(self) -> int: ...
    def __call__(self, settings: Settings, gpu_id: int | None) -> Engine: ...


class ParakeetEngineFactory:
    """Production factory: NeMo model named by PARAKEET_MODEL on the claimed GPU (or the CPU)."""

    def visible_gpus(self) -> int:
        from inference import cuda_device_count

        return cuda_device_count()

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


@dataclass
class WorkerState:
    """Per-worker runtime state, kept on app.state (no module globals)."""

    settings: Settings
    started_at: float = field(default_factory=time.monotonic)
    phase: str = "loading"  # loading -> ok -> shutting_down; or failed
    detail: str | None = "model is loading"
    engine: Engine | None = None
    gpu_claim: GpuClaim | None = None
    gpu_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu")
    )
    decoder: AudioDecoderPool | None = None
    batcher: Batcher | None = None
    device_info: dict[str, Any] | None = None
    requests_served: int = 0

    def begin_shutdown(self) -> None:
        """From the first shutdown signal: /health says 503 and new requests get 503; admitted ones finish."""
        self.phase, self.detail = "shutting_down", "worker is shutting down"
        if self.batcher is not None:
            self.batcher.stop_accepting()

    @property
    def gpu_id(self) -> int | None:
        return self.gpu_claim.gpu_id if self.gpu_claim is not None else None

    @property
    def ready(self) -> bool:
        return self.phase == "ok"


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


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read: receive() now waits for it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _submit_watching_client(
    request: Request, batcher: Batcher, ticket: Ticket, waveform: npt.NDArray[np.float32]
) -> ItemResult:
    """Queue the waveform; if the client goes away first, withdraw it so it never reaches the GPU."""
    submitted = asyncio.ensure_future(batcher.submit(ticket, waveform))
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({submitted, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
    if not submitted.done():
        submitted.cancel()
        with suppress(asyncio.CancelledError):
            await submitted
        raise errors.ClientDisconnected("the client closed the connection before its transcript was ready")
    try:
        return submitted.result()
    except errors.InferenceError as exc:
        raise errors.InferenceError(f"inference failed (request id {request_id(request)})") from exc.__cause__


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
        """Transcribe one uploaded audio file (multipart field `file`)."""
        t0 = time.perf_counter()
        state: WorkerState = request.app.state.worker
        if state.phase == "shutting_down":
            raise errors.ShuttingDown("the worker is shutting down; retry on another worker")
        if state.engine is None or state.decoder is None or state.batcher is None:
            raise errors.NotReady(f"the model is not ready yet ({state.detail}); retry shortly")
        engine, batcher = state.engine, state.batcher
        ticket = batcher.admit()  # 429/503 before a byte of the upload is read
        try:
            async with request.form(max_files=1, max_fields=16, max_part_size=64 * 1024) as form:
                upload = form.get("file")
                if upload is None:
                    raise errors.BadRequest(
                        "missing form field 'file' (send the audio as multipart/form-data)", param="file"
                    )
                if not isinstance(upload, UploadFile):
                    raise errors.BadRequest("form field 'file' must be a file upload, not a text value", param="file")
                data = await upload.read()
            t_read = time.perf_counter()
            decoded = await state.decoder.decode(data, max_duration_s=settings.max_audio_duration_s)
            del data
            t_decoded = time.perf_counter()
            result = await _submit_watching_client(request, batcher, ticket, decoded.waveform)
        finally:
            batcher.release(ticket)
        state.requests_served += 1
        response.headers.update(
            {
                "X-Queue-Ms": f"{result.queue_ms:.1f}",
                "X-Compute-Ms": f"{result.compute_ms:.1f}",
                "X-Batch-Size": str(result.batch_size),
                "X-Gpu-Id": "cpu" if state.gpu_id is None else str(state.gpu_id),
            }
        )
        return TranscriptionResponse(
            text=result.transcript.text,
            duration_sec=round(decoded.duration_s, 4),
            processing_time_ms=round((time.perf_counter() - t0) * 1000, 2),
            gpu_id=state.gpu_id,
            model=engine.model_name,
            request_id=request_id(request),
            decode_ms=round((t_decoded - t_read) * 1000, 2),
            queue_ms=round(result.queue_ms, 2),
            compute_ms=round(result.compute_ms, 2),
            batch_size=result.batch_size,
            source_sample_rate_hz=decoded.source_sample_rate_hz,
            source_channels=decoded.source_channels,
        )

    return app


app = create_app()
