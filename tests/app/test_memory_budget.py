"""The audio memory budget (PARAKEET_MAX_INFLIGHT_AUDIO_BYTES), in-process with the gated fake engine: requests hold
their bytes while they are answered and give them back after; a request past the budget gets 429 `memory_full`,
before its body is read when its Content-Length passes it, or when its header says its decoded waveform would.
(The process tree's growth under a burst of big uploads: tests/e2e/test_hostile_clients.py.)"""

from __future__ import annotations

import asyncio
import io
import threading

import httpx
import soundfile as sf

from fakes import FakeEngine, tagged_wave
from helpers import app_client, run, running_app, until, wav_of


def test_memory_budget_refuses_audio_past_it_and_frees_it_after() -> None:
    """Two 40 s uploads (2.56 MB each, float32), sent one after the other, are held while the engine is gated; while
    the second is decoded it holds its upload and its waveform (5.2 MB) beside the first's 2.6 MB, within the 8 MB
    budget; a third would pass it and gets 429 `memory_full`; once they are answered, the budget is free again and
    /health counts 0 bytes."""
    engine = FakeEngine(gate=threading.Event())

    async def main() -> tuple[list[int], httpx.Response, dict[str, int], int, int]:
        async with running_app(engine, max_inflight_audio_bytes=8_000_000) as (app, client):

            def upload(i: int) -> asyncio.Future[httpx.Response]:
                return asyncio.ensure_future(client.post("/transcribe", files={"file": ("a.wav", wav_of(i, 40.0))}))

            # One after the other: two decoding at once would hold 2 x 5.2 MB and the second would be refused.
            held = [upload(1)]
            await until(lambda: engine.timestamps_asked)  # the first decoded, at the gated engine
            held.append(upload(2))
            worker = app.state.worker
            await until(lambda: worker.snapshot().queued_audio_s == 80.0)  # the second decoded too, in the queue
            health = (await client.get("/health")).json()
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
    assert "the budget is 8000000 bytes" in refused.json()["error"]["message"] and "retry-after" in refused.headers
    assert 2 * 40 * 16000 * 4 <= health["inflight_audio_bytes"] <= 8_000_000
    assert after == 0 and again == 200


def test_memory_budget_counts_decoded_audio_before_it_is_decoded() -> None:
    """A 16-bit upload decodes to twice its bytes (float32): admitted on its Content-Length, it is refused with
    429 `memory_full` as soon as its WAV header says what its decoded waveform will take (the upload and the waveform
    are held at once while the decoder produces it), before a sample is decoded and before the GPU queue."""
    engine = FakeEngine(gate=threading.Event())
    buf = io.BytesIO()
    sf.write(buf, tagged_wave(5, 60.0), 16000, format="WAV", subtype="PCM_16")  # 1.92 MB -> 3.84 MB decoded
    pcm16 = buf.getvalue()

    async def main() -> tuple[int, httpx.Response, int]:
        async with app_client(engine, max_inflight_audio_bytes=6_000_000) as client:
            first = asyncio.ensure_future(client.post("/transcribe", files={"file": ("a.wav", wav_of(1, 40.0))}))
            await until(lambda: engine.timestamps_asked)  # 2.56 MB decoded and held at the gated engine
            second = await client.post("/transcribe", files={"file": ("b.wav", pcm16)})
            assert engine.gate is not None
            engine.gate.set()
            return (await first).status_code, second, len(engine.batches)

    first, second, batches = run(main())
    assert first == 200 and batches == 1  # the refused request never reached the engine
    assert second.status_code == 429 and second.json()["error"]["code"] == "memory_full"
    message = second.json()["error"]["message"]
    upload, wave = len(pcm16), 4 * 16000 * (60 + 1)  # the header's 60 s, and a second of slack for the resampler
    assert (
        f"the upload ({upload} bytes) with its decoded audio (61 s, {wave} bytes) is {upload + wave} bytes" in message
    )
    assert "the budget is 6000000 bytes (PARAKEET_MAX_INFLIGHT_AUDIO_BYTES)" in message
