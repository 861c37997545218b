"""Jobs survive their worker (real uvicorn processes on loopback sharing one PARAKEET_DATA_DIR, the fake engine
slowed to ~0.3 s a chunk): SIGTERM hands the running job back to the queue at once; SIGKILL leaves it running under
a lease that expires (2 s here, FAKE_TUNING), and the next server takes it over and finishes it from the last chunk
the killed one finished; the result is what `POST /transcribe` gives for the same file, and the job counts its three
attempts. Two servers on one PostgreSQL split a batch of jobs and run none twice."""

from __future__ import annotations

import io
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from fakes import tagged_wave
from helpers import ServerProcess, start_server, wait_until

pytestmark = pytest.mark.e2e

ENV = {
    "FAKE_DELAY_S": "0.3",
    "FAKE_TUNING": '{"long_audio_threshold_s": 3, "jobs_lease_s": 2.0, "long_audio_chunk_s": 2.0, '
    '"long_audio_search_s": 0.5, "long_audio_chunks_in_flight": 1}',
}


def job_row(data_dir: Path, job_id: str) -> tuple[Any, ...]:
    db = sqlite3.connect(data_dir / "jobs.sqlite3")
    try:
        row: tuple[Any, ...] = db.execute("SELECT status, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return row
    finally:
        db.close()


def running(url: str, job_id: str, attempts: int) -> bool:
    view = httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()
    return bool(view["status"] == "running" and view["attempts"] == attempts and view["progress"]["chunks_done"] >= 1)


def fake_server(tmp_path: Path, name: str, env: dict[str, str]) -> ServerProcess:
    """A real uvicorn with the fake engine, its own folder under `tmp_path` (the one place this module starts one)."""
    return start_server(tmp_path / name, env, fake=True)


def test_a_job_is_handed_back_on_sigterm_taken_over_after_sigkill_and_finished(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**ENV, "PARAKEET_DATA_DIR": str(data_dir)}
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([tagged_wave(7, 20.0)]), 16000, format="WAV", subtype="FLOAT")  # ~10 chunks
    wav = buf.getvalue()

    first = fake_server(tmp_path, "a", env)
    try:
        first.wait_ready()
        job_id = httpx.post(f"{first.url}/v1/jobs", files={"file": ("a.wav", wav)}, timeout=30).json()["id"]
        wait_until(lambda: running(first.url, job_id, 1), timeout_s=60, what="the job to run")
        assert first.stop() in (0, -signal.SIGTERM)  # (uvicorn re-raises the signal after its graceful shutdown)
    finally:
        first.stop()
    assert job_row(data_dir, job_id) == ("queued", 1)  # handed back, not lost

    second = fake_server(tmp_path, "b", env)
    try:
        second.wait_ready()
        wait_until(lambda: running(second.url, job_id, 2), timeout_s=60, what="the job to run again")
        second.proc.send_signal(signal.SIGKILL)
        second.proc.wait(30)
    finally:
        second.stop()
    assert job_row(data_dir, job_id) == ("running", 2)  # its worker died holding it

    third = fake_server(tmp_path, "c", env)
    try:
        third.wait_ready()

        def done() -> dict[str, Any] | None:
            view: dict[str, Any] = httpx.get(f"{third.url}/v1/jobs/{job_id}", timeout=10).json()
            return view if view["status"] == "succeeded" else None

        view = wait_until(done, timeout_s=120, what="the job to finish after its lease expired")
        result = httpx.get(f"{third.url}/v1/jobs/{job_id}/result", timeout=10).json()
        resumed = sum(len(b) for b in third.fake_batches())  # the chunks the third run sent to its engine
        sync = httpx.post(f"{third.url}/transcribe", files={"file": ("a.wav", wav)}, timeout=60).json()
    finally:
        third.stop()
    assert view["attempts"] == 3 and view["progress"]["chunks_done"] == sync["chunks"] >= 5
    # resumed from the last chunk the killed run finished: only the rest went to the engine, and the result is
    # the uninterrupted transcript (no chunk twice, none missing)
    assert 0 < resumed < sync["chunks"], (resumed, sync["chunks"])
    assert result["text"] == sync["text"] and result["chunks"] == sync["chunks"]
    assert result["timestamps"] is None and result["duration_sec"] == sync["duration_sec"]


def test_two_servers_on_one_postgresql_split_the_jobs_and_never_run_one_twice(
    tmp_path: Path, postgres_url: str
) -> None:
    """Two servers, each with its own data directory, on one PostgreSQL, and 12 jobs submitted to the first: every
    job succeeds once (attempts 1), each file reached exactly one server's engine, and the second ran some of the
    first's jobs (their audio is in the database: the hosts share nothing else)."""
    import psycopg

    name = f"e2e_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    # each server its own data directory (start_server: <its folder>/data): they share only the database
    env = {"FAKE_DELAY_S": "0.5", "PARAKEET_JOBS_DATABASE_URL": postgres_url.rsplit("/", 1)[0] + "/" + name}
    servers = [fake_server(tmp_path, n, env) for n in ("a", "b")]
    try:
        for s in servers:
            s.wait_ready()
        ids = []
        for tag in range(100, 112):
            buf = io.BytesIO()
            sf.write(buf, tagged_wave(tag, 1.0), 16000, format="WAV", subtype="FLOAT")
            r = httpx.post(f"{servers[0].url}/v1/jobs", files={"file": ("a.wav", buf.getvalue())}, timeout=30)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])

        def all_done() -> list[dict[str, Any]] | None:
            views = [httpx.get(f"{servers[0].url}/v1/jobs/{i}", timeout=10).json() for i in ids]
            return views if all(v["status"] == "succeeded" for v in views) else None

        views = wait_until(all_done, timeout_s=120, what="the 12 jobs to finish")
        ran = [[t for batch in s.fake_batches() for t in batch] for s in servers]
    finally:
        for s in servers:
            s.stop()
    assert all(v["attempts"] == 1 for v in views)
    tags = sorted(ran[0] + ran[1])
    assert tags == list(range(100, 112)), ran  # each file transcribed exactly once, by one of the two
    assert ran[0] and ran[1], ran  # both took jobs: b ran jobs submitted to a, their audio read from PostgreSQL
    assert not [p for n in ("a", "b") for p in (tmp_path / n / "data").rglob("*.audio")]  # no audio on either disk
