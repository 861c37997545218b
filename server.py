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
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

import numpy as np
import numpy.typing as npt
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import errors
from audio import AudioDecoderPool
from gpu_lock import GpuClaim, NoFreeGpuError, claim_gpu
from schemas import ErrorResponse, HealthResponse, TranscriptionResponse
from settings import Settings, load_settings

log = logging.getLogger("parakeet.server")

RETRY_AFTER_LOADING_S = 10


class Engine(Protocol):
    """What the server needs of a model (inference.ParakeetEngine, or a fake in tests)."""

    model_name: str

    def transcribe(self, waveforms: Sequence[npt.NDArray[np.float32]]) -> Any: ...  # -> inference.BatchResult
    def warmup(self) -> float: ...
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
    device_info: dict[str, Any] | None = None
    requests_served: int = 0

    @property
    def gpu_id(self) -> int | None:
        return self.gpu_claim.gpu_id if self.gpu_claim is not None else None

    @property
    def ready(self) -> bool:
        return self.phase == "ok"


# --- errors: one table, one JSON shape ------------------------------------------------------------------

# exception class -> (HTTP status, envelope type). Checked in order: subclasses before their bases.
ERROR_TABLE: list[tuple[type[errors.ParakeetError], int, str]] = [
    (errors.UploadTooLarge, 413, "invalid_request_error"),
    (errors.AudioTooLong, 413, "invalid_request_error"),
    (errors.EmptyAudio, 400, "invalid_request_error"),
    (errors.UnsupportedAudio, 415, "invalid_request_error"),
    (errors.DecoderUnavailable, 415, "invalid_request_error"),
    (errors.InvalidAudio, 400, "invalid_request_error"),
    (errors.BadRequest, 400, "invalid_request_error"),
    (errors.NotReady, 503, "service_unavailable_error"),
    (errors.ShuttingDown, 503, "service_unavailable_error"),
    (errors.InferenceError, 500, "server_error"),
]


def error_response(
    status: int, message: str, *, type_: str, code: str | None, param: str | None = None, request_id: str | None = None
) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"message": message, "type": type_, "param": param, "code": code}})
    headers = {"X-Request-Id": request_id} if request_id else {}
    if status == 503:
        headers["Retry-After"] = str(RETRY_AFTER_LOADING_S)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _request_id(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


async def _parakeet_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.ParakeetError)
    status, type_ = next(((s, t) for cls, s, t in ERROR_TABLE if isinstance(exc, cls)), (500, "server_error"))
    rid = _request_id(request)
    if status >= 500:
        log.error("request %s failed: %s", rid, exc.message, exc_info=exc.__cause__ or exc)
    else:
        log.info("request %s -> %d %s: %s", rid, status, exc.code, exc.message)
    return error_response(status, exc.message, type_=type_, code=exc.code, param=exc.param, request_id=rid)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 400: "invalid_request"}
    response = error_response(
        exc.status_code,
        str(exc.detail),
        type_="invalid_request_error" if exc.status_code < 500 else "server_error",
        code=codes.get(exc.status_code, f"http_{exc.status_code}"),
        request_id=_request_id(request),
    )
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
    return error_response(
        400, f"invalid request: {first.get('msg', 'malformed')}", type_="invalid_request_error",
        code="invalid_request", param=param, request_id=_request_id(request),
    )  # fmt: skip


async def _unhandled_error(request: Request, exc: Exception) -> JSONResponse:
    rid = _request_id(request)
    log.error("request %s: unhandled %s", rid, type(exc).__name__, exc_info=exc)
    return error_response(
        500, f"internal error (request id {rid})", type_="server_error", code="internal_error", request_id=rid
    )


# --- plain ASGI middleware (BaseHTTPMiddleware would break disconnect detection) ------------------------


class RequestIdMiddleware:
    """Gives every HTTP request an id (scope state + X-Request-Id response header)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        await self.app(scope, receive, send_with_id)


class UploadLimitMiddleware:
    """Caps request bodies at `max_upload_bytes`: 413 from Content-Length before a byte of the body is read
    (uvicorn sends `100 Continue` only on the first receive), and a running count for chunked uploads."""

    def __init__(self, app: ASGIApp, max_upload_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_upload_bytes

    def _too_large(self, size: str) -> errors.UploadTooLarge:
        return errors.UploadTooLarge(f"request body of {size} exceeds the upload limit of {self.max_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            exc = self._too_large(f"{int(declared)} bytes")
            rid = scope.get("state", {}).get("request_id")
            log.info("request %s -> 413 upload_too_large: %s", rid, exc.message)
            response = error_response(413, exc.message, type_="invalid_request_error", code=exc.code, request_id=rid)
            response.headers["Connection"] = "close"
            return await response(scope, receive, send)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large(f"more than {received} bytes")
            return message

        await self.app(scope, counting_receive, send)


# --- the app -------------------------------------------------------------------------------------------


def _setup_logging() -> None:
    root = logging.getLogger("parakeet")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s [{os.getpid()}] %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


async def _load_model(state: WorkerState, factory: EngineFactory, on_fatal: Callable[[str], None]) -> None:
    loop = asyncio.get_running_loop()
    try:
        engine = await loop.run_in_executor(state.gpu_executor, factory, state.settings, state.gpu_id)
        if state.settings.warmup:
            warm_ms = await loop.run_in_executor(state.gpu_executor, engine.warmup)
            log.info("warm-up batch took %.0f ms", warm_ms)
        state.device_info = await loop.run_in_executor(state.gpu_executor, engine.device_info)
    except errors.ModelLoadError as exc:
        state.phase, state.detail = "failed", exc.message
        on_fatal(exc.message)
        return
    except Exception as exc:  # noqa: BLE001 - anything else at load time is just as fatal
        log.exception("model load failed")
        state.phase, state.detail = "failed", f"model load failed: {type(exc).__name__}: {exc}"
        on_fatal(state.detail)
        return
    state.engine = engine
    state.phase, state.detail = "ok", None
    log.info("worker ready: model %s on %s", engine.model_name, state.device_info.get("name"))


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
        await asyncio.to_thread(state.decoder.start)
        loader = asyncio.create_task(_load_model(state, factory, on_fatal))
        try:
            yield
        finally:
            state.phase, state.detail = "shutting_down", "worker is shutting down"
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
    app.add_exception_handler(errors.ParakeetError, _parakeet_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unhandled_error)
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
            device=state.device_info,
            worker_pid=os.getpid(),
            uptime_s=round(time.monotonic() - state.started_at, 3),
            requests_served=state.requests_served,
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
    async def transcribe(request: Request) -> TranscriptionResponse:
        """Transcribe one uploaded audio file (multipart field `file`)."""
        t0 = time.perf_counter()
        state: WorkerState = request.app.state.worker
        if state.phase == "shutting_down":
            raise errors.ShuttingDown("the worker is shutting down; retry on another worker")
        if state.engine is None or state.decoder is None:
            raise errors.NotReady(f"the model is not ready yet ({state.detail}); retry shortly")
        engine = state.engine
        async with request.form(max_files=1, max_fields=16, max_part_size=64 * 1024) as form:
            upload = form.get("file")
            if upload is None:
                raise errors.BadRequest("missing form field 'file' (send the audio as multipart/form-data)", param="file")
            if not isinstance(upload, UploadFile):
                raise errors.BadRequest("form field 'file' must be a file upload, not a text value", param="file")
            data = await upload.read()
        t_read = time.perf_counter()
        decoded = await state.decoder.decode(data, max_duration_s=settings.max_audio_duration_s)
        del data
        t_decoded = time.perf_counter()
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(state.gpu_executor, engine.transcribe, [decoded.waveform])
        except Exception as exc:  # noqa: BLE001 - a model failure is ours, not the client's
            raise errors.InferenceError(f"inference failed (request id {_request_id(request)})") from exc
        state.requests_served += 1
        t_done = time.perf_counter()
        return TranscriptionResponse(
            text=result.transcripts[0].text,
            duration_sec=round(decoded.duration_s, 4),
            processing_time_ms=round((t_done - t0) * 1000, 2),
            gpu_id=state.gpu_id,
            model=engine.model_name,
            request_id=_request_id(request),
            decode_ms=round((t_decoded - t_read) * 1000, 2),
            compute_ms=round(result.compute_ms, 2),
            source_sample_rate_hz=decoded.source_sample_rate_hz,
            source_channels=decoded.source_channels,
        )

    return app


app = create_app()
