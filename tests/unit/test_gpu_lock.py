"""gpu_lock across real processes (plain Python holders, no server): distinct GPUs, exhaustion, release on SIGKILL,
k slots per GPU (spread over the GPUs first, never more than k on one, a killed holder's slot reclaimed), stale
files (the worker's own behaviour when every GPU is taken: tests/e2e/test_worker_start.py)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import gpu_lock

from helpers import Holder


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for h in started:
        h.stop()


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
    assert info.value.holders == {(0, 0): os.getpid()}
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


def test_gpu_lock_slots_spread_over_gpus_first_and_cap_each_gpu(tmp_path: Path, holders: list[Holder]) -> None:
    holders.extend(Holder(tmp_path, 2, slots=3) for _ in range(6))
    assert [(h.gpu_id, h.slot) for h in holders] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    for h in holders:
        assert gpu_lock.read_holder_pid(gpu_lock.lock_path(tmp_path, h.gpu_id, h.slot)) == h.proc.pid
    assert gpu_lock.lock_path(tmp_path, 1, 0).name == "gpu1.lock"  # slot 0 keeps the one-per-GPU file name
    assert gpu_lock.lock_path(tmp_path, 1, 2).name == "gpu1.slot2.lock"
    seventh = Holder(tmp_path, 2, slots=3)
    holders.append(seventh)
    assert seventh.proc.wait(10) == 3
    assert "all 6 GPU lock(s)" in seventh.line and "(2 GPU(s) x 3 per GPU)" in seventh.line
    assert f"gpu1 slot 2: pid {holders[5].proc.pid}" in seventh.line


def test_gpu_lock_a_killed_holders_replacement_reclaims_its_slot(tmp_path: Path, holders: list[Holder]) -> None:
    holders.extend(Holder(tmp_path, 2, slots=2) for _ in range(4))
    victim = holders[3]  # GPU 1, slot 1
    assert (victim.gpu_id, victim.slot) == (1, 1)
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    replacement = Holder(tmp_path, 2, slots=2)
    holders.append(replacement)
    assert (replacement.gpu_id, replacement.slot) == (1, 1)
    assert gpu_lock.read_holder_pid(gpu_lock.lock_path(tmp_path, 1, 1)) == replacement.proc.pid


def test_gpu_lock_rejects_zero_slots(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="slots_per_gpu must be >= 1"):
        gpu_lock.claim_gpu(tmp_path, 1, 0)
