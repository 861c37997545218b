"""parakeet/pipeline/job_store.py on a real SQLite file: submit with idempotency and both limits, claims in order
under a lease, a dead worker's job claimed again once its lease expires (and the dead owner can no longer renew or
finish it), release, cancel of a queued and of a running job, the result only once succeeded, paging, expiry, a
second connection (another worker process) sees the same rows, and a newer schema refused."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from parakeet.core import errors
from parakeet.pipeline.job_store import SqliteJobStore


def submit(store: SqliteJobStore, job_id: str, now: float = 100.0, **kw: Any) -> Any:
    args: dict[str, Any] = {"options": {"timestamps": False}, "metadata": {"k": 1}, "idempotency_key": None,
                            "audio_path": f"/x/{job_id}", "audio_bytes": 10, "now": now, "max_queued": 10,
                            "max_stored_bytes": 1000} | kw  # fmt: skip
    return store.submit(job_id, **args)


def test_submit_idempotency_and_the_limits(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "d" / "jobs.sqlite3")
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


def test_claims_in_order_and_an_expired_lease_is_claimed_again(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
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


def test_release_cancel_and_the_result_before_success(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
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


def test_failed_jobs_keep_their_error_and_paging_and_expiry(tmp_path: Path) -> None:
    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
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


def test_a_second_connection_sees_the_rows_and_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    one, two = SqliteJobStore(path), SqliteJobStore(path)
    submit(one, "shared")
    assert two.get("shared").status == "queued"
    got = [s.claim(owner, now=5.0, lease_s=30.0) for s, owner in ((one, "a"), (two, "b"))]
    assert [g.id if g else None for g in got] == ["shared", None]  # one claim only
    one.close()
    two.close()
    db = sqlite3.connect(path)
    db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(errors.InvalidSettings, match="schema version 99; this server knows 1"):
        SqliteJobStore(path)
