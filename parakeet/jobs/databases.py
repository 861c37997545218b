"""The two databases a job store (parakeet.jobs.store) runs on, behind one small interface: SQLite (the
default: one file under PARAKEET_DATA_DIR in WAL mode, shared by the workers of one host; Python's sqlite3) and
PostgreSQL (PARAKEET_JOBS_DATABASE_URL=postgresql://...: many hosts share one queue; psycopg 3). The store writes its
SQL once, with `?` placeholders; each database runs it in its own dialect, creates the schema and keeps its version.

sqlite3: https://docs.python.org/3/library/sqlite3.html ; WAL: https://www.sqlite.org/wal.html
psycopg 3: https://www.psycopg.org/psycopg3/docs/ ; SKIP LOCKED: https://www.postgresql.org/docs/current/sql-select.html
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Protocol

from parakeet.core import errors

SCHEMA_VERSION = 2
# The statements that bring a database of the version before each key to that version ({real}, {int}, {blob}: the
# dialect's types). 2: `result` holds the job's outcome, rendered when read (version 1 held rendered bodies), so a
# job that succeeded under version 1 is queued again (its audio is kept until its retention ends; the run gives the
# same transcript); the `job_audio` table (PostgreSQL keeps the audio itself: parakeet.jobs.audio).
MIGRATIONS = {
    2: ["UPDATE jobs SET status = 'queued', result = NULL, finished_at = NULL, lease_owner = NULL, "
        "lease_expires_at = NULL WHERE status = 'succeeded'",
        "CREATE TABLE IF NOT EXISTS job_audio (job_id TEXT NOT NULL, seq {int} NOT NULL, data {blob} NOT NULL, "
        "PRIMARY KEY (job_id, seq))"],
}  # fmt: skip

# {real} / {int} / {blob}: the column types of each dialect.
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    created_at {real} NOT NULL,
    started_at {real},
    finished_at {real},
    options TEXT NOT NULL,
    metadata TEXT,
    idempotency_key TEXT UNIQUE,
    audio_path TEXT NOT NULL,
    audio_bytes {int} NOT NULL,
    lease_owner TEXT,
    lease_expires_at {real},
    attempts {int} NOT NULL DEFAULT 0,
    duration_s {real},
    cancel_requested {int} NOT NULL DEFAULT 0,
    error TEXT,
    result TEXT,
    webhook_url TEXT,
    webhook_state TEXT,
    webhook_next_at {real},
    webhook_attempts {int} NOT NULL DEFAULT 0,
    chunks_done {int} NOT NULL DEFAULT 0,
    audio_s_done {real} NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_webhook ON jobs (webhook_state, webhook_next_at);
CREATE TABLE IF NOT EXISTS job_chunks (
    job_id TEXT NOT NULL,
    idx {int} NOT NULL,
    start_sample {int} NOT NULL,
    end_sample {int} NOT NULL,
    transcript TEXT NOT NULL,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE IF NOT EXISTS job_audio (
    job_id TEXT NOT NULL,
    seq {int} NOT NULL,
    data {blob} NOT NULL,
    PRIMARY KEY (job_id, seq)
);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    job_id TEXT NOT NULL,
    attempt {int} NOT NULL,
    at {real} NOT NULL,
    status_code {int},
    error TEXT,
    PRIMARY KEY (job_id, attempt)
);
"""


class Database(Protocol):
    """One connection to the jobs database. Not thread-safe: the store serializes its calls.

    Attributes:
        name: what errors and logs call it (a path, or a URL without its password).
        skip_locked: appended to the claim's SELECT so that concurrent claimers skip each other's rows.
    """

    name: str
    kind: str  # "sqlite" or "postgresql"
    skip_locked: str
    driver_errors: tuple[type[Exception], ...]  # what its driver raises when the database fails

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        """Run one statement (`?` placeholders); returns a cursor (fetchone, fetchall, rowcount)."""
        ...

    def begin_write(self) -> None:
        """Open a write transaction that holds its write lock from the start."""
        ...

    def close(self) -> None: ...


def migrations_after(version: int, **types: str) -> list[str]:
    """The statements that bring a database at `version` (>= 1) to SCHEMA_VERSION, in order, in the dialect of
    `types` (real=, int=, blob=)."""
    return [sql.format(**types) for v in range(version + 1, SCHEMA_VERSION + 1) for sql in MIGRATIONS.get(v, [])]


def _check_version(version: int, name: str) -> None:
    if version > SCHEMA_VERSION:
        raise errors.InvalidSettings(
            f"the jobs database {name} has schema version {version}; this server knows {SCHEMA_VERSION}"
        )


class SqliteDatabase:
    """SQLite in WAL mode, synchronous=FULL (a job answered with 202 survives a power cut); the version in
    `PRAGMA user_version`.

    Raises:
        InvalidSettings: the file cannot be opened or created, or its schema is newer than this server's.
    """

    kind = "sqlite"
    TYPES = {"real": "REAL", "int": "INTEGER", "blob": "BLOB"}
    skip_locked = ""  # BEGIN IMMEDIATE already makes writers take turns
    driver_errors: tuple[type[Exception], ...] = (sqlite3.Error,)

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            _check_version(version, self.name)
            if version == 0:  # (executescript commits by itself; IF NOT EXISTS makes two workers' race harmless)
                ddl = SCHEMA.format(**self.TYPES)
                self._db.executescript(ddl + f"PRAGMA user_version = {SCHEMA_VERSION};")
            elif version < SCHEMA_VERSION:
                self._db.execute("BEGIN IMMEDIATE")
                if int(self._db.execute("PRAGMA user_version").fetchone()[0]) < SCHEMA_VERSION:  # not another's
                    for statement in migrations_after(version, **self.TYPES):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
        except (OSError, sqlite3.Error) as exc:
            raise errors.InvalidSettings(f"cannot open the jobs database {path}: {exc}") from exc

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._db.execute(sql, params)

    def begin_write(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def close(self) -> None:
        self._db.close()


class PostgresDatabase:
    """PostgreSQL through psycopg 3 (autocommit, explicit transactions); the schema created under an advisory lock
    (workers starting together), its version in the table `parakeet_schema`.

    Raises:
        InvalidSettings: cannot connect, or the schema is newer than this server's.
    """

    kind = "postgresql"
    TYPES = {"real": "DOUBLE PRECISION", "int": "BIGINT", "blob": "BYTEA"}
    skip_locked = " FOR UPDATE SKIP LOCKED"
    _SCHEMA_LOCK = 0x7061726B  # pg_advisory_lock key ("park")

    def __init__(self, url: str) -> None:
        import psycopg

        self.driver_errors: tuple[type[Exception], ...] = (psycopg.Error,)
        self.name = _without_password(url)
        try:
            self._db = psycopg.connect(url, autocommit=True, connect_timeout=10)
            self._db.execute("SELECT pg_advisory_lock(%s)", (self._SCHEMA_LOCK,))
            try:
                self._db.execute("CREATE TABLE IF NOT EXISTS parakeet_schema (version INTEGER NOT NULL)")
                row = self._db.execute("SELECT MAX(version) FROM parakeet_schema").fetchone()
                version = int(row[0]) if row and row[0] is not None else 0
                _check_version(version, self.name)
                if version == 0:
                    self._db.execute(SCHEMA.format(**self.TYPES))
                if version < SCHEMA_VERSION:  # (under the advisory lock: one server migrates)
                    for statement in migrations_after(version, **self.TYPES) if version else ():
                        self._db.execute(statement)
                    self._db.execute("INSERT INTO parakeet_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
            finally:
                self._db.execute("SELECT pg_advisory_unlock(%s)", (self._SCHEMA_LOCK,))
        except psycopg.Error as exc:
            raise errors.InvalidSettings(f"cannot open the jobs database {self.name}: {exc}") from exc

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        return self._db.execute(sql.replace("?", "%s"), params)

    def begin_write(self) -> None:
        self._db.execute("BEGIN")

    def close(self) -> None:
        self._db.close()


def _without_password(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def open_database(database_url: str | None, data_dir: Path) -> SqliteDatabase | PostgresDatabase:
    """PostgreSQL when `database_url` is postgresql:// (or postgres://), else SQLite at data_dir/jobs.sqlite3.

    Raises:
        InvalidSettings: another scheme, or the database cannot be opened.
    """
    if database_url is None:
        return SqliteDatabase(data_dir / "jobs.sqlite3")
    if database_url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(database_url)
    raise errors.InvalidSettings(
        f"PARAKEET_JOBS_DATABASE_URL must be postgresql://... (got {_without_password(database_url)[:60]!r}); "
        "unset, jobs use SQLite in PARAKEET_DATA_DIR"
    )
