"""Runs stored transcription jobs (parakeet.pipeline.job_store) on this worker, below live requests in priority.

One job at a time per worker: it claims the next job only while the worker is ready and nothing is waiting in its
GPU queue (so an interactive request never waits behind more than the batches already formed), reads the job's
audio file and sends it through the one request lifecycle (`Worker.request`, the same decode, batching, long-audio
chunks, key phrases and diarization as `POST /transcribe`), renews its lease while it runs, and stores the rendered
results. A job whose worker died is claimed again once its lease expires; a worker that stops hands its job back
(queued again), so a restart resumes it. Refusals that pass (queue full, memory budget, shutting down) hand the job
back too; the request's own errors (bad audio, limits) fail it with the one error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from parakeet.core import errors
from parakeet.core.keywords import KeyPhrases
from parakeet.pipeline.job_store import Job, SqliteJobStore
from parakeet.pipeline.requests import Outcome, TranscribeOptions
from parakeet.pipeline.worker import Worker

log = logging.getLogger("parakeet.jobs")

# Refusals that say "not now" rather than "never": the job goes back to the queue.
_TRANSIENT = (errors.Overloaded, errors.ShuttingDown, errors.NotReady, errors.DeadlineExceeded,
              errors.DeviceOutOfMemory)  # fmt: skip


def options_record(options: TranscribeOptions) -> dict[str, Any]:
    """A request's options as the JSON a job row keeps (`options_of` reads it back)."""
    k = options.keywords
    return {"timestamps": options.timestamps, "confidence": options.confidence, "diarize": options.diarize,
            "keywords": {"phrases": list(k.phrases), "weight": k.weight} if k is not None else None}  # fmt: skip


def options_of(record: dict[str, Any]) -> TranscribeOptions:
    """The TranscribeOptions an `options_record` holds."""
    k = record.get("keywords")
    keywords = KeyPhrases(tuple(k["phrases"]), float(k["weight"])) if k else None
    return TranscribeOptions(timestamps=bool(record.get("timestamps")), confidence=bool(record.get("confidence")),
                             keywords=keywords, diarize=bool(record.get("diarize")))  # fmt: skip


Render = Callable[[Outcome, dict[str, Any]], dict[str, str]]  # (outcome, the job's options) -> format -> body


@dataclass(frozen=True)
class RunnerConfig:
    """lease_s: a claimed job's lease (renewed every third of it); poll_s: how often an idle worker looks for
    work; retention_s: how long ended jobs and their audio are kept (PARAKEET_JOBS_RETENTION_S)."""

    lease_s: float = 30.0
    poll_s: float = 0.5
    retention_s: float = 86_400.0


class JobRunner:
    """Create, `start()` on the event loop once the worker exists, `stop()` before the worker closes."""

    def __init__(self, store: SqliteJobStore, worker: Worker, render: Render, config: RunnerConfig) -> None:
        self.store, self.worker, self.render, self.config = store, worker, render, config
        self.owner = f"{uuid.uuid4().hex[:12]}-gpu{worker.gpu_id if worker.gpu_id is not None else 'cpu'}"
        self._task: asyncio.Task[None] | None = None
        self.jobs_run = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="job-runner")

    async def stop(self) -> None:
        """Stop taking jobs; a running one is stopped and handed back to the queue (another worker, or this one
        after a restart, runs it again)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _has_room(self) -> bool:
        batcher = self.worker.batcher
        return self.worker.ready and batcher is not None and batcher.waiting_items == 0

    async def _loop(self) -> None:
        last_expiry = 0.0
        while True:
            if time.time() - last_expiry > 60:
                last_expiry = time.time()
                await self._expire()
            job = await asyncio.to_thread(self.store.claim, self.owner, now=time.time(), lease_s=self.config.lease_s)\
                if self._has_room() else None  # fmt: skip
            if job is None:
                await asyncio.sleep(self.config.poll_s)
                continue
            try:
                await self._run(job)
            except asyncio.CancelledError:
                await asyncio.shield(asyncio.to_thread(self.store.release, job.id, self.owner))
                log.info("job %s handed back to the queue (this worker is stopping)", job.id)
                raise
            except Exception:
                log.exception("job %s: the runner failed", job.id)

    async def _run(self, job: Job) -> None:
        """Run one claimed job to its end, under a renewed lease."""
        work = asyncio.ensure_future(self._transcribe(job))
        keep = asyncio.ensure_future(self._keep_lease(job, work))
        try:
            outcome = await work
        except asyncio.CancelledError:
            if keep.done() and keep.result() == "cancel":
                await asyncio.to_thread(self.store.cancelled, job.id, self.owner, now=time.time())
                log.info("job %s cancelled while running", job.id)
                return
            if keep.done():  # the lease was lost: another worker has the job now
                log.warning("job %s: its lease was lost; another worker runs it", job.id)
                return
            raise
        except _TRANSIENT as exc:
            log.info("job %s handed back to the queue: %s", job.id, exc.message)
            await asyncio.to_thread(self.store.release, job.id, self.owner)
            await asyncio.sleep(self.config.poll_s)
            return
        except errors.ParakeetError as exc:
            error = {"code": exc.code, "message": exc.message, "param": exc.param}
            await asyncio.to_thread(self.store.finish, job.id, self.owner, now=time.time(), error=error)
            log.info("job %s failed: %s", job.id, exc.message)
            return
        finally:
            keep.cancel()
        result = self.render(outcome, job.options)
        await asyncio.to_thread(self.store.finish, job.id, self.owner, now=time.time(), result=result)
        self.jobs_run += 1
        log.info("job %s succeeded (%.1f s of audio)", job.id, outcome.audio.duration_s)

    async def _transcribe(self, job: Job) -> Outcome:
        path = Path(job.audio_path)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise errors.InvalidAudio(f"the job's stored audio is unreadable ({exc.strerror})", param="file") from exc
        options = replace(options_of(job.options), timestamps=True)  # every format can be rendered from it

        async def body() -> tuple[bytes, None]:
            return data, None

        async with self.worker.request(declared_bytes=len(data)) as request:
            await request.receive(body())
            outcome = await request.transcribe(options, audio_param="file")
        await asyncio.to_thread(self.store.note_duration, job.id, outcome.audio.duration_s)
        return outcome

    async def _keep_lease(self, job: Job, work: asyncio.Future[Outcome]) -> str:
        """Renew the lease every third of it; when the job is no longer ours (cancelled, or the lease lost),
        stop the work. Returns "cancel" or "lost"."""
        while True:
            await asyncio.sleep(self.config.lease_s / 3)
            until = time.time() + self.config.lease_s
            if not await asyncio.to_thread(self.store.renew, job.id, self.owner, until=until):
                current = await asyncio.to_thread(self.store.get, job.id)
                work.cancel()
                return "cancel" if current.cancel_requested else "lost"

    async def _expire(self) -> None:
        """Remove ended jobs past their retention, and their audio files."""
        paths = await asyncio.to_thread(self.store.expire, finished_before=time.time() - self.config.retention_s)
        for p in paths:
            with contextlib.suppress(OSError):
                Path(p).unlink()
        if paths:
            log.info("removed %d ended jobs past their retention", len(paths))
