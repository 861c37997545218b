"""The one uvicorn launcher of the tests and the benchmarks: a real server on a free loopback port, its output
captured to a file, waited on until every worker answers /health (tests/helpers.py `start_server` adds the test
environment; the benchmarks call `start_uvicorn`)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """A real `uvicorn server:app` on 127.0.0.1, its output captured to `log_path`."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 120.0, workers: int = 1, path: str = "/health") -> None:
        """Wait until `workers` distinct worker pids have answered `path` with 200 (`/health`: ready to serve;
        `/health/live`: the event loop answers, the model may still be loading)."""
        ready_pids: set[object] = set()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            try:
                r = httpx.get(f"{self.url}{path}", timeout=2.0)
                if r.status_code == 200:
                    ready_pids.add(r.json().get("worker_pid", 0) if workers > 1 else 0)
                    if len(ready_pids) >= workers:
                        return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        lines = [line for line in self.log().splitlines() if '"GET /health' not in line]  # the polling itself
        tail = "\n".join(lines[-60:])
        raise TimeoutError(f"server not ready after {timeout_s} s (log without the /health polls):\n{tail}")

    def fake_batches(self) -> list[list[int]]:
        """The batches (tags) the fake engine ran, from the fake app's test-only route (fakes.py)."""
        return [list(b) for b in httpx.get(f"{self.url}/_fake/batches", timeout=10).json()]

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def launch_uvicorn(
    app: list[str],
    env: dict[str, str],
    log_path: Path,
    *,
    port: int | None = None,
    workers: int = 1,
    healthcheck_timeout_s: int = 60,
) -> ServerProcess:
    """`python -m uvicorn <app...>` on 127.0.0.1 from the repository root with exactly `env`, `workers` workers and
    uvicorn's --timeout-worker-healthcheck; output to `log_path`. Does not wait (`ServerProcess.wait_ready`)."""
    port = port or free_port()
    cmd = [sys.executable, "-m", "uvicorn", *app, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers), "--timeout-worker-healthcheck", str(healthcheck_timeout_s)]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    return ServerProcess(f"http://127.0.0.1:{port}", proc, log_path)


def start_uvicorn(
    app: list[str], env: dict[str, str], log_path: Path, timeout_s: float = 300.0, workers: int = 1
) -> tuple[subprocess.Popen[bytes], str]:
    """`launch_uvicorn` and wait until /health has answered 200 from `workers` distinct worker pids (one, for an app
    without pids); returns (process, base URL), for the benchmarks.

    Raises:
        RuntimeError: the server exited first. TimeoutError: not ready within `timeout_s` (it is then stopped).
    """
    server = launch_uvicorn(app, env, log_path, workers=workers)
    try:
        server.wait_ready(timeout_s, workers)
    except TimeoutError:
        server.stop()
        raise
    return server.proc, server.url
