"""Transcription jobs that survive restarts: their rows in a database (parakeet.jobs.databases: SQLite in
PARAKEET_DATA_DIR by default, PostgreSQL for many hosts), their audio beside them (parakeet.jobs.audio: files under
PARAKEET_DATA_DIR with SQLite, the `job_audio` table with PostgreSQL).

A job is `queued` until a worker claims it with a lease (`claim`: the oldest queued job, or a `running` one whose lease
expired because its worker died); the worker renews the lease while it runs the job and ends it `succeeded` (its outcome
stored, rendered when read), `failed` (the error in the one error shape) or, when asked, `cancelled`. A worker that
stops cleanly hands its job back (`release`: queued again). Every change is one transaction that takes its write lock
first (SQLite's BEGIN IMMEDIATE; PostgreSQL's row locks, claims with FOR UPDATE SKIP LOCKED), so two workers, or two
hosts, never claim one job. Calls block: the async server runs them in a thread (`asyncio.to_thread`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

from parakeet.core import errors
from parakeet.jobs.databases import Database

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
STATUSES: tuple[JobStatus, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
UNFINISHED: tuple[JobStatus, ...] = ("queued", "running")


_COLUMNS = ("id, status, created_at, started_at, finished_at, options, metadata, audio_path, audio_bytes, attempts, "
            "duration_s, cancel_requested, error, webhook_url, webhook_state, webhook_attempts, chunks_done, "
            "audio_s_done")  # fmt: skip


@dataclass(frozen=True)
class Job:
    """One job's row (without its results: `JobStore.result`). Times are Unix seconds."""

    id: str
    status: JobStatus
    created_at: float
    started_at: float | None
    finished_at: float | None
    options: dict[str, Any]  # the request's TranscribeOptions fields and formats (parakeet.api.routes.jobs)
    metadata: dict[str, Any] | None
    audio_path: str
    audio_bytes: int
    attempts: int  # claims so far (1 + the times a dead or stopping worker handed it on)
    duration_s: float | None  # the audio's length once known
    cancel_requested: bool
    error: dict[str, Any] | None  # {"code", "message", "param"} when failed
    webhook_url: str | None = None
    webhook_state: str | None = None  # pending (an attempt is due), delivered, failed (gave up); None: no webhook
    webhook_attempts: int = 0
    chunks_done: int = 0  # progress of the current run: long-audio chunks transcribed (parakeet.pipeline.transcriber)
    audio_s_done: float = 0.0  # ... and the audio they cover, s (the end of the last word so far)

    @classmethod
    def _of(cls, row: tuple[Any, ...]) -> Job:
        (id_, status, created, started, finished, options, metadata, path, nbytes, attempts, duration, cancel,
         error, webhook_url, webhook_state, webhook_attempts, chunks_done, audio_s_done) = row  # fmt: skip
        return cls(id_, status, created, started, finished, json.loads(options),
                   json.loads(metadata) if metadata else None, path, nbytes, attempts, duration, bool(cancel),
                   json.loads(error) if error else None, webhook_url, webhook_state, webhook_attempts, chunks_done,
                   audio_s_done)  # fmt: skip


@dataclass(frozen=True)
class WebhookAttempt:
    """One delivery attempt of a job's webhook: when, and the receiver's HTTP status or why there was none."""

    attempt: int
    at: float
    status_code: int | None
    error: str | None


class JobStore:
    """The job rows in one database (`open_database`).

    Args:
        database: an open `Database` (its schema created).
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._db.name

    @property
    def kind(self) -> str:
        """The database: "sqlite" or "postgresql"."""
        return self._db.kind

    # --- audio kept in the database (parakeet.jobs.audio.DatabaseJobAudio) ---

    def put_audio_chunk(self, job_id: str, seq: int, data: bytes) -> None:
        """Store piece `seq` (0, 1, ...) of a job's audio, in its own transaction."""
        with self._write() as db:
            db.execute("INSERT INTO job_audio (job_id, seq, data) VALUES (?, ?, ?)", (job_id, seq, data))

    def audio_chunks(self, job_id: str) -> Iterator[bytes]:
        """A job's audio pieces in order, one query each (at most one piece in hand at a time)."""
        seq = 0
        while True:
            with self._read() as db:
                row = db.execute("SELECT data FROM job_audio WHERE job_id = ? AND seq = ?", (job_id, seq)).fetchone()
            if row is None:
                return
            yield bytes(row[0])
            seq += 1

    def has_audio(self, job_id: str) -> bool:
        with self._read() as db:
            return db.execute("SELECT 1 FROM job_audio WHERE job_id = ? LIMIT 1", (job_id,)).fetchone() is not None

    def delete_audio(self, job_id: str) -> None:
        with self._write() as db:
            db.execute("DELETE FROM job_audio WHERE job_id = ?", (job_id,))

    @contextmanager
    def _write(self) -> Iterator[Database]:
        """One write transaction, its lock taken first, committed or rolled back.

        Raises:
            JobsDatabaseUnavailable: the database failed (connection lost, disk full).
        """
        with self._lock, self._unavailable():
            self._db.begin_write()
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[Database]:
        with self._lock, self._unavailable():
            yield self._db

    @contextmanager
    def _unavailable(self) -> Iterator[None]:
        try:
            yield
        except self._db.driver_errors as exc:
            raise errors.JobsDatabaseUnavailable(f"the jobs database failed: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def submit(
        self, job_id: str, *, options: dict[str, Any], metadata: dict[str, Any] | None, idempotency_key: str | None,
        audio_path: str, audio_bytes: int, now: float, max_queued: int, max_stored_bytes: int,
        webhook_url: str | None = None,
    ) -> tuple[Job, bool]:  # fmt: skip
        """Store a queued job (its audio is already at `audio_path`).

        Returns:
            (the job, True), or (the job submitted earlier with the same `idempotency_key`, False).

        Raises:
            JobsFull: `max_queued` jobs are queued. JobStorageFull: the stored audio would pass `max_stored_bytes`.
        """
        with self._write() as db:
            if idempotency_key is not None:
                row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?", (idempotency_key,))
                if (earlier := row.fetchone()) is not None:
                    return Job._of(earlier), False
            queued = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
            if queued >= max_queued:
                raise errors.JobsFull(f"{queued} jobs are queued, the limit is {max_queued}", retry_after_s=60)
            stored = db.execute("SELECT COALESCE(SUM(audio_bytes), 0) FROM jobs").fetchone()[0]
            if stored + audio_bytes > max_stored_bytes:
                raise errors.JobStorageFull(
                    f"the stored jobs' audio ({stored} bytes) plus this file ({audio_bytes} bytes) would pass the "
                    f"limit of {max_stored_bytes} bytes"
                )
            db.execute(
                "INSERT INTO jobs (id, status, created_at, options, metadata, idempotency_key, audio_path, "
                "audio_bytes, webhook_url) VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (job_id, now, json.dumps(options), json.dumps(metadata) if metadata is not None else None,
                 idempotency_key, audio_path, audio_bytes, webhook_url),
            )  # fmt: skip
            return self._get(db, job_id), True

    def by_idempotency_key(self, key: str) -> Job | None:
        """The job submitted with `key`, if any (a retried submit is answered before its audio is stored again;
        `submit` checks again, for two retries that race)."""
        with self._read() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE idempotency_key = ?", (key,)).fetchone()
        return Job._of(row) if row is not None else None

    @staticmethod
    def _get(db: Database, job_id: str) -> Job:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise errors.JobNotFound(f"no job {job_id[:80]!r}", param="id")
        return Job._of(row)

    def get(self, job_id: str) -> Job:
        """Raises: JobNotFound."""
        with self._read() as db:
            return self._get(db, job_id)

    def result(self, job_id: str) -> dict[str, Any]:
        """A succeeded job's stored outcome (parakeet.jobs.outcomes.outcome_record; rendered when read).

        Raises:
            JobNotFound. JobNotFinished: it has not succeeded (yet).
        """
        return self.succeeded(job_id)[1]

    def succeeded(self, job_id: str) -> tuple[Job, dict[str, Any]]:
        """A succeeded job's row and its stored outcome, in one read.

        Raises:
            JobNotFound. JobNotFinished: it has not succeeded (yet).
        """
        with self._read() as db:
            job = self._get(db, job_id)
            if job.status != "succeeded":
                raise errors.JobNotFinished(f"job {job_id} is {job.status}; its result exists once it succeeded")
            text = db.execute("SELECT result FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
        return job, dict(json.loads(text))

    def page(self, *, status: JobStatus | None, limit: int, before: float | None) -> list[Job]:
        """Jobs newest first, at most `limit`, created before `before` (paging), of one status or all."""
        where, args = ["created_at < ?"], [before if before is not None else float("inf")]  # type: list[str], list[Any]
        if status is not None:
            where.append("status = ?")
            args.append(status)
        sql = f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(where)} ORDER BY created_at DESC, id LIMIT ?"
        with self._read() as db:
            return [Job._of(r) for r in db.execute(sql, (*args, limit)).fetchall()]

    def counts(self) -> dict[str, int]:
        """Jobs per status (every status, zeros included)."""
        with self._read() as db:
            rows = dict(db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
        return {s: int(rows.get(s, 0)) for s in STATUSES}

    def claim(self, owner: str, *, now: float, lease_s: float) -> Job | None:
        """Take the next job to run: the oldest queued, or a running one whose lease expired (its worker died).

        Returns:
            The job, now `running` under `owner` until `now + lease_s`; None when there is none.
        """
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE status = 'queued' OR (status = 'running' AND lease_expires_at < ?) "
                "ORDER BY created_at, id LIMIT 1" + db.skip_locked,
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'running', lease_owner = ?, lease_expires_at = ?, attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?), chunks_done = 0, audio_s_done = 0 WHERE id = ?",
                (owner, now + lease_s, now, row[0]),
            )
            return self._get(db, row[0])

    def renew(self, job_id: str, owner: str, *, until: float) -> bool:
        """Extend `owner`'s lease. Returns False when the job is no longer its to run (a cancel was asked for, or
        the lease was lost and another worker took the job): the caller stops."""
        with self._write() as db:
            n = db.execute(
                "UPDATE jobs SET lease_expires_at = ? WHERE id = ? AND lease_owner = ? AND status = 'running' "
                "AND cancel_requested = 0",
                (until, job_id, owner),
            ).rowcount
            return bool(n)

    def save_chunk(self, job_id: str, owner: str, *, index: int, start: int, end: int, transcript: str) -> None:
        """Keep a finished long-audio chunk of `owner`'s run (samples [start, end), its transcript as JSON), so a run
        that takes the job over reuses it."""
        with self._write() as db:
            if db.execute("SELECT 1 FROM jobs WHERE id = ? AND lease_owner = ?", (job_id, owner)).fetchone():
                db.execute("DELETE FROM job_chunks WHERE job_id = ? AND idx = ?", (job_id, index))
                db.execute(
                    "INSERT INTO job_chunks (job_id, idx, start_sample, end_sample, transcript) VALUES (?, ?, ?, ?, ?)",
                    (job_id, index, start, end, transcript),
                )

    def saved_chunks(self, job_id: str) -> dict[int, tuple[int, int, str]]:
        """The chunks earlier runs of the job finished: index -> (start, end, transcript JSON)."""
        with self._read() as db:
            rows = db.execute(
                "SELECT idx, start_sample, end_sample, transcript FROM job_chunks WHERE job_id = ?", (job_id,)
            ).fetchall()
        return {int(i): (int(a), int(b), str(t)) for i, a, b, t in rows}

    def note_progress(self, job_id: str, owner: str, *, chunks_done: int, audio_s_done: float) -> None:
        """`owner`'s run has transcribed `chunks_done` chunks, up to `audio_s_done` seconds of the audio."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET chunks_done = ?, audio_s_done = ? WHERE id = ? AND lease_owner = ?",
                (chunks_done, audio_s_done, job_id, owner),
            )

    def finish(
        self, job_id: str, owner: str, *, now: float, result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None, duration_s: float | None = None,
    ) -> bool:  # fmt: skip
        """End `owner`'s run: `succeeded` with `result` (and the audio's `duration_s`), or `failed` with `error`; its
        webhook (if it has one) is due at once. Returns False (and changes nothing) when the job is no longer
        `owner`'s."""
        status = "failed" if error is not None else "succeeded"
        with self._write() as db:
            db.execute(
                "DELETE FROM job_chunks WHERE job_id IN (SELECT id FROM jobs WHERE id = ? AND lease_owner = ?)",
                (job_id, owner),
            )
            n = db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, result = ?, error = ?, lease_owner = NULL, "
                "lease_expires_at = NULL, webhook_state = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END, "
                "webhook_next_at = ?, duration_s = COALESCE(?, duration_s) "
                "WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (status, now, json.dumps(result) if result is not None else None,
                 json.dumps(error) if error is not None else None, now, duration_s, job_id, owner),
            ).rowcount  # fmt: skip
            return bool(n)

    def release(self, job_id: str, owner: str) -> None:
        """Hand `owner`'s running job back to the queue (its worker is stopping, or was too busy to take it)."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END, "
                "lease_owner = NULL, lease_expires_at = NULL WHERE id = ? AND lease_owner = ? AND status = 'running'",
                (job_id, owner),
            )

    def cancel(self, job_id: str, *, now: float) -> Job:
        """Cancel a job: a queued one at once; a running one is marked and its worker stops it (`renew` says so).

        Raises:
            JobNotFound. JobNotFinished: it already ended (succeeded, failed or cancelled).
        """
        with self._write() as db:
            job = self._get(db, job_id)
            if job.status not in UNFINISHED:
                raise errors.JobNotFinished(f"job {job_id} already ended ({job.status}); there is nothing to cancel")
            if job.status == "queued":
                db.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?", (now, job_id))
            else:
                db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ?", (job_id,))
            return self._get(db, job_id)

    def cancelled(self, job_id: str, owner: str, *, now: float) -> None:
        """`owner` stopped its job after a cancel: the job ends `cancelled`."""
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, lease_owner = NULL, lease_expires_at = NULL "
                "WHERE id = ? AND lease_owner = ?",
                (now, job_id, owner),
            )

    def expire(self, *, finished_before: float) -> list[str]:
        """Remove the jobs that ended before `finished_before`. Returns their audio paths (for the caller to
        delete)."""
        with self._write() as db:
            rows = db.execute(
                "SELECT audio_path FROM jobs WHERE status NOT IN ('queued', 'running') AND finished_at < ?",
                (finished_before,),
            ).fetchall()
            db.execute(
                "DELETE FROM webhook_attempts WHERE job_id IN (SELECT id FROM jobs WHERE status NOT IN "
                "('queued', 'running') AND finished_at < ?)",
                (finished_before,),
            )
            db.execute(
                "DELETE FROM job_chunks WHERE job_id IN (SELECT id FROM jobs WHERE status NOT IN "
                "('queued', 'running') AND finished_at < ?)",
                (finished_before,),
            )
            db.execute(
                "DELETE FROM job_audio WHERE job_id IN (SELECT id FROM jobs WHERE status NOT IN "
                "('queued', 'running') AND finished_at < ?)",
                (finished_before,),
            )
            db.execute(
                "DELETE FROM jobs WHERE status NOT IN ('queued', 'running') AND finished_at < ?", (finished_before,)
            )
            return [r[0] for r in rows]

    def claim_webhook(self, *, now: float, lease_s: float) -> Job | None:
        """The next job whose webhook attempt is due, held for `lease_s` (so one worker sends it)."""
        with self._write() as db:
            row = db.execute(
                "SELECT id FROM jobs WHERE webhook_state = 'pending' AND webhook_next_at <= ? "
                "ORDER BY webhook_next_at LIMIT 1" + db.skip_locked,
                (now,),
            ).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET webhook_next_at = ? WHERE id = ?", (now + lease_s, row[0]))
            return self._get(db, row[0])

    def record_webhook_attempt(
        self, job_id: str, *, at: float, status_code: int | None, error: str | None, next_at: float | None
    ) -> None:
        """Record one attempt; then the webhook is delivered (a 2xx status), due again at `next_at`, or, with no
        `next_at`, given up (`failed`)."""
        delivered = status_code is not None and 200 <= status_code < 300
        state = "delivered" if delivered else "pending" if next_at is not None else "failed"
        with self._write() as db:
            n = db.execute(
                "UPDATE jobs SET webhook_attempts = webhook_attempts + 1, webhook_state = ?, webhook_next_at = ? "
                "WHERE id = ? RETURNING webhook_attempts",
                (state, next_at, job_id),
            ).fetchone()
            if n is not None:
                db.execute(
                    "INSERT INTO webhook_attempts (job_id, attempt, at, status_code, error) VALUES (?, ?, ?, ?, ?)",
                    (job_id, n[0], at, status_code, error),
                )

    def webhook_attempts(self, job_id: str) -> list[WebhookAttempt]:
        """A job's webhook attempts, first first."""
        with self._read() as db:
            rows = db.execute(
                "SELECT attempt, at, status_code, error FROM webhook_attempts WHERE job_id = ? ORDER BY attempt",
                (job_id,),
            ).fetchall()
        return [WebhookAttempt(*r) for r in rows]
