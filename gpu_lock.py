"""A (GPU, slot) per worker process, claimed with an exclusive `flock` on one lock file per slot.

With k workers per GPU (`PARAKEET_WORKERS_PER_GPU`, Triton's "model instance groups": two instances on one GPU
overlap one's host work with the other's GPU work), GPU i has k lock files: `<lock_dir>/gpu<i>.lock` for slot 0
(the one-worker-per-GPU design's file) and `<lock_dir>/gpu<i>.slot<s>.lock` for slot s >= 1, so no GPU gets more
than k workers. Slots are tried slot-major (every GPU's slot 0, then every GPU's slot 1, ...), so workers spread
over the GPUs before any GPU gets a second one.

The kernel drops an flock when its holder dies (SIGKILL included), so a lock file left by a crashed run
never blocks: the next worker takes it and writes its own pid, and a killed worker's replacement reclaims the
slot it left (every other slot is still held). Lock files are never deleted. This module only claims and reports
locks (stdlib only); it does not select a CUDA device or import torch.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class NoFreeGpuError(RuntimeError):
    """Every slot lock of every GPU in the lock dir is held by a live process.

    Attributes:
        lock_dir: the folder searched.
        gpu_count: how many GPUs were tried.
        slots_per_gpu: slots (workers) per GPU.
        holders: (GPU index, slot) -> pid written by the holder (None if unreadable).
    """

    def __init__(
        self, lock_dir: Path, gpu_count: int, holders: dict[tuple[int, int], int | None], slots_per_gpu: int = 1
    ) -> None:
        self.lock_dir = lock_dir
        self.gpu_count = gpu_count
        self.slots_per_gpu = slots_per_gpu
        self.holders = holders
        held = ", ".join(
            f"gpu{g}{f' slot {s}' if slots_per_gpu > 1 else ''}: pid {pid if pid is not None else '?'}"
            for (g, s), pid in sorted(holders.items())
        )
        n = gpu_count * slots_per_gpu
        super().__init__(
            f"no free GPU: all {n} GPU lock(s) in {lock_dir} are held ({held}); "
            f"start at most {n} worker(s) ({gpu_count} GPU(s) x {slots_per_gpu} per GPU), or stop the holders"
        )


@dataclass
class GpuClaim:
    """A held GPU lock. Keep this object alive for the whole process life: closing the file drops the lock.

    Attributes:
        gpu_id: the claimed GPU index (0-based, in CUDA's visible-device order).
        path: the lock file.
        slot: which of the GPU's worker slots (0-based; 0 with one worker per GPU).
    """

    gpu_id: int
    path: Path
    _file: IO[str] = field(repr=False)
    slot: int = 0

    def release(self) -> None:
        """Drop the lock (also happens at process exit). The file stays, for the next claimant."""
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


def lock_path(lock_dir: Path, gpu_id: int, slot: int = 0) -> Path:
    """The lock file of GPU `gpu_id`'s slot: `<lock_dir>/gpu<gpu_id>.lock` (slot 0), `gpu<gpu_id>.slot<s>.lock`."""
    return lock_dir / (f"gpu{gpu_id}.lock" if slot == 0 else f"gpu{gpu_id}.slot{slot}.lock")


def read_holder_pid(path: Path) -> int | None:
    """The pid written in a lock file, or None if the file is missing, empty or unreadable."""
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def claim_gpu(lock_dir: Path, gpu_count: int, slots_per_gpu: int = 1) -> GpuClaim:
    """Claim the first free (GPU, slot) among `0..gpu_count-1` x `0..slots_per_gpu-1`, slot-major.

    Takes `flock(LOCK_EX | LOCK_NB)` on each lock file in turn (GPU 0 slot 0, GPU 1 slot 0, ..., GPU 0 slot 1,
    ...); on success truncates the file and writes this process's pid into it.

    Args:
        lock_dir: folder of the lock files; created if missing.
        gpu_count: number of GPUs to choose from (>= 1).
        slots_per_gpu: workers allowed per GPU (>= 1).

    Returns:
        The claim; the lock is held as long as the returned object (its open file) lives.

    Raises:
        NoFreeGpuError: every lock is held by another process (or by this one, through another claim).
        ValueError: gpu_count < 1 or slots_per_gpu < 1.
        OSError: the lock dir cannot be created or a lock file cannot be opened.
    """
    if gpu_count < 1:
        raise ValueError(f"gpu_count must be >= 1, got {gpu_count}")
    if slots_per_gpu < 1:
        raise ValueError(f"slots_per_gpu must be >= 1, got {slots_per_gpu}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    holders: dict[tuple[int, int], int | None] = {}
    for slot in range(slots_per_gpu):
        for gpu_id in range(gpu_count):
            path = lock_path(lock_dir, gpu_id, slot)
            f = _try_lock(path)
            if f is None:
                holders[(gpu_id, slot)] = read_holder_pid(path)
                continue
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            return GpuClaim(gpu_id=gpu_id, path=path, _file=f, slot=slot)
    raise NoFreeGpuError(lock_dir, gpu_count, holders, slots_per_gpu)


def _try_lock(path: Path) -> IO[str] | None:
    """The lock file opened and exclusively locked, or None when another open file holds it."""
    # "a+" creates the file without truncating it: a holder's pid stays readable until we own the lock.
    f = open(path, "a+")  # noqa: SIM115 - the file must outlive this function
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        f.close()
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise
        return None
    return f
