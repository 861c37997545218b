"""gpu_lock across real processes: distinct GPUs, exhaustion, release on SIGKILL, stale files, and the
worker's own behaviour when every GPU is taken."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import gpu_lock

from helpers import ROOT, start_server

HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
import gpu_lock
try:
    claim = gpu_lock.claim_gpu(__import__("pathlib").Path({lock_dir!r}), {count})
except gpu_lock.NoFreeGpuError as exc:
    print("ERROR", exc, flush=True)
    sys.exit(3)
print("CLAIMED", claim.gpu_id, flush=True)
time.sleep(120)
"""


class Holder:
    def __init__(self, lock_dir: Path, count: int) -> None:
        code = HOLDER.format(root=str(ROOT), lock_dir=str(lock_dir), count=count)
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.line = self.proc.stdout.readline().strip()

    @property
    def gpu_id(self) -> int:
        assert self.line.startswith("CLAIMED"), self.line
        return int(self.line.split()[1])


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for h in started:
        if h.proc.poll() is None:
            h.proc.kill()
        h.proc.wait()


def test_gpu_lock_distinct_gpus_across_processes(tmp_path: Path, holders: list[Holder]) -> None:
    holders.extend(Holder(tmp_path, 3) for _ in range(3))
    assert sorted(h.gpu_id for h in holders) == [0, 1, 2]
    for h in holders:
        assert gpu_lock.read_holder_pid(gpu_lock.lock_path(tmp_path, h.gpu_id)) == h.proc.pid


def test_gpu_lock_exhaustion_names_dir_count_and_pids(tmp_path: Path, holders: list[Holder]) -> None:
    holders.extend(Holder(tmp_path, 2) for _ in range(2))
    third = Holder(tmp_path, 2)
    holders.append(third)
    assert third.proc.wait(10) == 3
    assert third.line.startswith("ERROR no free GPU")
    assert str(tmp_path) in third.line and "all 2 GPU lock(s)" in third.line
    for h in holders[:2]:
        assert f"pid {h.proc.pid}" in third.line


def test_gpu_lock_in_process_second_claim_is_refused(tmp_path: Path) -> None:
    claim = gpu_lock.claim_gpu(tmp_path, 1)
    with pytest.raises(gpu_lock.NoFreeGpuError) as info:
        gpu_lock.claim_gpu(tmp_path, 1)
    assert info.value.holders == {0: os.getpid()}
    claim.release()
    gpu_lock.claim_gpu(tmp_path, 1).release()


def test_gpu_lock_released_after_sigkill(tmp_path: Path, holders: list[Holder]) -> None:
    first = Holder(tmp_path, 1)
    holders.append(first)
    assert first.gpu_id == 0
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    second = Holder(tmp_path, 1)
    holders.append(second)
    assert second.gpu_id == 0
    assert gpu_lock.read_holder_pid(gpu_lock.lock_path(tmp_path, 0)) == second.proc.pid


def test_gpu_lock_stale_file_from_crashed_run_does_not_block(tmp_path: Path) -> None:
    for i in range(2):
        gpu_lock.lock_path(tmp_path, i).write_text("999999\n")  # pids of a run that is long gone
    claim = gpu_lock.claim_gpu(tmp_path, 2)
    assert claim.gpu_id == 0
    assert gpu_lock.read_holder_pid(claim.path) == os.getpid()
    claim.release()


def test_gpu_lock_rejects_zero_gpus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gpu_count must be >= 1"):
        gpu_lock.claim_gpu(tmp_path, 0)


def test_worker_exits_with_one_line_when_every_gpu_is_taken(tmp_path: Path, holders: list[Holder]) -> None:
    """A worker that finds all GPUs taken exits (code 3, uvicorn stops: no restart loop) and says why."""
    lock_dir = tmp_path / "locks"
    holder = Holder(lock_dir, 1)
    holders.append(holder)
    assert holder.gpu_id == 0
    # uvicorn's supervisor pings each worker with this timeout; a worker that exits while a ping is out makes
    # the supervisor wait the whole timeout before it notices (the pipe's other end stays open in the parent),
    # so keep it short here and wait well past it.
    server = start_server(
        tmp_path, {"PARAKEET_GPU_COUNT": "1", "PARAKEET_DEVICE": "auto"}, workers=2, healthcheck_timeout_s=10
    )
    try:
        code = server.proc.wait(120)
    finally:
        server.stop()
    log = server.log()
    assert code == 0  # the supervisor stopped by itself: uvicorn's parent exits 0 after "failed to start"
    lines = [line for line in log.splitlines() if "no free GPU" in line]
    assert len(lines) >= 1, log
    assert str(lock_dir) in lines[0] and "all 1 GPU lock(s)" in lines[0] and f"pid {holder.proc.pid}" in lines[0]
    assert "Traceback" not in log
    assert log.count("Started server process") <= 2  # the supervisor did not respawn workers
    assert "failed to start, stopping the parent process" in log
