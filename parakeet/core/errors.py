"""The server's exception tree: every failure a client or operator can see, as a typed exception.

Domain code (settings, audio decoding, the batcher, inference, routes) raises these; `parakeet.api.errors`
owns the one table that maps each class to an HTTP status and error type (README, "Errors"). Nothing here
imports HTTP code, and no message carries a traceback, a file path or a decoder's stderr.
"""

from __future__ import annotations


class ParakeetError(Exception):
    """Base class. `message` is safe to show to a client; `code` is a stable machine-readable string."""

    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


# --- the request itself -------------------------------------------------------------------------------


class BadRequest(ParakeetError):
    """The form is malformed or a field is missing or invalid."""

    code = "invalid_request"


class UploadTooLarge(ParakeetError):
    """The request body is larger than `max_upload_bytes` (checked before and while it is read)."""

    code = "upload_too_large"


class BodyTimeout(ParakeetError):
    """The request body stalled past `body_idle_timeout_s`, or arrived slower than `body_min_rate_bytes_s` after
    the grace period (slow-upload defence; its admission slot is freed at once)."""

    code = "request_timeout"


class UrlRefused(ParakeetError):
    """An `audio_url` this server will not fetch: URL input off, a scheme other than http(s), a host not allowed,
    an address inside a private, loopback, link-local or metadata network (checked after DNS resolution and on
    every redirect), or too many redirects."""

    code = "url_refused"


class UrlFetchFailed(ParakeetError):
    """The `audio_url` could not be fetched: unreachable, or it answered with an HTTP error status."""

    code = "url_fetch_failed"


class UrlTimeout(ParakeetError):
    """Fetching the `audio_url` took longer than its connect or total time limit."""

    code = "url_timeout"


class Unauthorized(ParakeetError):
    """API keys are configured and the request carries none, or not one of them."""

    code = "invalid_api_key"


# --- the audio in it ----------------------------------------------------------------------------------


class AudioError(ParakeetError):
    """Base class for problems with the uploaded audio."""

    code = "invalid_audio"


class EmptyAudio(AudioError):
    """The file is empty, or it decodes to zero samples."""

    code = "empty_audio"


class UnsupportedAudio(AudioError):
    """The bytes are not audio in any container/codec we decode (random bytes, text, an image...)."""

    code = "unsupported_audio"


class InvalidAudio(AudioError):
    """The file is audio, but its parameters are outside what we accept (sample rate, channels, NaN...)."""

    code = "invalid_audio"


class AudioTooLong(AudioError):
    """The decoded audio is longer than `max_audio_duration_s` (checked while decoding)."""

    code = "audio_too_long"


# --- the server's state -------------------------------------------------------------------------------


class NotReady(ParakeetError):
    """The model is still loading or warming up."""

    code = "not_ready"


class ShuttingDown(ParakeetError):
    """The worker is draining for shutdown and takes no new requests."""

    code = "shutting_down"


class Overloaded(ParakeetError):
    """The worker's queue is full (in requests or in audio seconds). `retry_after_s`: estimated time until
    the work ahead of this request is done."""

    code = "queue_full"

    def __init__(self, message: str, *, retry_after_s: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class TooManyStreams(ParakeetError):
    """The worker already holds its limit of open streams (WebSocket close code 1013, Try Again Later)."""

    code = "too_many_streams"


class UploadsFull(Overloaded):
    """`max_uploads_in_progress` request bodies are being received; refused before this one is read."""

    code = "uploads_full"


class MemoryBudgetFull(Overloaded):
    """The audio this worker holds plus this request's would pass `max_inflight_audio_bytes`."""

    code = "memory_full"


class DeadlineExceeded(ParakeetError):
    """The request waited in the queue past `request_timeout_s` and was dropped before the GPU."""

    code = "deadline_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.retry_after_s = retry_after_s


class ClientDisconnected(ParakeetError):
    """The client went away before its answer was ready (logged; nobody receives the response)."""

    code = "client_closed_request"


class InsufficientStorage(ParakeetError):
    """The disk under the upload spool is full (ENOSPC while receiving a body); the worker lives on."""

    code = "insufficient_storage"


class JobNotFound(ParakeetError):
    """No transcription job has this id (never submitted, or removed after `PARAKEET_JOBS_RETENTION_S`)."""

    code = "job_not_found"


class JobNotFinished(ParakeetError):
    """A job's result was asked for before the job succeeded (or a finished job was asked to cancel)."""

    code = "job_not_finished"


class JobsFull(Overloaded):
    """`Tuning.jobs_max_queued` jobs are waiting; a new one is refused until some run."""

    code = "jobs_full"


class JobStorageFull(InsufficientStorage):
    """The audio of stored jobs plus this one's would pass `Tuning.jobs_max_stored_bytes`."""

    code = "job_storage_full"


class JobsDatabaseUnavailable(ParakeetError):
    """The jobs database failed (PostgreSQL unreachable, SQLite's disk full); the worker lives on."""

    code = "jobs_database_unavailable"


class DeviceOutOfMemory(ParakeetError):
    """The device ran out of memory on a batch (the batcher splits the batch and retries the halves)."""

    code = "device_out_of_memory"


class DecoderUnavailable(ParakeetError):
    """The audio decoder subprocess crashed or timed out on this input (the worker itself is unharmed)."""

    code = "decoder_failed"


class InferenceError(ParakeetError):
    """The model failed on a batch for a reason that is not the client's fault."""

    code = "inference_failed"


# --- start-up (never reach a client) ------------------------------------------------------------------


class InvalidSettings(ParakeetError):
    """The PARAKEET_* environment holds a value out of range or settings that contradict each other."""

    code = "invalid_settings"


class ModelLoadError(ParakeetError):
    """The model could not be loaded (offline hub, missing file, corrupt checkpoint)."""

    code = "model_load_failed"
