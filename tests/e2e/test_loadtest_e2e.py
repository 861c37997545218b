"""loadtest.py (a subprocess) against the digits app on a loopback socket (conftest.digits_server): a short open-loop
ramp that must find the breaking point, with one record per scheduled request; Ctrl-C prints the summary so far."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from helpers import ROOT, LiveServer, wait_until


def test_loadtest_end_to_end_finds_the_breaking_point(
    digits_server: LiveServer, digit_utterances: list[Any], tmp_path: Path
) -> None:
    clips = tmp_path / "clips"
    clips.mkdir()
    for i, u in enumerate(digit_utterances[:8]):
        sf.write(clips / f"u{i}.wav", u.waveform, 16000)
    out = tmp_path / "run.json"
    cmd = [sys.executable, str(ROOT / "loadtest.py"), "--url", digits_server.url, "--audio-dir", str(clips)]
    cmd += ["--sequential", "5", "--rates", "4,8,200", "--duration-s", "2", "--slo-p95-ms", "10000"]
    cmd += ["--out", str(out), "--quiet", "--timeout-s", "30"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| 200 req/s (breaks) |" in proc.stdout
    assert "stable up to 8 req/s; breaks at 200 req/s" in proc.stdout
    run = json.loads(out.read_text())
    assert run["stable_up_to_rps"] == 8 and run["breaking_point_rps"] == 200
    scheduled = 5 + 8 + 16 + 400
    assert len(run["requests"]) == scheduled
    assert len({(r["stage"], r["index"]) for r in run["requests"]}) == scheduled  # exactly one record each
    assert all(r["done_s"] is not None for r in run["requests"])
    assert [s["stage"] for s in run["stages"]] == ["sequential", "4 req/s", "8 req/s", "200 req/s"]
    assert run["stages"][1]["ok"] == 8
    assert out.with_suffix(".csv").read_text().count("\n") == scheduled + 1


def served_total(server: LiveServer) -> int:
    """Requests served by all workers so far (each /health answers for the worker the kernel picked)."""
    seen: dict[int, int] = {}
    for _ in range(40):
        body = httpx.get(f"{server.url}/health", timeout=10).json()
        seen[body["worker_pid"]] = body["requests_served"]
    return sum(seen.values())


def test_loadtest_ctrl_c_prints_the_summary_so_far(digits_server: LiveServer, tmp_path: Path) -> None:
    clip = tmp_path / "a.wav"
    sf.write(clip, np.zeros(16000, dtype=np.float32), 16000)
    cmd = [sys.executable, str(ROOT / "loadtest.py"), "--url", digits_server.url, "--audio", str(clip)]
    cmd += ["--sequential", "0", "--rates", "5", "--duration-s", "60", "--quiet", "--out", str(tmp_path / "r.json")]
    before = served_total(digits_server)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: served_total(digits_server) >= before + 5, what="five answered requests of the run")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "interrupted" in stdout and "| 5 req/s |" in stdout
    run = json.loads((tmp_path / "r.json").read_text())
    assert 5 <= len(run["requests"]) < 300
