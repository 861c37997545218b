"""A full disk under the upload spool (simulated ENOSPC while Starlette spools a big part), in-process: 507
`insufficient_storage`, no path in the message, and the worker serves the next request."""

from __future__ import annotations

import errno
import tempfile

import httpx
import pytest

from helpers import app_client, run, wav_of


class _FullDisk(tempfile.SpooledTemporaryFile):  # type: ignore[type-arg]
    """A spool whose rollover to disk fails as a full disk does."""

    def rollover(self) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_under_the_upload_spool_is_507_and_the_worker_lives(monkeypatch: pytest.MonkeyPatch) -> None:
    import starlette.formparsers

    async def main() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with app_client() as client:
            monkeypatch.setattr(starlette.formparsers, "SpooledTemporaryFile", _FullDisk)
            big = await client.post("/transcribe", files={"file": ("a.wav", wav_of(1, 40.0))})  # 2.5 MB: spooled
            monkeypatch.undo()
            after = await client.post("/transcribe", files={"file": ("a.wav", wav_of(2, 40.0))})
            return big, after, await client.get("/health")

    big, after, health = run(main())
    assert big.status_code == 507 and big.json()["error"]["code"] == "insufficient_storage"
    assert "no space left" in big.json()["error"]["message"] and "/" not in big.json()["error"]["message"]
    assert after.status_code == 200 and health.status_code == 200
