"""One worker's state and its request pipeline, shared by every transcription route.

admit (429 before the upload is read) -> parse the multipart form -> validate the route's own fields ->
read the file -> decode in a subprocess -> batch on the GPU thread (long audio: in chunks cut at quiet
points, a few in flight at a time) -> merge. Routes (server.py's /transcribe, openai_api.py's /v1/...)
only parse their fields and format the outcome. No tensors here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

import errors
from audio import AudioDecoderPool, DecodedAudio
from batching import Batcher, ItemResult, Ticket
from gpu_lock import GpuClaim
from http_errors import request_id
from long_audio import SAMPLE_RATE_HZ, Chunk, merge_transcripts, plan_chunks
from settings import Settings
from transcripts import Transcript

T = TypeVar("T")


class Engine(Protocol):
    """What the server needs of a model (inference.ParakeetEngine, or a fake in tests)."""

    model_name: str

    def transcribe(self, waveforms: Sequence[npt.NDArray[np.float32]]) -> Any: ...  # -> transcripts.BatchResult
    def warmup(self, duration_s: float = 2.0) -> float: ...
    def device_info(self) -> dict[str, Any]: ...


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


@dataclass(frozen=True)
class Outcome:
    """A finished transcription and where its time went (ms)."""

    transcript: Transcript
    audio: DecodedAudio
    model: str
    request_id: str
    started_at: float  # perf_counter at request start
    decode_ms: float
    queue_ms: float
    compute_ms: float
    batch_size: int
    chunks: int

    @property
    def processing_time_ms(self) -> float:
        return (time.perf_counter() - self.started_at) * 1000

    def timing_headers(self, gpu_id: int | None) -> dict[str, str]:
        return {
            "X-Queue-Ms": f"{self.queue_ms:.1f}",
            "X-Compute-Ms": f"{self.compute_ms:.1f}",
            "X-Batch-Size": str(self.batch_size),
            "X-Gpu-Id": "cpu" if gpu_id is None else str(gpu_id),
        }


def form_file(form: FormData) -> UploadFile:
    """The `file` part of a multipart form.

    Raises:
        BadRequest: missing, or sent as a text field.
    """
    upload = form.get("file")
    if upload is None:
        raise errors.BadRequest("missing form field 'file' (send the audio as multipart/form-data)", param="file")
    if not isinstance(upload, UploadFile):
        raise errors.BadRequest("form field 'file' must be a file upload, not a text value", param="file")
    return upload


def form_text(form: FormData, name: str) -> str | None:
    """A text field of the form, or None if absent.

    Raises:
        BadRequest: the field was sent as a file.
    """
    value = form.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise errors.BadRequest(f"form field '{name}' must be text, not a file", param=name)
    return value


_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


def form_bool(form: FormData, name: str) -> bool:
    """A true/false text field (true, 1, yes, on / false, 0, no, off, empty); absent means false.

    Raises:
        BadRequest: any other value, or a file.
    """
    raw = (form_text(form, name) or "").strip().lower()
    if raw not in _TRUE | _FALSE:
        raise errors.BadRequest(f"form field '{name}' must be true or false, got {raw[:40]!r}", param=name)
    return raw in _TRUE


async def transcribe_request(
    request: Request, state: WorkerState, parse_fields: Callable[[FormData], T]
) -> tuple[T, Outcome]:
    """The whole pipeline for one upload; `parse_fields` validates the route's other form fields (before
    the audio is decoded) and its result is returned with the outcome.

    Raises:
        ParakeetError subclasses: every refusal in the error table (README).
    """
    t0 = time.perf_counter()
    if state.phase == "shutting_down":
        raise errors.ShuttingDown("the worker is shutting down; retry on another worker")
    if state.engine is None or state.decoder is None or state.batcher is None:
        raise errors.NotReady(f"the model is not ready yet ({state.detail}); retry shortly")
    engine, batcher, settings = state.engine, state.batcher, state.settings
    ticket = batcher.admit()  # 429/503 before a byte of the upload is read
    try:
        async with request.form(max_files=1, max_fields=32, max_part_size=64 * 1024) as form:
            upload = form_file(form)
            fields = parse_fields(form)
            data = await upload.read()
        t_read = time.perf_counter()
        decoded = await state.decoder.decode(data, max_duration_s=settings.max_audio_duration_s)
        del data
        decode_ms = (time.perf_counter() - t_read) * 1000
        transcript, queue_ms, compute_ms, batch_size, n_chunks = await _until_disconnect(
            request, _transcribe(state, batcher, ticket, decoded.waveform)
        )
    finally:
        batcher.release(ticket)
    state.requests_served += 1
    outcome = Outcome(
        transcript, decoded, engine.model_name, request_id(request), t0, decode_ms, queue_ms, compute_ms,
        batch_size, n_chunks,
    )  # fmt: skip
    return fields, outcome


async def _transcribe(
    state: WorkerState, batcher: Batcher, ticket: Ticket, waveform: npt.NDArray[np.float32]
) -> tuple[Transcript, float, float, int, int]:
    """Up to `long_audio_threshold_s` the waveform is one batch item, as NeMo would run it. Longer audio is cut
    at quiet points into chunks that go through the batcher like any request, at most
    `long_audio_chunks_in_flight` at a time, so short requests interleave with a long one."""
    settings = state.settings
    if len(waveform) <= settings.long_audio_threshold_s * SAMPLE_RATE_HZ:
        chunks = [Chunk(0, len(waveform), float("-inf"), float("inf"))]
    else:
        chunks = plan_chunks(
            waveform, settings.long_audio_chunk_s, settings.long_audio_context_s, settings.long_audio_search_s
        )
    slots = asyncio.Semaphore(settings.long_audio_chunks_in_flight)

    async def one(start: int, end: int) -> ItemResult:
        async with slots:
            return await batcher.submit(ticket, waveform[start:end])

    tasks = [asyncio.ensure_future(one(c.start, c.end)) for c in chunks]
    try:
        results = await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one chunk failed: its siblings must not go on to the GPU for nothing
            task.cancel()
        raise
    merged = merge_transcripts(chunks, [r.transcript for r in results])
    return (
        merged,
        results[0].queue_ms,
        sum(r.compute_ms for r in results),
        max(r.batch_size for r in results),
        len(chunks),
    )


async def _wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read: receive() now waits for it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`; if the client goes away first, cancel it (queued items are then dropped before the
    GPU) and raise ClientDisconnected."""
    task = asyncio.ensure_future(work)
    disconnected = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({task, disconnected}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        disconnected.cancel()
    if not task.done():
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
        raise errors.ClientDisconnected("the client closed the connection before its transcript was ready")
    try:
        return task.result()
    except errors.InferenceError as exc:
        raise errors.InferenceError(f"inference failed (request id {request_id(request)})") from exc.__cause__
