"""parakeet/jobs/store.py on both of its databases, the same tests: a real SQLite file and a real PostgreSQL (a
throwaway cluster from the Debian package, a fresh database per test). Submit with idempotency and both limits;
claims in order under a lease; a dead worker's job claimed again once its lease expires (the dead owner can then no
longer renew or finish it); release; cancel of a queued and of a running job; the result only once succeeded; paging;
expiry; two connections claiming at once never take one job twice. Then: a newer schema is refused, a version-1 one
migrated, and an unreachable PostgreSQL is one line without its password."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from parakeet.core import errors
from parakeet.jobs.databases import Database, PostgresDatabase, SqliteDatabase
from parakeet.jobs.store import JobStore


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], JobStore]]:
    """Opens stores on one fresh database of the parameter's kind (each call: another connection to it), all
    closed afterwards."""
    opened: list[JobStore] = []
    if request.param == "sqlite":

        def open_database() -> Database:
            return SqliteDatabase(tmp_path / "jobs.sqlite3")
    else:
        import psycopg

        base: str = request.getfixturevalue("postgres_url")
        name = f"t_{uuid.uuid4().hex}"
        with psycopg.connect(base, autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]

        def open_database() -> Database:
            return PostgresDatabase(base.rsplit("/", 1)[0] + "/" + name)

    def make() -> JobStore:
        opened.append(JobStore(open_database()))
        return opened[-1]

    yield make
    for store in opened:
        store.close()


def submit(store: JobStore, job_id: str, now: float = 100.0, **kw: Any) -> Any:
    args: dict[str, Any] = {"options": {"timestamps": False}, "metadata": {"k": 1}, "idempotency_key": None,
                            "audio_path": f"/x/{job_id}", "audio_bytes": 10, "now": now, "max_queued": 10,
                            "max_stored_bytes": 1000} | kw  # fmt: skip
    return store.submit(job_id, **args)


def test_submit_idempotency_and_the_limits(database: Callable[[], JobStore]) -> None:
    store = database()
    job, created = submit(store, "a", idempotency_key="key-1")
    assert created and job.status == "queued" and job.metadata == {"k": 1} and job.attempts == 0
    again, created = submit(store, "b", idempotency_key="key-1")
    assert not created and again.id == "a"
    with pytest.raises(errors.JobsFull, match="1 jobs are queued, the limit is 1"):
        submit(store, "c", max_queued=1)
    with pytest.raises(errors.JobStorageFull, match=r"\(10 bytes\) plus this file \(995 bytes\).*limit of 1000"):
        submit(store, "c", audio_bytes=995)
    with pytest.raises(errors.JobNotFound):
        store.get("nope")


def test_claims_in_order_and_an_expired_lease_is_claimed_again(database: Callable[[], JobStore]) -> None:
    store = database()
    submit(store, "first", now=1.0)
    submit(store, "second", now=2.0)
    a = store.claim("worker-a", now=10.0, lease_s=30.0)
    assert a is not None and a.id == "first" and a.status == "running" and a.attempts == 1 and a.started_at == 10.0
    b = store.claim("worker-b", now=11.0, lease_s=30.0)
    assert b is not None and b.id == "second"
    assert store.claim("worker-b", now=12.0, lease_s=30.0) is None  # both leased
    assert store.renew("first", "worker-a", until=50.0)
    # worker-a dies: its lease runs out, worker-b takes the job over
    again = store.claim("worker-b", now=51.0, lease_s=30.0)
    assert again is not None and again.id == "first" and again.attempts == 2
    assert not store.renew("first", "worker-a", until=90.0)
    assert not store.finish("first", "worker-a", now=52.0, result={"json": "{}"})
    assert store.finish("first", "worker-b", now=53.0, result={"json": '{"text": "x"}', "text": "x\n"})
    assert store.result("first") == {"json": '{"text": "x"}', "text": "x\n"}
    assert store.get("first").status == "succeeded" and store.get("first").finished_at == 53.0


def test_release_cancel_and_the_result_before_success(database: Callable[[], JobStore]) -> None:
    store = database()
    submit(store, "q", now=1.0)
    submit(store, "r", now=2.0)
    with pytest.raises(errors.JobNotFinished, match="job q is queued"):
        store.result("q")
    assert store.cancel("q", now=3.0).status == "cancelled"
    with pytest.raises(errors.JobNotFinished, match="already ended"):
        store.cancel("q", now=4.0)
    running = store.claim("w", now=5.0, lease_s=30.0)
    assert running is not None and running.id == "r"
    store.release("r", "w")
    assert store.get("r").status == "queued"  # handed back: the next claim runs it again
    assert store.claim("w", now=6.0, lease_s=30.0) is not None
    marked = store.cancel("r", now=7.0)
    assert marked.status == "running" and marked.cancel_requested
    assert not store.renew("r", "w", until=60.0)  # the runner learns of the cancel here
    store.cancelled("r", "w", now=8.0)
    assert store.get("r").status == "cancelled"
    assert store.counts() == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 2}


def test_failed_jobs_keep_their_error_and_paging_and_expiry(database: Callable[[], JobStore]) -> None:
    store = database()
    for i in range(5):
        submit(store, f"j{i}", now=float(i))
    claimed = store.claim("w", now=10.0, lease_s=30.0)
    assert claimed is not None
    error = {"code": "invalid_audio", "message": "not audio", "param": "file"}
    assert store.finish(claimed.id, "w", now=11.0, error=error)
    assert store.get(claimed.id).error == error and store.get(claimed.id).status == "failed"
    page1 = store.page(status=None, limit=2, before=None)
    page2 = store.page(status=None, limit=2, before=page1[-1].created_at)
    assert [j.id for j in page1 + page2] == ["j4", "j3", "j2", "j1"]
    assert [j.id for j in store.page(status="failed", limit=10, before=None)] == ["j0"]
    assert store.expire(finished_before=11.0) == []
    assert store.expire(finished_before=12.0) == ["/x/j0"]
    with pytest.raises(errors.JobNotFound):
        store.get("j0")


def test_a_second_connection_sees_the_rows_and_claims_never_overlap(database: Callable[[], JobStore]) -> None:
    """Two connections (two workers, or two hosts on PostgreSQL) claiming at once from 20 jobs: every job is claimed
    exactly once."""
    one, two = database(), database()
    for i in range(20):
        submit(one, f"j{i:02}", now=float(i), max_queued=100, max_stored_bytes=10**6)
    assert two.get("j00").status == "queued"
    claimed: dict[str, list[str]] = {"a": [], "b": []}

    def drain(store: JobStore, owner: str) -> None:
        while (job := store.claim(owner, now=50.0, lease_s=30.0)) is not None:
            claimed[owner].append(job.id)

    threads = [threading.Thread(target=drain, args=(s, o)) for s, o in ((one, "a"), (two, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(claimed["a"] + claimed["b"]) == [f"j{i:02}" for i in range(20)]
    one.close()
    two.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    JobStore(SqliteDatabase(path)).close()  # creates the schema
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(errors.InvalidSettings, match="schema version 99; this server knows 2"):
        SqliteDatabase(path)


def test_a_version_1_database_is_migrated_and_its_succeeded_jobs_run_again(tmp_path: Path) -> None:
    """Version 1 kept rendered bodies in `result`; version 2 keeps the outcome, rendered when read: a job that
    succeeded under version 1 is queued again (its audio is still stored), nothing else changes."""
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(SqliteDatabase(path))
    submit(store, "done")
    submit(store, "waiting", now=101.0)
    claimed = store.claim("w", now=102.0, lease_s=30)
    assert claimed is not None and claimed.id == "done"
    assert store.finish("done", "w", now=103.0, result={"json": "{}", "text": "old\n"})
    store.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 1")
    db.close()
    migrated = JobStore(SqliteDatabase(path))
    assert [(j.id, j.status) for j in migrated.page(status=None, limit=10, before=None)] == [
        ("waiting", "queued"), ("done", "queued")
    ]  # fmt: skip
    again = migrated.claim("w2", now=104.0, lease_s=30)
    assert again is not None and again.id == "done" and again.audio_path == "/x/done"
    migrated.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2


def test_an_unreachable_postgresql_is_one_clear_line(tmp_path: Path) -> None:
    from parakeet.jobs.databases import open_database

    from helpers import free_port

    url = f"postgresql://parakeet:s3cret@127.0.0.1:{free_port()}/jobs"
    with pytest.raises(errors.InvalidSettings) as info:
        open_database(url, tmp_path)
    assert "cannot open the jobs database postgresql://parakeet:***@127.0.0.1" in info.value.message
    assert "s3cret" not in info.value.message
    with pytest.raises(errors.InvalidSettings, match="must be postgresql://"):
        open_database("mysql://x@y/z", tmp_path)


def test_a_data_directory_that_cannot_be_created_is_one_clear_line(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the data directory should be")
    with pytest.raises(errors.InvalidSettings, match="cannot open the jobs database .*not-a-directory"):
        SqliteDatabase(blocker / "jobs.sqlite3")
