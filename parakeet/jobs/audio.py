"""Where a job's audio is kept from its submit until its retention ends (README "Jobs"): with SQLite, a file under
PARAKEET_DATA_DIR/audio (the workers of one host share the folder); with PostgreSQL, in the database itself, in
chunks of `CHUNK_BYTES` (the `job_audio` table), so that hosts share nothing but the database. Both are written a
chunk at a time as the upload is read (never whole in memory) and read back a chunk at a time. Calls block: the
server runs them in a thread (`asyncio.to_thread`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from parakeet.jobs.store import JobStore

CHUNK_BYTES = 1024 * 1024  # a row of job_audio, and the piece an upload is copied in
DB_PREFIX = "db:"  # the `audio_path` of audio kept in the database: "db:<job id>"


class AudioWriter(Protocol):
    """One job's audio being written: `write` each piece in order, then `commit` (or `abort`)."""

    def write(self, piece: bytes) -> None:
        """Append `piece` (at most `CHUNK_BYTES` is best; larger ones are split)."""
        ...

    def commit(self) -> str:
        """Make the audio durable and return its location (a job row's `audio_path`)."""
        ...

    def abort(self) -> None:
        """Forget what was written, committed or not (the submit failed). Idempotent."""
        ...


class JobAudio(Protocol):
    """A job audio store: `writer(job_id)` for a submit, `read` for a run, `delete` at expiry or cancel."""

    def writer(self, job_id: str) -> AudioWriter: ...

    def read(self, location: str) -> bytes:
        """The audio at `location`, assembled from its chunks.

        Raises:
            OSError: it is gone or unreadable.
        """
        ...

    def delete(self, location: str) -> None:
        """Remove it (nothing if it is already gone)."""
        ...


class FileWriter:
    """Writes `<dir>/<job id>.part`, fsync'd and renamed to `.audio` on commit (a crash leaves no half file under
    the final name)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_suffix(".part")
        self._file = open(self._tmp, "wb")  # noqa: SIM115 - held open across writes, closed by commit/abort

    def write(self, piece: bytes) -> None:
        self._file.write(piece)

    def commit(self) -> str:
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._tmp.replace(self.path)
        return str(self.path)

    def abort(self) -> None:
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        self.path.unlink(missing_ok=True)  # (committed, then the row could not be stored)


class FileJobAudio:
    """Audio files under `data_dir/audio` (SQLite: one host's workers share the folder)."""

    def __init__(self, data_dir: Path) -> None:
        self.folder = data_dir / "audio"

    def writer(self, job_id: str) -> AudioWriter:
        return FileWriter(self.folder / f"{job_id}.audio")

    def read(self, location: str) -> bytes:
        return Path(location).read_bytes()

    def delete(self, location: str) -> None:
        Path(location).unlink(missing_ok=True)


class DatabaseWriter:
    """Inserts each `CHUNK_BYTES` piece as a row as it comes (one transaction a row; `commit` has nothing left to
    do but say where it is, `abort` deletes the rows)."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self.store, self.job_id, self._seq = store, job_id, 0

    def write(self, piece: bytes) -> None:
        for at in range(0, len(piece), CHUNK_BYTES):
            part = piece[at : at + CHUNK_BYTES]
            self.store.put_audio_chunk(self.job_id, self._seq, part)
            self._seq += 1

    def commit(self) -> str:
        return DB_PREFIX + self.job_id

    def abort(self) -> None:
        self.store.delete_audio(self.job_id)


class DatabaseJobAudio:
    """Audio in the jobs database's `job_audio` table (PostgreSQL: every host reads every job's audio from it)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store

    def writer(self, job_id: str) -> AudioWriter:
        return DatabaseWriter(self.store, job_id)

    def read(self, location: str) -> bytes:
        job_id = location.removeprefix(DB_PREFIX)
        out = bytearray()
        for piece in self.store.audio_chunks(job_id):
            out += piece
        if not out and not self.store.has_audio(job_id):
            raise FileNotFoundError(f"no audio is stored for {job_id}")
        return bytes(out)

    def delete(self, location: str) -> None:
        self.store.delete_audio(location.removeprefix(DB_PREFIX))


def job_audio_for(store: JobStore, data_dir: Path) -> JobAudio:
    """The audio store that goes with `store`'s database: PostgreSQL keeps audio in itself, SQLite in files."""
    return DatabaseJobAudio(store) if store.kind == "postgresql" else FileJobAudio(data_dir)
