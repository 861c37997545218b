"""Transcription jobs (README "Jobs"): `POST /v1/jobs` stores the audio and answers 202 at once; a worker runs the job
later (parakeet.jobs.runner) and stores its outcome; `GET /v1/jobs/{id}` polls it, `GET /v1/jobs/{id}/result` renders
the outcome with the renderer `POST /transcribe` and the OpenAI route use (parakeet.api.formats), `GET /v1/jobs`
lists them, `DELETE /v1/jobs/{id}` cancels one. The rows live in SQLite under PARAKEET_DATA_DIR
(parakeet.jobs.store)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from standardwebhooks.webhooks import Webhook

from parakeet.api.bodies import copy_body_into
from parakeet.api.deps import JobAudioDep, JobStoreDep, UrlPolicyDep, WebhookSignerDep, WorkerDep
from parakeet.api.formats import RESULT_FORMATS, result_body
from parakeet.api.uploads import declared_body_bytes
from parakeet.core import errors
from parakeet.jobs.audio import AudioWriter
from parakeet.jobs.outcomes import outcome_of
from parakeet.jobs.runner import options_of, options_record
from parakeet.jobs.store import STATUSES, Job, JobStore
from parakeet.pipeline.fetch import UrlPolicy, check_url_syntax
from parakeet.pipeline.worker import Worker

router = APIRouter(prefix="/v1/jobs")

MAX_METADATA_BYTES = 4096
MAX_IDEMPOTENCY_KEY_CHARS = 255


def job_view(job: Job) -> dict[str, Any]:
    """A job as the API shows it."""
    return {
        "id": job.id, "object": "transcription.job", "status": job.status, "created_at": job.created_at,
        "started_at": job.started_at, "finished_at": job.finished_at, "attempts": job.attempts,
        "audio_bytes": job.audio_bytes, "duration_s": job.duration_s, "metadata": job.metadata,
        "cancel_requested": job.cancel_requested, "error": job.error,
        "progress": {"chunks_done": job.chunks_done, "audio_s_done": round(job.audio_s_done, 3)},
        "options": {k: v for k, v in job.options.items() if k != "keywords"},
    }  # fmt: skip


def _metadata(value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise errors.BadRequest("metadata must be a JSON object", param="metadata") from None
    if not isinstance(value, dict):
        raise errors.BadRequest("metadata must be a JSON object", param="metadata")
    size = len(json.dumps(value).encode())
    if size > MAX_METADATA_BYTES:
        raise errors.BadRequest(f"metadata is {size} bytes, over the limit of {MAX_METADATA_BYTES}", param="metadata")
    return value


def _webhook_url(value: Any, signer: Webhook | None, policy: UrlPolicy) -> str | None:
    """A job's `webhook_url`, checked as an `audio_url` is before DNS (the address rules apply at each attempt).

    Raises:
        BadRequest: not a string, or no PARAKEET_JOBS_WEBHOOK_SECRET to sign with. UrlRefused: the URL's checks.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 2048:
        raise errors.BadRequest("webhook_url must be a URL of at most 2048 characters", param="webhook_url")
    if signer is None:
        raise errors.BadRequest(
            "webhook_url needs PARAKEET_JOBS_WEBHOOK_SECRET on the server (webhooks are signed); poll GET "
            "/v1/jobs/{id} instead",
            param="webhook_url",
        )
    check_url_syntax(value, policy, "webhook_url")
    return value


@router.post("", status_code=202)
async def submit_job(
    request: Request, worker: WorkerDep, store: JobStoreDep, audio: JobAudioDep, policy: UrlPolicyDep,
    signer: WebhookSignerDep,
) -> JSONResponse:  # fmt: skip
    """Store a job: the inputs and options of `POST /transcribe`, plus `metadata` (a JSON object echoed back) and
    an `Idempotency-Key` header (a retried submit gets the same job, answered before its body is read). The audio
    is stored a piece at a time as it is read (parakeet.jobs.audio), and forgotten if the submit fails."""
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS:
        raise errors.BadRequest(
            f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} characters", param="idempotency-key"
        )
    if key is not None and (earlier := await asyncio.to_thread(store.by_idempotency_key, key)) is not None:
        return JSONResponse(job_view(earlier), status_code=200, headers={"Location": f"/v1/jobs/{earlier.id}"})
    settings = worker.settings
    declared = declared_body_bytes(request, settings.max_upload_bytes)
    job_id = f"job_{uuid.uuid4().hex}"
    async with worker.upload(declared_bytes=declared):
        writer = await asyncio.to_thread(audio.writer, job_id)
        try:
            job, created, location = await _store_job(request, worker, store, policy, signer, job_id, key, writer)
        except BaseException:
            await asyncio.to_thread(writer.abort)
            raise
    if not created:  # a retry with the same key raced this one and won: this copy of the audio goes
        await asyncio.to_thread(audio.delete, location)
    return JSONResponse(job_view(job), status_code=202 if created else 200, headers={"Location": f"/v1/jobs/{job.id}"})


async def _store_job(
    request: Request, worker: Worker, store: JobStore, policy: UrlPolicy, signer: Webhook | None, job_id: str,
    key: str | None, writer: AudioWriter,
) -> tuple[Job, bool, str]:  # fmt: skip
    """The body into `writer`, its fields checked, the row stored (see `submit_job`); the audio's location."""

    async def write(piece: bytes) -> None:
        await asyncio.to_thread(writer.write, piece)

    settings, tuning = worker.settings, worker.tuning
    nbytes, options, field, extras = await copy_body_into(
        request, policy, settings.max_upload_bytes, ("metadata", "webhook_url"), write
    )
    webhook_url = _webhook_url(extras.get("webhook_url"), signer, policy)
    if not nbytes:
        raise errors.EmptyAudio("the audio is empty (0 bytes)", param=field)
    worker.check_key_phrases(options.keywords)
    if options.diarize and worker.capabilities is not None:  # (while the model loads, the run checks it)
        worker.capabilities.require_speakers("diarize")
    metadata = _metadata(extras.get("metadata"))
    location = await asyncio.to_thread(writer.commit)
    job, created = await asyncio.to_thread(
        store.submit, job_id, options=options_record(options), metadata=metadata, idempotency_key=key,
        audio_path=location, audio_bytes=nbytes, now=time.time(), max_queued=tuning.jobs_max_queued,
        max_stored_bytes=tuning.jobs_max_stored_bytes, webhook_url=webhook_url,
    )  # fmt: skip
    return job, created, location


@router.get("")
async def list_jobs(
    store: JobStoreDep, status: str | None = None, limit: int = 20, before: float | None = None
) -> dict[str, Any]:
    """Jobs newest first: `status` filter, `limit` (1-100), `before` (a `created_at`: the next page)."""
    if status is not None and status not in STATUSES:
        raise errors.BadRequest(f"status must be one of {', '.join(STATUSES)} (got {status[:40]!r})", param="status")
    if not 1 <= limit <= 100:
        raise errors.BadRequest(f"limit must be 1-100 (got {limit})", param="limit")
    jobs = await asyncio.to_thread(store.page, status=status, limit=limit, before=before)
    return {"object": "list", "data": [job_view(j) for j in jobs],
            "next_before": jobs[-1].created_at if len(jobs) == limit else None}  # fmt: skip


@router.get("/{job_id}")
async def get_job(store: JobStoreDep, job_id: str) -> dict[str, Any]:
    """One job's status, times, attempts, error (in the one error shape's fields) when it failed, and its webhook's
    delivery attempts."""
    job = await asyncio.to_thread(store.get, job_id)
    view = job_view(job)
    if job.webhook_url is not None:
        attempts = await asyncio.to_thread(store.webhook_attempts, job_id)
        view["webhook"] = {"url": job.webhook_url, "state": job.webhook_state,
                           "attempts": [dataclasses.asdict(a) for a in attempts]}  # fmt: skip
    return view


@router.get("/{job_id}/result")
async def job_result(store: JobStoreDep, job_id: str, format: str = "json") -> Response:
    """A succeeded job's transcript as `format`, rendered now from its stored outcome by the synchronous routes' own
    renderer (parakeet.api.formats): json (POST /transcribe's body; `request_id` is the job's id, the time its run
    took), text, srt, vtt, verbose_json, diarized_json (when it asked for speakers)."""
    if format not in RESULT_FORMATS:
        raise errors.BadRequest(
            f"format must be one of {', '.join(RESULT_FORMATS)} (got {format[:40]!r})", param="format"
        )
    job, record = await asyncio.to_thread(store.succeeded, job_id)
    outcome, gpu_id = outcome_of(record)
    options = options_of(job.options)
    if format == "diarized_json" and not options.diarize:
        raise errors.BadRequest(f"job {job_id} did not ask for speakers: no {format}", param="format")
    run_ms = ((job.finished_at or 0.0) - (job.started_at or 0.0)) * 1000
    body, media_type = result_body(outcome, options, format, request_id=job.id, processing_ms=max(0.0, run_ms),
                                   gpu_id=gpu_id)  # fmt: skip
    return Response(body, media_type=media_type)


@router.delete("/{job_id}")
async def cancel_job(store: JobStoreDep, job_id: str) -> dict[str, Any]:
    """Cancel a job: a queued one at once, a running one at its worker's next lease renewal."""
    return job_view(await asyncio.to_thread(store.cancel, job_id, now=time.time()))
