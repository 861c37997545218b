"""A worker's start and stop as a process (real uvicorn on loopback, the subject being the process, its exit code and
its log): 503 + Retry-After while the model loads, then ready, and a clean exit on SIGTERM; and a worker that cannot
serve (bad or unknown settings, every GPU taken, the model's hub unreachable) stops with one line naming why and
uvicorn's start-up-failure code, instead of a restart loop (the model-load messages themselves, with NeMo and the
hub: tests/unit/test_inference.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import Holder, Serve, ServerProcess, child_pids, wait_gone, wait_until, wav_of


def critical_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "CRITICAL" in line]


@pytest.mark.parametrize("server", [Serve({"FAKE_LOAD_DELAY_S": "3"}, ready=False)], indirect=True)
def test_not_ready_while_loading_then_ready_then_a_clean_exit(server: ServerProcess) -> None:
    """/health and /transcribe answer 503 + Retry-After while the model loads, then 200; SIGTERM ends it cleanly."""
    first = wait_until(lambda: _get(f"{server.url}/health"), what="the worker's event loop to answer")
    assert first.status_code == 503, first.text
    assert first.json()["status"] == "loading" and first.json()["ready"] is False
    assert first.headers["retry-after"] == "10"
    r = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", wav_of(1))}, timeout=30)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready" and r.headers["retry-after"] == "10"
    server.wait_ready()
    assert httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", wav_of(2))}, timeout=30).status_code == 200
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(60) in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful shutdown
    assert "Application shutdown complete" in server.log()


def _get(url: str) -> httpx.Response | None:
    try:
        return httpx.get(url, timeout=2)
    except httpx.TransportError:
        return None


@pytest.mark.parametrize(
    ("server", "expected"),
    [
        (Serve({"PARAKEET_MAX_BATCH_SIZE": "0"}, ready=False),
         "invalid settings: PARAKEET_MAX_BATCH_SIZE: Input should be greater than or equal to 1 (got '0')"),
        (Serve({"PARAKEET_MAX_BACH_SIZE": "16"}, ready=False),
         "invalid settings: unknown setting PARAKEET_MAX_BACH_SIZE (did you mean PARAKEET_MAX_BATCH_SIZE?)"),
    ],
    indirect=["server"],
    ids=["bad-value", "typo"],
)  # fmt: skip
def test_a_worker_with_bad_settings_stops_with_one_line(server: ServerProcess, expected: str) -> None:
    """Before: every long upload was a 500 (a bad value), or a typo was silently ignored. Now the worker says why
    and exits with uvicorn's start-up-failure code, so the supervisor does not respawn it."""
    code = server.proc.wait(60)
    log = server.log()
    assert code == 3, log
    (line,) = critical_lines(log)
    assert line.endswith(expected)
    assert "Traceback" not in log


@pytest.fixture
def gpu_taken(tmp_path: Path) -> Iterator[Holder]:
    """The only (pretend) GPU's lock, held by another process before the server starts (`server` uses
    tmp_path/locks)."""
    holder = Holder(tmp_path / "locks", 1)
    assert holder.gpu_id == 0
    yield holder
    holder.stop()


# uvicorn's supervisor pings each worker with this timeout; a worker that exits while a ping is out makes the
# supervisor wait the whole timeout before it notices (the pipe's other end stays open in the parent), so keep it
# short here and wait well past it.
@pytest.mark.parametrize(
    "server", [Serve({"FAKE_GPU_COUNT": "1"}, workers=2, ready=False, healthcheck_timeout_s=10)], indirect=True
)
def test_a_worker_exits_with_one_line_when_every_gpu_is_taken(
    gpu_taken: Holder, server: ServerProcess, tmp_path: Path
) -> None:
    """A worker that finds all GPUs taken exits (code 3, uvicorn stops: no restart loop) and says why."""
    code = server.proc.wait(120)
    log = server.log()
    assert code == 0  # the supervisor stopped by itself: uvicorn's parent exits 0 after "failed to start"
    lines = [line for line in log.splitlines() if "no free GPU" in line]
    assert len(lines) >= 1, log
    assert str(tmp_path / "locks") in lines[0] and "all 1 GPU lock(s)" in lines[0]
    assert f"pid {gpu_taken.proc.pid}" in lines[0]
    assert "Traceback" not in log
    assert log.count("Started server process") <= 2  # the supervisor did not respawn workers
    assert "failed to start, stopping the parent process" in log


# What inference.load_asr_model says when the hub is offline (its wording: tests/unit/test_inference.py).
LOAD_FAILURE = (
    "could not load model 'nvidia/parakeet-tdt-0.6b-v3': the hub is disabled (HF_HUB_OFFLINE=1) and the "
    "model is not in the local Hugging Face cache. Ways out: set PARAKEET_MODEL to a local .nemo file"
)


@pytest.mark.parametrize("server", [Serve({"FAKE_LOAD_ERROR": LOAD_FAILURE, "FAKE_LOAD_DELAY_S": "0.5"},
                                          ready=False)], indirect=True)  # fmt: skip
def test_a_worker_whose_model_cannot_load_stops_with_one_message(server: ServerProcess) -> None:
    """The model load fails (any ModelLoadError): the worker logs the one message, exits with uvicorn's start-up-failure
    code, and its decoder subprocesses (started before the load) die with it."""
    decoders = wait_until(  # single-process uvicorn: the worker is server.proc; its decoders start at once
        lambda: child_pids(server.proc.pid) or server.proc.poll() is not None, 30, "the decoder subprocesses"
    )
    assert server.proc.wait(60) == 3  # uvicorn's STARTUP_FAILURE
    assert isinstance(decoders, list) and not wait_gone(decoders)  # its decoder subprocesses died with it
    log = server.log()
    (line,) = critical_lines(log)
    assert line.endswith(LOAD_FAILURE)
    assert "Traceback" not in log


@pytest.mark.parametrize(
    "server", [Serve({"FAKE_GPU_COUNT": "1", "PARAKEET_WORKERS_PER_GPU": "2"}, workers=2)], indirect=True
)
def test_two_workers_share_one_gpu_by_slots_and_a_replacement_takes_the_dead_ones_slot(
    server: ServerProcess, tmp_path: Path
) -> None:
    """PARAKEET_WORKERS_PER_GPU=2 on one (pretended) GPU: the two workers hold GPU 0's two slots, /health says which;
    SIGKILL the slot-1 worker and uvicorn's replacement claims slot 1 again."""

    def slots(want: int) -> dict[int, tuple[int, int]]:
        seen: dict[int, tuple[int, int]] = {}
        for _ in range(400):  # a new connection each: the kernel spreads them over the workers
            r = httpx.get(f"{server.url}/health", timeout=5)
            if r.status_code == 200:
                body = r.json()
                seen[body["worker_pid"]] = (body["gpu_id"], body["gpu_slot"])
            if len(seen) >= want:
                break
        return seen

    first = slots(2)
    assert sorted(first.values()) == [(0, 0), (0, 1)], first
    victim = next(pid for pid, place in first.items() if place == (0, 1))
    assert "claimed GPU 0 slot 1 of 2" in server.log()
    os.kill(victim, signal.SIGKILL)
    assert not wait_gone([victim])
    server.wait_ready(workers=2, timeout_s=180)  # uvicorn's supervisor notices the death by polling
    after = slots(2)
    replacement = [pid for pid in after if pid not in first]
    assert len(replacement) == 1 and after[replacement[0]] == (0, 1), after


def test_sighup_re_reads_the_phrase_file_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    """An edit that leaves the file's size and mtime as they were is not seen by the per-request check; SIGHUP to the
    (single) worker re-reads it at once, and the process goes on serving (SIGHUP's default would end it)."""
    from helpers import start_server

    f = tmp_path / "phrases.txt"
    f.write_text("kitchen light\n")
    stamp = f.stat()
    server = start_server(tmp_path, {"PARAKEET_KEYWORDS_FILE": str(f), "PARAKEET_LOG_LEVEL": "INFO"}, fake=True)
    try:
        server.wait_ready()
        f.write_text("garage doors\n")  # same size
        os.utime(f, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "server-wide key phrases reloaded: 1" in server.log(), 30, "the reload's log line")
        r = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", wav_of(1, 1.0))}, timeout=30)
        assert r.status_code == 200 and server.proc.poll() is None
    finally:
        assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful shutdown
    assert "Application shutdown complete" in server.log()
