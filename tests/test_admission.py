"""Admission control and batching over HTTP with the deterministic fake engine. In-process (the app with its
lifespan, no socket): 503 past the deadline, no 5xx and no lost request in a burst larger than the queue,
timing headers, /health under full load, long files in chunks. On a real uvicorn worker on loopback, where
the subject is the socket or the process: 429 before the upload is read, a client that disconnects, drain
on SIGTERM. Every loop here is bounded in count and time."""

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

from fakes import FakeEngine
from helpers import ServerProcess, app_client, post_wav, run, running_fake_server, wav_of


@pytest.fixture
def fake_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    with running_fake_server(tmp_path, {"PARAKEET_DECODE_WORKERS": "2", **request.param}) as server:
        yield server


async def post_async(client: httpx.AsyncClient, url: str, tag: int, duration_s: float = 1.0) -> httpx.Response:
    return await client.post(f"{url}/transcribe", files={"file": ("a.wav", wav_of(tag, duration_s))})


async def read_http_response(reader: asyncio.StreamReader) -> bytes:
    """One HTTP/1.1 response (status line, headers and a Content-Length body) from a raw connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    return head + await reader.readexactly(length)


SLOW_QUEUE_2 = {"FAKE_DELAY_S": "1.0", "PARAKEET_MAX_BATCH_SIZE": "1", "PARAKEET_MAX_QUEUE_REQUESTS": "2"}


@pytest.mark.parametrize("fake_server", [SLOW_QUEUE_2], indirect=True)
def test_admission_queue_full_is_429_before_the_upload_is_read(fake_server: ServerProcess) -> None:
    async def main() -> tuple[list[httpx.Response], str]:
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
            # Bounded: without the 429 the server would wait for the 50 MB forever.
            reply = (await asyncio.wait_for(read_http_response(reader), 30)).decode()
            writer.close()
            return list(await asyncio.gather(*busy)), reply

    busy, reply = asyncio.run(main())
    assert [r.status_code for r in busy] == [200, 200]
    assert reply.startswith("HTTP/1.1 429 "), reply
    retry_after = int(re.search(r"(?im)^retry-after: (\d+)\r$", reply).group(1))  # type: ignore[union-attr]
    assert 1 <= retry_after <= 120
    assert '"code":"queue_full"' in reply and "the limit is 2" in reply


def test_admission_request_past_deadline_is_503_with_retry_after() -> None:
    engine = FakeEngine(delay_s=1.5)

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with app_client(engine, max_batch_size=1, request_timeout_s=0.5) as client:
            first = asyncio.ensure_future(post_wav(client, 1))
            await asyncio.sleep(0.2)
            second = asyncio.ensure_future(post_wav(client, 2))
            return await first, await second

    first, second = run(main())
    assert first.status_code == 200  # it started before its deadline: it runs to completion
    assert second.status_code == 503, second.text
    assert second.json()["error"]["code"] == "deadline_exceeded"
    assert "longer than the limit of 0.5 s" in second.json()["error"]["message"]
    assert int(second.headers["retry-after"]) >= 1
    assert engine.batches == [[1]]  # the second was dropped before the engine


BURST = {"max_batch_size": 4, "max_queue_requests": 8, "max_wait_ms": 5.0, "decode_workers": 2}


def test_admission_burst_larger_than_the_queue_has_no_5xx_and_loses_nothing() -> None:
    n = 60
    engine = FakeEngine(delay_s=0.05, per_item_s=0.005)

    async def main() -> tuple[list[httpx.Response], list[int]]:
        health: list[int] = []
        async with app_client(engine, **BURST) as client:

            async def poll() -> None:
                for _ in range(20):
                    health.append((await client.get("/health")).status_code)
                    await asyncio.sleep(0.02)

            responses = await asyncio.gather(*(post_wav(client, i, 0.5 + (i % 5) * 0.5) for i in range(n)), poll())
            return list(responses[:n]), health

    responses, health = run(main())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429}, statuses
    ok = [(i, r) for i, r in enumerate(responses) if r.status_code == 200]
    assert len(ok) >= 8
    for i, r in ok:
        assert r.json()["text"] == f"{i} {int((0.5 + (i % 5) * 0.5) * 16000)}"  # its own answer
    for r in responses:
        if r.status_code == 429:
            assert 1 <= int(r.headers["retry-after"]) <= 120
            assert r.json()["error"]["code"] == "queue_full"
    served = sorted(t for batch in engine.batches for t in batch)
    assert served == sorted(i for i, _ in ok)  # every accepted request ran exactly once; nothing else did
    assert max(len(b) for b in engine.batches) > 1
    assert health == [200] * 20  # /health answered while the queue was full and the engine busy
    print(f"burst of {n}: {len(ok)} served, {n - len(ok)} told 429")


def test_admission_every_transcription_has_timing_headers() -> None:
    async def main() -> tuple[httpx.Response, dict[str, Any]]:
        async with app_client(FakeEngine(), **BURST) as client:
            r = await post_wav(client, 7)
            return r, (await client.get("/health")).json()

    r, health = run(main())
    assert r.status_code == 200
    body = r.json()
    assert r.headers["x-request-id"] == body["request_id"]
    assert float(r.headers["x-queue-ms"]) >= 0 and float(r.headers["x-compute-ms"]) > 0
    assert int(r.headers["x-batch-size"]) == body["batch_size"] == 1
    assert r.headers["x-gpu-id"] == "cpu"
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
    assert fake_server.fake_batches() == [[1]]
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
    assert [r.json()["text"] for r in responses] == [f"{i} 16000" for i in range(5)]  # each ran, its own answer
    with pytest.raises((httpx.ConnectError, ConnectionRefusedError)):
        host, port = fake_server.url.removeprefix("http://").split(":")
        socket.create_connection((host, int(port)), timeout=2).close()
        httpx.get(f"{fake_server.url}/health", timeout=2)


def test_fake_wave_roundtrips_through_wav() -> None:
    data, _ = sf.read(io.BytesIO(wav_of(1234, 0.25)), dtype="float32")
    assert round(float(data[0]) * 10000) == 1234 and len(data) == 4000 and not np.any(data[1:])


LONG = {
    "max_batch_size": 1,
    "long_audio_threshold_s": 10.0,
    "long_audio_chunk_s": 6.0,
    "long_audio_search_s": 2.0,
    "long_audio_chunks_in_flight": 2,
}


def test_admission_long_file_runs_in_chunks_through_the_batcher() -> None:
    engine = FakeEngine(delay_s=0.05)

    async def main() -> httpx.Response:
        async with app_client(engine, **LONG) as client:
            return await post_wav(client, 7, 60.0)

    r = run(main())
    assert r.status_code == 200, r.text
    assert r.json()["chunks"] == len(engine.batches) >= 10
    assert all(len(b) == 1 for b in engine.batches)
    assert r.json()["duration_sec"] == 60.0


def test_admission_failed_chunk_stops_the_rest_of_its_file() -> None:
    # every chunk but the first starts with a 0 sample (tag 0): the second chunk fails
    engine = FakeEngine(delay_s=0.05, fail_tag=0)

    async def main() -> httpx.Response:
        async with app_client(engine, **LONG) as client:
            r = await post_wav(client, 7, 60.0)
            await asyncio.sleep(0.5)
            return r

    r = run(main())
    assert r.status_code == 500 and r.json()["error"]["code"] == "inference_failed"
    assert len(engine.batches) <= 4  # not all ~10 chunks: the failure cancelled the others


def test_admission_timestamps_are_computed_only_for_requests_that_need_them() -> None:
    """Timestamps cost the GPU thread Python time: the engine is asked for them only where a response uses
    them (timestamps=true, subtitles, verbose_json, streaming) or where long audio is merged by them."""
    engine = FakeEngine()

    async def main() -> list[int]:
        async with app_client(engine, **LONG) as client:
            statuses = [
                (await post_wav(client, 1)).status_code,
                (await post_wav(client, 2, timestamps="true")).status_code,
                (await post_wav(client, 3, route="/v1/audio/transcriptions", model="whisper-1")).status_code,
                (await post_wav(client, 4, route="/v1/audio/transcriptions", model="whisper-1",
                                response_format="srt")).status_code,
                (await post_wav(client, 5, 30.0)).status_code,  # long: merged by word timestamps
            ]  # fmt: skip
            return statuses

    assert run(main()) == [200] * 5
    flags = {batch[0]: asked for batch, asked in zip(engine.batches, engine.timestamps_asked, strict=True)}
    assert flags[1] == [False] and flags[2] == [True] and flags[3] == [False] and flags[4] == [True]
    assert flags[5] == [True] and all(asked == [True] for asked in engine.timestamps_asked[5:])
