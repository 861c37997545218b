"""`uvicorn server:app --workers 2` with the digits model, the production command (conftest.module_server), where
the subject is the processes: both workers load the model, serve and report their health, and the uvicorn parent
never loads torch while its workers do. (A SIGKILLed worker's replacement, and its decoders dying with it:
tests/e2e/test_faults.py; the HTTP behaviour itself: tests/app.)"""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support import speech

from helpers import Serve, ServerProcess
from media import wav_bytes

SERVE = Serve(fake=False, workers=2)


def test_e2e_both_workers_serve_and_report_health(module_server: ServerProcess) -> None:
    pids = set()
    for _ in range(40):
        r = httpx.get(f"{module_server.url}/health", timeout=5)
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


def test_e2e_uvicorn_parent_never_imports_torch(module_server: ServerProcess) -> None:
    maps = Path(f"/proc/{module_server.proc.pid}/maps").read_text()
    assert "libtorch" not in maps
    child_pid = httpx.get(f"{module_server.url}/health", timeout=5).json()["worker_pid"]
    assert "libtorch" in Path(f"/proc/{child_pid}/maps").read_text()
    r = httpx.post(f"{module_server.url}/transcribe", files={"file": ("a.wav", wav_bytes(speech.speak("four two")))},
                   timeout=60)  # fmt: skip
    assert r.status_code == 200 and r.json()["text"] == "four two"
