"""Hostile clients on the wire, against a real uvicorn worker on loopback (fake engine): slow and stalled uploads
cannot lock others out (uploads in progress have their own cap, separate from the GPU queue) and are cut off with
408; too many uploads at once get 429 before their bodies are read. Bounded in count and time."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers import ServerProcess, running_fake_server, wav_of

HEAD = (
    b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
    b"Content-Length: 100000\r\n\r\n"
)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    body = await reader.readexactly(length)
    return int(head.split(b" ", 2)[1]), body


async def open_upload(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*url.removeprefix("http://").split(":"))
    writer.write(HEAD + b"--b\r\n")
    await writer.drain()
    return reader, writer


@pytest.fixture(scope="module")
def patient_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default queue (128) and upload cap (512); body limits long enough that trickles stay open during the test."""
    env = {"PARAKEET_BODY_GRACE_S": "60", "PARAKEET_BODY_IDLE_TIMEOUT_S": "60"}
    with running_fake_server(tmp_path_factory.mktemp("patient"), env) as server:
        yield server


def test_140_trickling_uploads_do_not_lock_out_a_normal_request(patient_server: ServerProcess) -> None:
    """The denial of service of issue 13: 140 connections that send headers and then a byte a second used to take
    all 128 places of the GPU queue. Uploads now wait in their own (larger) pool."""
    url = patient_server.url

    async def main() -> tuple[int, int, dict[str, int]]:
        conns = [await open_upload(url) for _ in range(140)]
        try:
            for _ in range(2):  # keep trickling: one byte per connection per second
                for _, writer in conns:
                    writer.write(b"x")
                await asyncio.sleep(1.0)
            async with httpx.AsyncClient(timeout=30) as client:
                health = await client.get(f"{url}/health")
                normal = await client.post(f"{url}/transcribe", files={"file": ("a.wav", wav_of(3))})
            return health.status_code, normal.status_code, health.json()
        finally:
            for _, writer in conns:
                writer.close()

    health_status, normal_status, health = asyncio.run(main())
    assert (health_status, normal_status) == (200, 200)
    assert health["uploads_in_progress"] == 140 and health["queued_requests"] == 0


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {
        "PARAKEET_BODY_IDLE_TIMEOUT_S": "1", "PARAKEET_BODY_GRACE_S": "1", "PARAKEET_BODY_MIN_RATE_BYTES_S": "500",
        "PARAKEET_MAX_UPLOADS_IN_PROGRESS": "3",
    }  # fmt: skip
    with running_fake_server(tmp_path_factory.mktemp("strict"), env) as server:
        yield server


def test_a_stalled_body_gets_408_and_frees_its_place(strict_server: ServerProcess) -> None:
    async def main() -> tuple[int, bytes, int]:
        reader, writer = await open_upload(strict_server.url)
        status, body = await asyncio.wait_for(read_response(reader), 30)  # the server cuts it off, not the test
        writer.close()
        async with httpx.AsyncClient(timeout=30) as client:
            health = (await client.get(f"{strict_server.url}/health")).json()
        return status, body, health["uploads_in_progress"]

    status, body, uploading = asyncio.run(main())
    assert status == 408 and b'"code":"request_timeout"' in body and b"sent nothing for 1 s" in body
    assert uploading == 0


def test_a_body_slower_than_the_minimum_rate_gets_408(strict_server: ServerProcess) -> None:
    async def main() -> tuple[int, bytes]:
        reader, writer = await open_upload(strict_server.url)
        response = asyncio.ensure_future(read_response(reader))
        for _ in range(100):  # 10 bytes/s, under the 500 bytes/s minimum, never idle for 1 s
            if response.done():
                break
            writer.write(b"y")
            await asyncio.sleep(0.1)
        result = await asyncio.wait_for(response, 30)
        writer.close()
        return result

    status, body = asyncio.run(main())
    assert status == 408 and b"below the minimum of 500 bytes/s" in body


def test_uploads_over_the_cap_get_429_before_their_bodies_are_read(strict_server: ServerProcess) -> None:
    async def main() -> tuple[int, bytes]:
        held = [await open_upload(strict_server.url) for _ in range(3)]
        await asyncio.sleep(0.3)
        reader, writer = await open_upload(strict_server.url)
        result = await asyncio.wait_for(read_response(reader), 30)
        for _, w in [*held, (reader, writer)]:
            w.close()
        return result

    status, body = asyncio.run(main())
    assert status == 429 and b'"code":"uploads_full"' in body and b"the limit is 3" in body


def test_upload_limits_do_not_touch_a_normal_upload(strict_server: ServerProcess, tmp_path: Path) -> None:
    r = httpx.post(f"{strict_server.url}/transcribe", files={"file": ("a.wav", wav_of(9, 20.0))}, timeout=30)
    assert r.status_code == 200, r.text


def test_memory_budget_refuses_audio_past_it_and_frees_it_after() -> None:
    """PARAKEET_MAX_INFLIGHT_AUDIO_BYTES: two 40 s uploads (2.56 MB each, float32) are held while the engine is
    gated; a third would pass the 6 MB budget and gets 429 `memory_full`; once they are answered, the budget is
    free again and /health counts 0 bytes."""
    import threading

    from fakes import FakeEngine
    from helpers import app_client, run

    engine = FakeEngine(gate=threading.Event())

    async def main() -> tuple[list[int], httpx.Response, dict[str, int], int, int]:
        async with app_client(engine, max_inflight_audio_bytes=6_000_000) as client:
            held = [
                asyncio.ensure_future(client.post("/transcribe", files={"file": ("a.wav", wav_of(i, 40.0))}))
                for i in (1, 2)
            ]
            for _ in range(200):
                health = (await client.get("/health")).json()
                if health["queued_requests"] == 2 and engine.timestamps_asked:
                    break
                await asyncio.sleep(0.02)
            refused = await client.post("/transcribe", files={"file": ("a.wav", wav_of(3, 40.0))})
            assert engine.gate is not None
            engine.gate.set()
            statuses = [(await h).status_code for h in held]
            after = (await client.get("/health")).json()["inflight_audio_bytes"]
            again = (await client.post("/transcribe", files={"file": ("a.wav", wav_of(4, 40.0))})).status_code
            return statuses, refused, health, after, again

    statuses, refused, health, after, again = run(main())
    assert statuses == [200, 200]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "memory_full"
    assert "the budget is 6000000 bytes" in refused.json()["error"]["message"] and "retry-after" in refused.headers
    assert 2 * 40 * 16000 * 4 <= health["inflight_audio_bytes"] <= 6_000_000
    assert after == 0 and again == 200


def test_memory_budget_counts_decoded_audio_not_just_upload_bytes() -> None:
    """A 16-bit upload decodes to twice its bytes (float32): admitted on its Content-Length, it is refused with
    429 `memory_full` when its decoded waveform would pass the budget, before it reaches the GPU queue."""
    import io
    import threading

    import soundfile as sf

    from fakes import FakeEngine, tagged_wave
    from helpers import app_client, run

    engine = FakeEngine(gate=threading.Event())
    buf = io.BytesIO()
    sf.write(buf, tagged_wave(5, 60.0), 16000, format="WAV", subtype="PCM_16")  # 1.92 MB -> 3.84 MB decoded
    pcm16 = buf.getvalue()

    async def main() -> tuple[int, httpx.Response, int]:
        async with app_client(engine, max_inflight_audio_bytes=6_000_000) as client:
            first = asyncio.ensure_future(client.post("/transcribe", files={"file": ("a.wav", wav_of(1, 40.0))}))
            for _ in range(200):  # 2.56 MB decoded and held at the gated engine
                if engine.timestamps_asked:
                    break
                await asyncio.sleep(0.02)
            second = await client.post("/transcribe", files={"file": ("b.wav", pcm16)})
            assert engine.gate is not None
            engine.gate.set()
            return (await first).status_code, second, len(engine.batches)

    first, second, batches = run(main())
    assert first == 200 and batches == 1  # the refused request never reached the engine
    assert second.status_code == 429 and second.json()["error"]["code"] == "memory_full"
    assert "the decoded audio (60 s) is 3840000 bytes" in second.json()["error"]["message"]


def _tree_rss_bytes(pid: int) -> int:
    from helpers import child_pids

    total = 0
    for p in [pid, *child_pids(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def test_a_burst_of_big_uploads_stays_within_the_memory_budget(tmp_path: Path) -> None:
    """12 concurrent 16 MB uploads (8.4 minutes of 16-bit audio each, 33.6 MB decoded) against a 100 MB budget: the
    excess gets 429 `memory_full`, the admitted ones 200, and the worker's process tree grows by no more than the
    budget plus what the README's formula adds for the decoder subprocesses and the waveforms just decoded."""
    import io

    import numpy as np
    import soundfile as sf

    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    sf.write(buf, (0.1 * rng.standard_normal(8 * 16000 * 63)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    big = buf.getvalue()
    budget = 100_000_000
    env = {"PARAKEET_MAX_INFLIGHT_AUDIO_BYTES": str(budget), "FAKE_DELAY_S": "0.5", "PARAKEET_DECODE_WORKERS": "2"}
    with running_fake_server(tmp_path, env) as server:
        base = _tree_rss_bytes(server.proc.pid)
        peak = [base]

        async def main() -> list[int]:
            async def watch() -> None:
                while True:
                    peak[0] = max(peak[0], _tree_rss_bytes(server.proc.pid))
                    await asyncio.sleep(0.02)

            watcher = asyncio.ensure_future(watch())
            async with httpx.AsyncClient(timeout=120) as client:
                replies = await asyncio.gather(
                    *(client.post(f"{server.url}/transcribe", files={"file": ("big.wav", big)}) for _ in range(12))
                )
            watcher.cancel()
            return [r.status_code for r in replies]

        statuses = asyncio.run(main())
        health = httpx.get(f"{server.url}/health").json()
    growth = peak[0] - base
    print(f"statuses {sorted(statuses)}; tree RSS {base / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MiB")
    assert set(statuses) <= {200, 429} and 200 in statuses and 429 in statuses
    assert health["status"] == "ok" and health["inflight_audio_bytes"] == 0
    # README "Memory per worker": B + D x (file + 2 W) in the decoders + D x W just decoded, W = 33.6 MB, D = 2;
    # plus 64 MiB of allocator and interpreter slack.
    w = 33_600_000
    assert growth <= budget + 2 * (len(big) + 2 * w) + 2 * w + 64 * 2**20, growth / 2**20
