"""What every upload route shares: the multipart form and its fields, the body's declared size, the client's
disconnect (the lifecycle, `Worker.request`, races the transcription against it), and the timings a response
carries. The pipeline itself is `parakeet.pipeline.requests`.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request

from parakeet.core import errors
from parakeet.pipeline.requests import Outcome

# Limits on the multipart form itself (python-multipart via Starlette): one file part, a few text fields,
# text fields of at most 64 KiB. Abuse beyond them is a 400 (README error table).
MAX_FILES = 1
MAX_FIELDS = 32
MAX_TEXT_FIELD_BYTES = 64 * 1024

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off", ""}


@asynccontextmanager
async def multipart_form(request: Request) -> AsyncIterator[FormData]:
    """The request's multipart form, parsed within the limits above; its spooled files close on exit.

    Raises:
        HTTPException(400): not multipart, or over a limit (the error table turns it into `invalid_request`).
        InsufficientStorage: the disk under the spool (TMPDIR; parts over 1 MB are spooled there) is full (507).
    """
    try:
        async with request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS, max_part_size=MAX_TEXT_FIELD_BYTES) as form:
            yield form
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
        raise errors.InsufficientStorage(
            "no space left on the disk that holds uploads being received; retry later or on another worker"
        ) from None


def form_file(form: FormData) -> UploadFile:
    """The `file` part of a multipart form (check it before the other fields: a missing file is the first
    thing to tell the client).

    Raises:
        BadRequest: missing, or sent as a text field.
    """
    upload = form.get("file")
    if upload is None:
        raise errors.BadRequest("missing form field 'file' (send the audio as multipart/form-data)", param="file")
    if not isinstance(upload, UploadFile):
        raise errors.BadRequest("form field 'file' must be a file upload, not a text value", param="file")
    return upload


async def read_file(upload: UploadFile) -> bytes:
    """The whole file part (its size is bounded by the upload cap: UploadLimitMiddleware)."""
    return await upload.read()


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


def form_bool(form: FormData, name: str) -> bool:
    """A true/false text field (true, 1, yes, on / false, 0, no, off, empty); absent means false.

    Raises:
        BadRequest: any other value, or a file.
    """
    raw = (form_text(form, name) or "").strip().lower()
    if raw not in _TRUE | _FALSE:
        raise errors.BadRequest(f"form field '{name}' must be true or false, got {raw[:40]!r}", param=name)
    return raw in _TRUE


def declared_body_bytes(request: Request, cap: int) -> int:
    """The body's Content-Length, or the upload cap when there is none (chunked): the audio memory to reserve
    before reading it (`Worker.request`)."""
    value = request.headers.get("content-length", "")
    return min(int(value), cap) if value.isdigit() else cap


def disconnect_watcher(request: Request) -> Callable[[], Awaitable[None]]:
    """What `Worker.request(disconnected=...)` awaits: the client closing the connection."""
    return lambda: wait_for_disconnect(request)


async def wait_for_disconnect(request: Request) -> None:
    """Return when the client closes the connection (the body has been read: receive() now waits for it)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def timing_headers(outcome: Outcome, gpu_id: int | None) -> dict[str, str]:
    """Where the time went, on every transcription response (README, `POST /transcribe`)."""
    return {
        "X-Queue-Ms": f"{outcome.queue_ms:.1f}",
        "X-Compute-Ms": f"{outcome.compute_ms:.1f}",
        "X-Batch-Size": str(outcome.batch_size),
        "X-Gpu-Id": "cpu" if gpu_id is None else str(gpu_id),
    }


def record_outcome(request: Request, outcome: Outcome, gpu_id: int | None) -> None:
    """Put the transcription's numbers (never its text) on the request, for its log line."""
    request.state.access = {
        "audio_s": round(outcome.audio.duration_s, 3),
        "decode_ms": round(outcome.decode_ms, 2),
        "queue_ms": round(outcome.queue_ms, 2),
        "compute_ms": round(outcome.compute_ms, 2),
        "batch_size": outcome.batch_size,
        "chunks": outcome.chunks,
        "gpu_id": gpu_id,
    }
