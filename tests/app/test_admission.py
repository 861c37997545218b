"""Admission control and batching over HTTP with the deterministic fake engine, in-process (the app with its
lifespan, no socket): 503 past the deadline, no 5xx and no lost request in a burst larger than the queue, timing
headers, /health under full load, long files in chunks, timestamps only where needed. (Where the subject is the
socket or the process: tests/e2e/test_admission_e2e.py.) Every loop here is bounded in count and time."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
import numpy as np
import soundfile as sf

from parakeet.core.tuning import Tuning

from fakes import FakeEngine
from helpers import app_client, post_wav, run, running_app, until, wav_of


def test_admission_request_past_deadline_is_503_with_retry_after() -> None:
    engine = FakeEngine(delay_s=1.5)

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with app_client(engine, max_batch_size=1, request_timeout_s=0.5) as client:
            first = asyncio.ensure_future(post_wav(client, 1))
            await until(lambda: engine.timestamps_asked)  # the first is on the GPU thread
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

            async def poll() -> None:  # /health answers while the queue is full and the engine busy
                for _ in range(20):
                    health.append((await client.get("/health")).status_code)

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
            assert r.json()["error"]["code"] in ("queue_full", "uploads_full")  # the GPU queue, or the upload pool
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


def test_fake_wave_roundtrips_through_wav() -> None:
    data, _ = sf.read(io.BytesIO(wav_of(1234, 0.25)), dtype="float32")
    assert round(float(data[0]) * 10000) == 1234 and len(data) == 4000 and not np.any(data[1:])


LONG = {
    "max_batch_size": 1,
    "long_audio_threshold_s": 10.0,
    "tuning": Tuning(long_audio_chunk_s=6.0, long_audio_search_s=2.0, long_audio_chunks_in_flight=2),
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
        async with running_app(engine, **LONG) as (app, client):
            r = await post_wav(client, 7, 60.0)
            worker = app.state.worker
            await until(lambda: worker.snapshot().queued_audio_s == 0)  # nothing of the file left in the queue
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
