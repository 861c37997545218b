"""Jobs on PostgreSQL keep their audio in the database (parakeet/jobs/audio.py): a job's upload is written there in
1 MiB rows as it is read, never whole in the server's memory, nothing on the data directory's disk, and a worker
transcribes it from there. In-process app with the fake engine and a throwaway PostgreSQL (tests/helpers.py)."""

from __future__ import annotations

import hashlib
import math
import tracemalloc
import uuid
from pathlib import Path

import psycopg

from parakeet.jobs.audio import CHUNK_BYTES

from helpers import app_client, run, until, wav_of


def fresh_database(postgres_url: str) -> str:
    name = f"t_{uuid.uuid4().hex}"
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    return postgres_url.rsplit("/", 1)[0] + "/" + name


def test_a_jobs_upload_goes_to_postgresql_in_chunks_as_it_is_read_not_whole_in_memory(
    tmp_path: Path, postgres_url: str
) -> None:
    url = fresh_database(postgres_url)
    path = tmp_path / "long.wav"
    path.write_bytes(wav_of(5, 200.0))  # a float32 WAV: 12.8 MB
    size = path.stat().st_size

    async def main() -> tuple[int, str, int]:
        # jobs_poll_s: the runner (idle at start) does not look again during the submit, so only the upload is measured
        async with app_client(jobs_database_url=url, data_dir=tmp_path / "data", jobs_poll_s=3600) as client:
            tracemalloc.start()
            try:
                with open(path, "rb") as f:  # httpx streams the file part from disk
                    r = await client.post("/v1/jobs", files={"file": ("long.wav", f)})
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert r.status_code == 202, r.text
            return r.status_code, r.json()["id"], peak

    _, job_id, peak = run(main())
    with psycopg.connect(url) as db:
        rows = db.execute(
            "SELECT seq, length(data) FROM job_audio WHERE job_id = %s ORDER BY seq", (job_id,)
        ).fetchall()
        digest = hashlib.sha256()
        for seq, _ in rows:
            (data,) = db.execute("SELECT data FROM job_audio WHERE job_id = %s AND seq = %s", (job_id, seq)).fetchone()
            digest.update(data)
        (location,) = db.execute("SELECT audio_path FROM jobs WHERE id = %s", (job_id,)).fetchone()
    assert [seq for seq, _ in rows] == list(range(math.ceil(size / CHUNK_BYTES)))
    assert all(n <= CHUNK_BYTES for _, n in rows) and sum(n for _, n in rows) == size
    assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()
    assert location == f"db:{job_id}"
    assert not list((tmp_path / "data").rglob("*.audio"))  # nothing on disk
    print(f"upload of {size / 1e6:.1f} MB: peak traced memory {peak / 1e6:.1f} MB")
    assert peak < size / 2, (peak, size)


def test_a_job_on_postgresql_is_transcribed_from_the_audio_in_the_database(tmp_path: Path, postgres_url: str) -> None:
    url = fresh_database(postgres_url)

    async def main() -> None:
        async with app_client(jobs_database_url=url, data_dir=tmp_path / "data", jobs_poll_s=0.05) as client:
            r = await client.post("/v1/jobs", files={"file": ("a.wav", wav_of(42, 3.0))})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]

            async def done() -> bool:
                return bool((await client.get(f"/v1/jobs/{job_id}")).json()["status"] == "succeeded")

            await until(done, timeout_s=60, what="the job to succeed")
            result = (await client.get(f"/v1/jobs/{job_id}/result")).json()
            assert result["text"] == f"42 {3 * 16000}"  # the fake engine's text: the tag and every sample

    run(main())
