"""Benchmark helper: start a uvicorn server on a free loopback port and wait until /health says 200.
Used by bench_batching.py and bench_frontend.py (the tests have their own, tests/helpers.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_uvicorn(
    app: list[str], env: dict[str, str], log_path: Path, timeout_s: float = 300.0, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """`python -m uvicorn <app...>` on 127.0.0.1 with `workers` workers, output to `log_path`; returns (process,
    base URL) once /health has answered 200 from that many distinct worker pids (one, for an app without pids).

    Raises:
        RuntimeError: the server exited first, or was not ready within `timeout_s` (it is then stopped).
    """
    import httpx

    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port)]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    ready: set[object] = set()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()[-3000:]}")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                ready.add(r.json().get("worker_pid") if workers > 1 else 0)
                if len(ready) >= workers:
                    return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    proc.wait(30)
    raise RuntimeError(f"server not ready after {timeout_s:g} s:\n{log_path.read_text()[-3000:]}")
