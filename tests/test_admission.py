"""Admission control and batching through real HTTP: a uvicorn worker serving the deterministic fake engine
on loopback. 429 before the upload is read, 503 past the deadline, no 5xx and no lost request in a burst
larger than the queue, timing headers, /health under full load, disconnects, drain on SIGTERM. Every loop
here is bounded in count and time."""

from __future__ import annotations

import asyncio
import io
import re
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
from conftest import ServerProcess, running_fake_server
from fakes import tagged_wave


def wav_of(tag: int, duration_s: float = 1.0) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tagged_wave(tag, duration_s), 16000, format="WAV", subtype="FLOAT")
    return buf.getvalue()


@pytest.fixture
def fake_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    with running_fake_server(tmp_path, {"PARAKEET_DECODE_WORKERS": "2", **request.param}) as server:
        yield server


async def post_async(client: httpx.AsyncClient, url: str, tag: int, duration_s: float = 1.0) -> httpx.Response:
    return await client.post(f"{url}/transcribe", files={"file": ("a.wav", wav_of(tag, duration_s))})


def batches_in_log(server: ServerProcess) -> list[list[int]]:
    return [[int(t) for t in m.split()] for m in re.findall(r"^FAKE_BATCH ([\d ]+)$", server.log(), re.M)]


async def read_http_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response (status line, headers and a Content-Length body) from a raw connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    return head + await reader.readexactly(length)


SLOW_QUEUE_2 = {"FAKE_DELAY_S": "1.0", "PARAKEET_MAX_BATCH_SIZE": "1", "PARAKEET_MAX_QUEUE_REQUESTS": "2"}


@pytest.mark.parametrize("fake_server", [SLOW_QUEUE_2], indirect=True)
def test_admission_queue_full_is_429_before_the_upload_is_read(fake_server: ServerProcess) -> None:
    async def main() -> tuple[list[httpx.Response], str, float]:
        async with httpx.AsyncClient(timeout=30) as client:
            busy = [asyncio.ensure_future(post_async(client, fake_server.url, i)) for i in range(2)]
            await asyncio.sleep(0.3)
            # A third request announces 50 MB and sends none of it: the 429 must come anyway.
            reader, writer = await asyncio.open_connection(*fake_server.url.removeprefix("http://").split(":"))
            writer.write(
                b"POST /transcribe HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                b"Content-Length: 50000000\r\n\r\n"
            )
            await writer.drain()
            t0 = time.perf_counter()
            reply = (await asyncio.wait_for(read_http_response(reader), 5)).decode()
            waited = time.perf_counter() - t0
            writer.close()
            return list(await asyncio.gather(*busy)), reply, waited

    busy, reply, waited = asyncio.run(main())
    assert [r.status_code for r in busy] == [200, 200]
    assert reply.startswith("HTTP/1.1 429 "), reply
    retry_after = int(re.search(r"(?im)^retry-after: (\d+)\r$", reply).group(1))  # type: ignore[union-attr]
    assert 1 <= retry_after <= 120
    assert '"code":"queue_full"' in reply and "the limit is 2" in reply
    assert waited < 2


@pytest.mark.parametrize(
    "fake_server",
    [{"FAKE_DELAY_S": "1.5", "PARAKEET_MAX_BATCH_SIZE": "1", "PARAKEET_REQUEST_TIMEOUT_S": "0.5"}],
    indirect=True,
)
def test_admission_request_past_deadline_is_503_with_retry_after(fake_server: ServerProcess) -> None:
    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.ensure_future(post_async(client, fake_server.url, 1))
            await asyncio.sleep(0.2)
            second = asyncio.ensure_future(post_async(client, fake_server.url, 2))
            return list(await asyncio.gather(first, second))

    first, second = asyncio.run(main())
    assert first.status_code == 200  # it started before its deadline: it runs to completion
    assert second.status_code == 503, second.text
    assert second.json()["error"]["code"] == "deadline_exceeded"
    assert "longer than the limit of 0.5 s" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) >= 1
    assert all(2 not in b for b in batches_in_log(fake_server))  # dropped before the engine


BURST = {
    "FAKE_DELAY_S": "0.05",
    "FAKE_PER_ITEM_S": "0.005",
    "PARAKEET_MAX_BATCH_SIZE": "4",
    "PARAKEET_MAX_QUEUE_REQUESTS": "8",
    "PARAKEET_MAX_WAIT_MS": "5",
}


@pytest.mark.parametrize("fake_server", [BURST], indirect=True)
def test_admission_burst_larger_than_the_queue_has_no_5xx_and_loses_nothing(fake_server: ServerProcess) -> None:
    n = 60

    async def main() -> tuple[list[httpx.Response], list[float]]:
        health_ms: list[float] = []
        limits = httpx.Limits(max_connections=n + 5)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:

            async def poll() -> None:
                for _ in range(20):
                    t0 = time.perf_counter()
                    r = await client.get(f"{fake_server.url}/health")
                    assert r.status_code == 200
                    health_ms.append((time.perf_counter() - t0) * 1000)
                    await asyncio.sleep(0.02)

            responses = await asyncio.gather(
                *(post_async(client, fake_server.url, i, 0.5 + (i % 5) * 0.5) for i in range(n)), poll()
            )
            return list(responses[:n]), health_ms

    responses, health_ms = asyncio.run(main())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    ok = [(i, r) for i, r in enumerate(responses) if r.status_code == 200]
    assert len(ok) >= 8
    for i, r in ok:
        assert r.json()["text"] == f"{i} {int((0.5 + (i % 5) * 0.5) * 16000)}"  # its own answer
    for r in responses:
        if r.status_code == 429:
            assert 1 <= int(r.headers["retry-after"]) <= 120
    served = sorted(t for batch in batches_in_log(fake_server) for t in batch)
    assert served == sorted(i for i, _ in ok)  # every accepted request ran exactly once; nothing else did
    assert max(len(b) for b in batches_in_log(fake_server)) > 1
    print(f"burst of {n}: {len(ok)} served, {n - len(ok)} told 429; /health max {max(health_ms):.1f} ms")
    assert max(health_ms) < 500  # answered while the queue was full and the engine busy


@pytest.mark.parametrize("fake_server", [BURST], indirect=True)
def test_admission_every_transcription_has_timing_headers(fake_server: ServerProcess) -> None:
    r = httpx.post(f"{fake_server.url}/transcribe", files={"file": ("a.wav", wav_of(7))}, timeout=30)
    assert r.status_code == 200
    body = r.json()
    assert r.headers["x-request-id"] == body["request_id"]
    assert float(r.headers["x-queue-ms"]) >= 0 and float(r.headers["x-compute-ms"]) > 0
    assert int(r.headers["x-batch-size"]) == body["batch_size"] == 1
    assert r.headers["x-gpu-id"] == "cpu"
    health = httpx.get(f"{fake_server.url}/health").json()
    assert health["queued_requests"] == 0 and health["mean_batch_size"] == 1.0


@pytest.mark.parametrize("fake_server", [{"FAKE_DELAY_S": "1.0", "PARAKEET_MAX_BATCH_SIZE": "1"}], indirect=True)
def test_admission_request_of_a_client_that_left_never_reaches_the_engine(fake_server: ServerProcess) -> None:
    async def main() -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            first = asyncio.ensure_future(post_async(client, fake_server.url, 1))
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(timeout=0.3) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await post_async(impatient, fake_server.url, 2)  # gives up, closes the connection
            return await first

    assert asyncio.run(main()).status_code == 200
    time.sleep(1.5)
    assert batches_in_log(fake_server) == [[1]]
    assert "client_closed_request" in fake_server.log()
    health = httpx.get(f"{fake_server.url}/health").json()
    assert health["dropped_requests"] == 1 and health["batches"] == 1


@pytest.mark.parametrize(
    "fake_server", [{"FAKE_DELAY_S": "0.3", "PARAKEET_MAX_BATCH_SIZE": "1", "PARAKEET_MAX_WAIT_MS": "0"}], indirect=True
)
def test_admission_sigterm_drains_admitted_requests_then_exits(fake_server: ServerProcess) -> None:
    async def main() -> list[Any]:
        async with httpx.AsyncClient(timeout=30) as client:
            tasks = [asyncio.ensure_future(post_async(client, fake_server.url, i)) for i in range(5)]
            await asyncio.sleep(0.4)  # all five admitted; one or two done
            fake_server.proc.send_signal(signal.SIGTERM)
            return list(await asyncio.gather(*tasks, return_exceptions=True))

    responses = asyncio.run(main())
    assert [getattr(r, "status_code", r) for r in responses] == [200] * 5
    assert fake_server.proc.wait(30) in (0, -signal.SIGTERM)
    assert sorted(t for b in batches_in_log(fake_server) for t in b) == [0, 1, 2, 3, 4]
    with pytest.raises((httpx.ConnectError, ConnectionRefusedError)):
        host, port = fake_server.url.removeprefix("http://").split(":")
        socket.create_connection((host, int(port)), timeout=2).close()
        httpx.get(f"{fake_server.url}/health", timeout=2)


def test_fake_wave_roundtrips_through_wav() -> None:
    data, _ = sf.read(io.BytesIO(wav_of(1234, 0.25)), dtype="float32")
    assert round(float(data[0]) * 10000) == 1234 and len(data) == 4000 and not np.any(data[1:])


LONG = {
    "FAKE_DELAY_S": "0.05",
    "PARAKEET_MAX_BATCH_SIZE": "1",
    "PARAKEET_LONG_AUDIO_THRESHOLD_S": "10",
    "PARAKEET_LONG_AUDIO_CHUNK_S": "6",
    "PARAKEET_LONG_AUDIO_SEARCH_S": "2",
    "PARAKEET_LONG_AUDIO_CHUNKS_IN_FLIGHT": "2",
}


@pytest.mark.parametrize("fake_server", [LONG], indirect=True)
def test_admission_long_file_runs_in_chunks_through_the_batcher(fake_server: ServerProcess) -> None:
    r = httpx.post(f"{fake_server.url}/transcribe", files={"file": ("a.wav", wav_of(7, 60.0))}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["chunks"] == len(batches_in_log(fake_server)) >= 10
    assert r.json()["duration_sec"] == 60.0


@pytest.mark.parametrize("fake_server", [{**LONG, "FAKE_FAIL_TAG": "0"}], indirect=True)
def test_admission_failed_chunk_stops_the_rest_of_its_file(fake_server: ServerProcess) -> None:
    # every chunk but the first starts with a 0 sample (tag 0): the second chunk fails
    r = httpx.post(f"{fake_server.url}/transcribe", files={"file": ("a.wav", wav_of(7, 60.0))}, timeout=60)
    assert r.status_code == 500 and r.json()["error"]["code"] == "inference_failed"
    time.sleep(0.5)
    assert len(batches_in_log(fake_server)) <= 4  # not all ~10 chunks: the failure cancelled the others
