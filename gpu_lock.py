"""One GPU per worker process, claimed with an exclusive `flock` on `<lock_dir>/gpu<i>.lock`.

The kernel drops an flock when its holder dies (SIGKILL included), so a lock file left by a crashed run
never blocks: the next worker takes it and writes its own pid. Lock files are never deleted. This module
only claims and reports locks (stdlib only); it does not select a CUDA device or import torch.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


class NoFreeGpuError(RuntimeError):
    """Every `gpu<i>.lock` in the lock dir is held by a live process.

    Attributes:
        lock_dir: the folder searched.
        gpu_count: how many GPUs (lock files) were tried.
        holders: GPU index -> pid written by the holder (None if unreadable).
    """

    def __init__(self, lock_dir: Path, gpu_count: int, holders: dict[int, int | None]) -> None:
        self.lock_dir = lock_dir
        self.gpu_count = gpu_count
        self.holders = holders
        held = ", ".join(f"gpu{i}: pid {pid if pid is not None else '?'}" for i, pid in sorted(holders.items()))
        super().__init__(
            f"no free GPU: all {gpu_count} GPU lock(s) in {lock_dir} are held ({held}); "
            f"start at most {gpu_count} worker(s), or stop the holders"
        )


@dataclass
class GpuClaim:
    """A held GPU lock. Keep this object alive for the whole process life: closing the file drops the lock.

    Attributes:
        gpu_id: the claimed GPU index (0-based, in CUDA's visible-device order).
        path: the lock file.
    """

    gpu_id: int
    path: Path
    _file: IO[str] = field(repr=False)

    def release(self) -> None:
        """Drop the lock (also happens at process exit). The file stays, for the next claimant."""
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()


def lock_path(lock_dir: Path, gpu_id: int) -> Path:
    """The lock file of GPU `gpu_id`: `<lock_dir>/gpu<gpu_id>.lock`."""
    return lock_dir / f"gpu{gpu_id}.lock"


def read_holder_pid(path: Path) -> int | None:
    """The pid written in a lock file, or None if the file is missing, empty or unreadable."""
    try:
        text = path.read_text().strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None


def claim_gpu(lock_dir: Path, gpu_count: int) -> GpuClaim:
    """Claim the lowest-numbered free GPU among `0..gpu_count-1`.

    Takes `flock(LOCK_EX | LOCK_NB)` on each lock file in turn; on success truncates the file and writes
    this process's pid into it.

    Args:
        lock_dir: folder of the lock files; created if missing.
        gpu_count: number of GPUs to choose from (>= 1).

    Returns:
        The claim; the lock is held as long as the returned object (its open file) lives.

    Raises:
        NoFreeGpuError: every lock is held by another process (or by this one, through another claim).
        ValueError: gpu_count < 1.
        OSError: the lock dir cannot be created or a lock file cannot be opened.
    """
    if gpu_count < 1:
        raise ValueError(f"gpu_count must be >= 1, got {gpu_count}")
    lock_dir.mkdir(parents=True, exist_ok=True)
    holders: dict[int, int | None] = {}
    for gpu_id in range(gpu_count):
        path = lock_path(lock_dir, gpu_id)
        # "a+" creates the file without truncating it: a holder's pid stays readable until we own the lock.
        f = open(path, "a+")  # noqa: SIM115 - the file must outlive this function
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.close()
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holders[gpu_id] = read_holder_pid(path)
            continue
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        return GpuClaim(gpu_id=gpu_id, path=path, _file=f)
    raise NoFreeGpuError(lock_dir, gpu_count, holders)
