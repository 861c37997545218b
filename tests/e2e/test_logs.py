"""Logs: one line per finished request with its numbers and never its text; PARAKEET_LOG_FORMAT=json makes
the worker's lines, uvicorn's included, JSON objects that carry those fields."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from helpers import Serve, ServerProcess, wav_of


def _json_lines(log: str) -> list[dict[str, Any]]:
    out = []
    for line in log.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


@pytest.mark.parametrize("server", [Serve({"PARAKEET_LOG_FORMAT": "json", "PARAKEET_LOG_LEVEL": "INFO"})],
                         indirect=True)  # fmt: skip
def test_logs_json_lines_carry_the_request_fields(server: ServerProcess) -> None:
    ok = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", wav_of(7, 2.0))}, timeout=30)
    bad = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", b"junk" * 100)}, timeout=30)
    assert httpx.get(f"{server.url}/health/ready", timeout=10).status_code == 200
    server.stop()  # all its lines are written
    assert ok.status_code == 200 and bad.status_code == 415
    lines = _json_lines(server.log())
    access = {rec["request_id"]: rec for rec in lines if rec.get("logger") == "parakeet.access"}
    done = access[ok.headers["x-request-id"]]
    assert done["level"] == "INFO" and done["method"] == "POST" and done["path"] == "/transcribe"
    assert done["status"] == 200 and done["error_code"] is None and done["audio_s"] == 2.0
    assert done["batch_size"] == 1 and done["gpu_id"] is None and done["pid"] == done["worker_pid"]
    assert {"decode_ms", "queue_ms", "compute_ms", "total_ms", "time"} <= set(done)
    refused = access[bad.headers["x-request-id"]]
    assert refused["status"] == 415 and refused["error_code"] == "unsupported_audio"
    assert not any(rec.get("path") == "/health/ready" for rec in access.values())  # probes log at DEBUG
    assert ok.json()["text"] not in server.log()  # never the transcript
    uvicorn = [rec for rec in lines if rec.get("logger", "").startswith("uvicorn")]
    assert any("Application startup complete" in rec["message"] for rec in uvicorn)


@pytest.mark.parametrize("server", [Serve()], indirect=True)
def test_logs_text_lines_by_default(server: ServerProcess) -> None:
    r = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", wav_of(5))}, timeout=30)
    server.stop()
    rid = r.headers["x-request-id"]
    (line,) = [ln for ln in server.log().splitlines() if f"request {rid}" in ln]
    assert " INFO " in line and "parakeet.access" in line and "status=200" in line and "audio_s=1.0" in line
    assert not _json_lines(server.log())
