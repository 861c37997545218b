"""deploy/haproxy.cfg for real, on loopback: HAProxy (Debian package, installed by scripts/test.sh) in front of two
real servers (the fake engine: the subject is the proxy and the processes, not the model). A load through it
succeeds; SIGTERM one server mid-load and no request fails (HAProxy stops sending to it while its admitted requests
finish); kill -9 one server and only its in-flight requests may fail, the rest go to the other; one address cannot
hold more than 64 connections. Bounded in count and time; orderings by polling, not sleeping."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from helpers import ROOT, ServerProcess, free_port, start_server, wait_until, wav_of

CONCURRENCY = 4
TAG = 61


@pytest.fixture(scope="module")
def clip() -> bytes:
    return wav_of(TAG, 1.0)  # the fake engine answers "61 16000"


def haproxy(port: int, backends: list[int], log_path: Path) -> subprocess.Popen[bytes]:
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    env = {
        **os.environ,
        "HAPROXY_BIND": f"127.0.0.1:{port}",
        "HAPROXY_SERVER_1": f"127.0.0.1:{backends[0]}",
        "HAPROXY_SERVER_2": f"127.0.0.1:{backends[1]}",
    }
    with open(log_path, "wb") as log:
        return subprocess.Popen([exe, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=env, stdout=log,
                                stderr=subprocess.STDOUT)  # fmt: skip


def _pid_behind(url: str) -> int | None:
    try:
        r = httpx.get(f"{url}/health/ready", timeout=2)
    except httpx.TransportError:
        return None
    return int(r.json()["worker_pid"]) if r.status_code == 200 else None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, list[ServerProcess], list[int]]]:
    """HAProxy in front of two fake-engine servers, once both are checked UP (rise 2 x 500 ms): requests through
    the frontend have reached each of them."""
    ports = [free_port(), free_port()]
    servers = [start_server(tmp_path / f"s{i}", {"FAKE_DELAY_S": "0.02"}, fake=True, port=p)
               for i, p in enumerate(ports)]  # fmt: skip
    lb_port = free_port()
    url = f"http://127.0.0.1:{lb_port}"
    lb: subprocess.Popen[bytes] | None = None
    try:
        for server in servers:
            server.wait_ready(timeout_s=60)
        lb = haproxy(lb_port, ports, tmp_path / "haproxy.log")
        seen: set[int] = set()
        wait_until(lambda: seen.add(_pid_behind(url) or 0) or seen >= {s.proc.pid for s in servers},
                   what="both servers UP behind HAProxy")  # fmt: skip
        yield url, servers, ports
    finally:
        if lb is not None:
            lb.terminate()
            lb.wait(10)
        for s in servers:
            s.stop()


def load(url: str, clip: bytes, n: int, on_progress: dict[int, object] | None = None) -> list[int | str]:
    """n transcriptions through the load balancer, CONCURRENCY at a time; run `on_progress[k]()` after k."""
    done: list[int | str] = []

    def one(_: int) -> int | str:
        try:
            r = httpx.post(f"{url}/transcribe", files={"file": ("a.wav", clip)}, timeout=60)
            code: int | str = (
                r.status_code if r.status_code != 200 or r.json()["text"] == f"{TAG} 16000" else "bad text"
            )
        except httpx.HTTPError as exc:
            code = type(exc).__name__
        done.append(code)
        action = (on_progress or {}).pop(len(done), None)
        if callable(action):
            action()
        return code

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(one, range(n)))


def test_haproxy_config_is_valid() -> None:
    env = {**os.environ, "HAPROXY_BIND": "127.0.0.1:1", "HAPROXY_SERVER_1": "127.0.0.1:2",
           "HAPROXY_SERVER_2": "127.0.0.1:3"}  # fmt: skip
    exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
    out = subprocess.run([exe, "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=env, capture_output=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_haproxy_drains_a_server_on_sigterm_without_a_failed_request(cluster, clip: bytes) -> None:  # type: ignore[no-untyped-def]
    url, servers, _ = cluster
    assert load(url, clip, 12) == [200] * 12
    results = load(url, clip, 40, {10: lambda: servers[0].proc.send_signal(signal.SIGTERM)})
    assert results == [200] * 40, results
    assert servers[0].proc.wait(60) in (0, -signal.SIGTERM)


def test_haproxy_kill_9_loses_at_most_the_in_flight_requests(cluster, clip: bytes) -> None:  # type: ignore[no-untyped-def]
    url, servers, _ = cluster
    results = load(url, clip, 40, {10: lambda: servers[1].proc.kill()})
    failed = [r for r in results if r != 200]
    assert len(failed) <= CONCURRENCY, results
    assert results[-10:] == [200] * 10  # once HAProxy saw it gone, everything went to the other server


def test_haproxy_caps_connections_per_client_address(cluster, clip: bytes) -> None:  # type: ignore[no-untyped-def]
    """64 idle connections from one address are held; a request on the 65th gets the error-shaped 429, and a
    request succeeds again once they are gone."""
    url, _, _ = cluster
    host, port = url.removeprefix("http://").split(":")
    idle = []
    try:
        for _ in range(64):
            idle.append(socket.create_connection((host, int(port)), timeout=10))
        # HAProxy counts a connection once it has accepted it: ask until the 65th is over the limit
        over = wait_until(lambda: (r := httpx.get(f"{url}/health/ready", timeout=10)).status_code == 429 and r,
                          what="HAProxy to count the 64 connections")  # fmt: skip
    finally:
        for s in idle:
            s.close()
    assert over.json()["error"]["code"] == "too_many_connections"
    assert over.headers["retry-after"] == "1" and "the limit is 64" in over.json()["error"]["message"]
    after = wait_until(lambda: (r := httpx.post(f"{url}/transcribe", files={"file": ("a.wav", clip)}, timeout=60))
                       .status_code != 429 and r, what="the connections to be gone")  # fmt: skip
    assert after.status_code == 200
