"""Jobs survive their worker (real uvicorn processes on loopback sharing one PARAKEET_DATA_DIR, the fake engine
slowed to ~0.3 s a chunk): SIGTERM hands the running job back to the queue at once; SIGKILL leaves it running under
a lease that expires (2 s here, FAKE_TUNING), and the next server takes it over and finishes it; the result is what
`POST /transcribe` gives for the same file, and the job counts its three attempts."""

from __future__ import annotations

import io
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from fakes import tagged_wave
from helpers import start_server, wait_until

pytestmark = pytest.mark.e2e

ENV = {
    "PARAKEET_LONG_AUDIO_THRESHOLD_S": "3",
    "FAKE_DELAY_S": "0.3",
    "FAKE_TUNING": '{"jobs_lease_s": 2.0, "long_audio_chunk_s": 2.0, "long_audio_search_s": 0.5, '
    '"long_audio_chunks_in_flight": 1}',
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


def test_a_job_is_handed_back_on_sigterm_taken_over_after_sigkill_and_finished(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = {**ENV, "PARAKEET_DATA_DIR": str(data_dir)}
    buf = io.BytesIO()
    sf.write(buf, np.concatenate([tagged_wave(7, 20.0)]), 16000, format="WAV", subtype="FLOAT")  # ~10 chunks
    wav = buf.getvalue()

    first = start_server(tmp_path / "a", env, fake=True)
    try:
        first.wait_ready()
        job_id = httpx.post(f"{first.url}/v1/jobs", files={"file": ("a.wav", wav)}, timeout=30).json()["id"]
        wait_until(lambda: running(first.url, job_id, 1), timeout_s=60, what="the job to run")
        assert first.stop() in (0, -signal.SIGTERM)  # (uvicorn re-raises the signal after its graceful shutdown)
    finally:
        first.stop()
    assert job_row(data_dir, job_id) == ("queued", 1)  # handed back, not lost

    second = start_server(tmp_path / "b", env, fake=True)
    try:
        second.wait_ready()
        wait_until(lambda: running(second.url, job_id, 2), timeout_s=60, what="the job to run again")
        second.proc.send_signal(signal.SIGKILL)
        second.proc.wait(30)
    finally:
        second.stop()
    assert job_row(data_dir, job_id) == ("running", 2)  # its worker died holding it

    third = start_server(tmp_path / "c", env, fake=True)
    try:
        third.wait_ready()

        def done() -> dict[str, Any] | None:
            view: dict[str, Any] = httpx.get(f"{third.url}/v1/jobs/{job_id}", timeout=10).json()
            return view if view["status"] == "succeeded" else None

        view = wait_until(done, timeout_s=120, what="the job to finish after its lease expired")
        result = httpx.get(f"{third.url}/v1/jobs/{job_id}/result", timeout=10).json()
        sync = httpx.post(f"{third.url}/transcribe", files={"file": ("a.wav", wav)}, timeout=60).json()
    finally:
        third.stop()
    assert view["attempts"] == 3 and view["progress"]["chunks_done"] == sync["chunks"] >= 5
    assert result["text"] == sync["text"] and result["chunks"] == sync["chunks"]
