"""Runs stored transcription jobs (parakeet.jobs.store) on this worker, below live requests in priority.

A few jobs at a time per worker (`Tuning.jobs_at_once`, so that small jobs share batches): it claims the next job only
while the worker is ready and nothing is waiting in its GPU queue, and its audio goes to the batcher as background items
(batches form around live requests first, so a live request waits behind at most the batch already running), reads the
job's audio file and sends it through the one request lifecycle (`Worker.request`, the same decode, batching, long-audio
chunks, key phrases and diarization as `POST /transcribe`), renews its lease while it runs, and stores the outcome
(parakeet.jobs.outcomes; the API renders it when read). Each finished long-audio chunk is saved as it ends, so a job
whose worker died (claimed again once its lease expires) or was stopped (handed back: queued again) resumes from its
last finished chunk. Refusals that pass (queue full, memory budget, shutting down) hand the job back too; the request's
own errors (bad audio, limits) fail it with the one error shape."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from parakeet.core import errors, metrics
from parakeet.core.keywords import KeyPhrases
from parakeet.core.settings import Settings
from parakeet.core.transcripts import Transcript, transcript_of, transcript_record
from parakeet.core.tuning import Tuning
from parakeet.jobs.audio import JobAudio
from parakeet.jobs.outcomes import outcome_record
from parakeet.jobs.store import Job, JobStore
from parakeet.jobs.webhooks import WebhookSender
from parakeet.pipeline.long_audio import Chunk
from parakeet.pipeline.requests import Outcome, TranscribeOptions
from parakeet.pipeline.transcriber import ChunkCheckpoint
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


@dataclass(frozen=True)
class RunnerConfig:
    """What a runner needs of the settings and `Tuning` (parakeet/core/tuning.py gives each its reason): lease_s
    (`jobs_lease_s`, renewed every third of it), poll_s (`jobs_poll_s`, how often an idle worker looks for work),
    busy_wait_s (`jobs_busy_wait_s`, how soon a worker whose GPU queue had waiting requests looks again),
    publish_every_s (`jobs_gauge_refresh_s`), jobs_at_once, retention_s (PARAKEET_JOBS_RETENTION_S)."""

    lease_s: float
    poll_s: float
    busy_wait_s: float
    publish_every_s: float
    jobs_at_once: int
    retention_s: float

    @classmethod
    def from_settings(cls, settings: Settings, tuning: Tuning) -> RunnerConfig:
        return cls(lease_s=tuning.jobs_lease_s, poll_s=tuning.jobs_poll_s, busy_wait_s=tuning.jobs_busy_wait_s,
                   publish_every_s=tuning.jobs_gauge_refresh_s, jobs_at_once=tuning.jobs_at_once,
                   retention_s=settings.jobs_retention_s)  # fmt: skip


class JobRunner:
    """Create, `start()` on the event loop once the worker exists, `stop()` before the worker closes; `webhooks`
    (a `WebhookSender`) runs beside it on the same schedule."""

    def __init__(
        self, store: JobStore, audio: JobAudio, worker: Worker, config: RunnerConfig, webhooks: WebhookSender
    ) -> None:
        self.store, self.audio, self.worker, self.config, self.webhooks = store, audio, worker, config, webhooks
        self.owner = f"{uuid.uuid4().hex[:12]}-gpu{worker.gpu_id if worker.gpu_id is not None else 'cpu'}"
        self._task: asyncio.Task[None] | None = None
        self._webhooks: asyncio.Task[None] | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._loop(), name="job-runner")
        self._webhooks = loop.create_task(self.webhooks.run(), name="job-webhooks")

    async def stop(self) -> None:
        """Stop taking jobs; a running one is stopped and handed back to the queue (another worker, or this one
        after a restart, runs it again). A webhook attempt under way is abandoned (it is due again at once for
        whichever worker looks next)."""
        for task in (self._task, self._webhooks):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _has_room(self) -> bool:
        batcher = self.worker.batcher
        return self.worker.ready and batcher is not None and batcher.waiting_items == 0

    async def _loop(self) -> None:
        """Claim jobs while there is room (`_has_room`, fewer than `jobs_at_once` running), each run as a task of
        its own so that small jobs share batches; on stop, hand every running job back."""
        last_expiry, last_publish, running = 0.0, 0.0, set[asyncio.Task[None]]()
        try:
            while True:
                if time.time() - last_expiry > min(60.0, self.config.retention_s / 2):
                    last_expiry = time.time()
                    await self._expire()
                if time.time() - last_publish > self.config.publish_every_s:  # busy or idle: the gauge stays current
                    last_publish = time.time()
                    await self._publish()
                if len(running) >= self.config.jobs_at_once:  # full: the next claim when one of them ends
                    await asyncio.wait(running, timeout=self.config.poll_s, return_when=asyncio.FIRST_COMPLETED)
                    continue
                if not self._has_room():  # live requests are waiting: they go first
                    await asyncio.sleep(self.config.busy_wait_s)
                    continue
                job = await asyncio.to_thread(
                    self.store.claim, self.owner, now=time.time(), lease_s=self.config.lease_s
                )
                if job is None:  # nothing queued
                    await asyncio.sleep(self.config.poll_s)
                    continue
                if job.attempts == 1 and job.started_at is not None:
                    metrics.JOB_QUEUE_WAIT.observe(max(0.0, job.started_at - job.created_at))
                task = asyncio.get_running_loop().create_task(self._run_guarded(job), name=f"job-{job.id}")
                running.add(task)
                task.add_done_callback(running.discard)
        finally:
            for task in list(running):
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _run_guarded(self, job: Job) -> None:
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
        result = outcome_record(outcome, self.worker.gpu_id)  # rendered when it is read (parakeet.api.formats)
        now = time.time()
        finished = await asyncio.to_thread(
            self.store.finish, job.id, self.owner, now=now, result=result, duration_s=outcome.audio.duration_s
        )
        if finished:
            metrics.JOB_DURATION.observe(now - (job.started_at or now))
        log.info("job %s succeeded (%.1f s of audio)", job.id, outcome.audio.duration_s)

    async def _transcribe(self, job: Job) -> Outcome:
        try:
            data = await asyncio.to_thread(self.audio.read, job.audio_path)
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise errors.InvalidAudio(f"the job's stored audio is unreadable ({why})", param="file") from exc
        options = replace(options_of(job.options), timestamps=True)  # every format can be rendered from it

        async def body() -> tuple[bytes, None]:
            return data, None

        saved = await asyncio.to_thread(self.store.saved_chunks, job.id)
        writes: list[asyncio.Future[None]] = []

        def keep(index: int, chunk: Chunk, transcript: Transcript) -> None:
            record = json.dumps(transcript_record(transcript))
            writes.append(asyncio.ensure_future(asyncio.to_thread(
                self.store.save_chunk, job.id, self.owner, index=index, start=chunk.start, end=chunk.end,
                transcript=record)))  # fmt: skip

        done = {i: (a, b, transcript_of(json.loads(t))) for i, (a, b, t) in saved.items()}
        if done:
            log.info("job %s resumes with %d chunks an earlier run finished", job.id, len(done))
        async with self.worker.request(declared_bytes=len(data)) as request:
            await request.receive(body())
            words = await request.transcribe_stream(options, audio_param="file", lane="background",
                                                    checkpoint=ChunkCheckpoint(done, keep))  # fmt: skip
            try:
                chunks, done_s = 0, 0.0
                async for chunk_words in words:  # one per long-audio chunk, in file order: the progress
                    chunks, done_s = chunks + 1, chunk_words[-1].end_s if chunk_words else done_s
                    await asyncio.to_thread(self.store.note_progress, job.id, self.owner, chunks_done=chunks,
                                            audio_s_done=done_s)  # fmt: skip
                outcome = await words.outcome()
            finally:
                await words.aclose()
                await asyncio.gather(*writes, return_exceptions=True)
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

    async def _publish(self) -> None:
        for status, n in (await asyncio.to_thread(self.store.counts)).items():
            metrics.JOBS.labels(status=status).set(n)

    async def _expire(self) -> None:
        """Remove ended jobs past their retention, and their audio (the database's goes with the rows)."""
        paths = await asyncio.to_thread(self.store.expire, finished_before=time.time() - self.config.retention_s)
        for p in paths:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.audio.delete, p)
        if paths:
            log.info("removed %d ended jobs past their retention", len(paths))
