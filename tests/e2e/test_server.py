"""Two real uvicorn workers on loopback with the digits model (conftest.digits_server), where the subject is the
processes: both serve and report their health, the uvicorn parent never loads torch, and a SIGKILLed worker is
replaced by uvicorn while its decoder subprocesses die with it. (The HTTP behaviour itself: tests/app.)"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx

import speech
from helpers import ServerProcess, child_pids, wait_gone
from media import wav_bytes


def post_file(url: str, data: bytes, filename: str) -> httpx.Response:
    return httpx.post(f"{url}/transcribe", files={"file": (filename, data)}, timeout=60)


def digits_wave() -> object:
    return speech.speak("four two", "en-us", 160)


def test_e2e_both_workers_serve_and_report_health(digits_server: ServerProcess) -> None:
    pids = set()
    for _ in range(40):
        r = httpx.get(f"{digits_server.url}/health", timeout=5)
        assert r.status_code == 200
        body = r.json()
        assert body["status"] == "ok" and body["ready"] is True and body["detail"] is None
        assert body["device"]["type"] == "cpu" and body["gpu_id"] is None
        assert body["model"].endswith("digits_tdt.nemo")
        assert body["uptime_s"] > 0
        pids.add(body["worker_pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2


def test_e2e_uvicorn_parent_never_imports_torch(digits_server: ServerProcess) -> None:
    maps = Path(f"/proc/{digits_server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps
    child_pid = httpx.get(f"{digits_server.url}/health", timeout=5).json()["worker_pid"]
    assert "libtorch" in Path(f"/proc/{child_pid}/maps").read_text()


def test_e2e_sigkilled_worker_is_replaced_and_its_decoders_die(digits_server: ServerProcess) -> None:
    """kill -9 one worker: uvicorn respawns it, its decoder subprocesses do not outlive it, service goes on."""
    victim = httpx.get(f"{digits_server.url}/health", timeout=5).json()["worker_pid"]
    decoders = child_pids(victim)
    assert decoders
    os.kill(victim, signal.SIGKILL)
    assert not wait_gone([victim, *decoders])
    digits_server.wait_ready(workers=2)
    pids = {httpx.get(f"{digits_server.url}/health", timeout=5).json()["worker_pid"] for _ in range(20)}
    assert victim not in pids
    r = post_file(digits_server.url, wav_bytes(digits_wave()), "a.wav")
    assert r.status_code == 200 and r.json()["text"] == "four two"
