"""Streams over real sockets (uvicorn on loopback), where the socket or the process is the subject: the official
`openai` SDK's Realtime client (it speaks the `websockets` library, over a socket) gets the same transcript as
`/v1/audio/transcriptions`; SIGTERM finalizes an open stream's utterance, then closes it with 1001; a long file's
server-sent events leave the server chunk by chunk, before the rest of the file has run. (The protocols themselves,
in-process: tests/app/test_ws.py, test_realtime.py.)"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import signal
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import websockets
from openai import AsyncOpenAI

from tests.support import speech

from helpers import LiveServer, Serve, ServerProcess, run
from streams import pcm16, to_24k, wav

MANUAL = {
    "type": "transcription",
    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000}, "turn_detection": None}},
}


def test_realtime_through_the_official_sdk_over_a_socket(digits_server: LiveServer) -> None:
    pcm24 = to_24k(pcm16(np.concatenate([speech.speak("four two seven one nine"), np.zeros(3200, np.float32)])))

    async def scenario() -> list[Any]:
        events = []
        client = AsyncOpenAI(base_url=digits_server.url + "/v1", api_key="unused", max_retries=0)
        async with client.realtime.connect(
            model="parakeet-tdt-0.6b-v3", extra_query={"intent": "transcription"}
        ) as conn:
            await conn.session.update(session=MANUAL)  # type: ignore[arg-type]
            for i in range(0, len(pcm24), 4800):  # 100 ms events
                await conn.input_audio_buffer.append(audio=base64.b64encode(pcm24[i : i + 4800]).decode())
            await conn.input_audio_buffer.commit()
            async for event in conn:
                events.append(event)
                if event.type == "conversation.item.done":
                    return events
        return events

    events = run(asyncio.wait_for(scenario(), 120))
    types = [e.type for e in events]
    assert types[:2] == ["session.created", "session.updated"]
    completed = next(e for e in events if e.type == "conversation.item.input_audio_transcription.completed")
    r = httpx.post(f"{digits_server.url}/v1/audio/transcriptions", files={"file": ("a.wav", wav(pcm24, 24000))},
                   data={"model": "whisper-1"}, timeout=60)  # fmt: skip
    assert completed.transcript == r.json()["text"] == "four two seven one nine"


@pytest.mark.parametrize("server", [Serve()], indirect=True)
def test_sigterm_finalizes_open_streams_then_closes_1001(server: ServerProcess) -> None:
    pcm = pcm16(np.full(3 * 16000, 0.25, np.float32))  # the fake engine's final: "<first sample x 10000> <samples>"
    expected = httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", wav(pcm))}, timeout=30).json()["text"]

    async def scenario() -> tuple[int | None, list[dict[str, Any]]]:
        async with websockets.connect(server.url.replace("http://", "ws://") + "/ws") as ws:
            await ws.send(pcm)  # no EOS: the utterance is open
            out = [json.loads(await asyncio.wait_for(ws.recv(), 30))]  # a partial: the server is streaming it
            server.proc.send_signal(signal.SIGTERM)
            try:
                while True:
                    out.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            except websockets.ConnectionClosed as closed:
                return (closed.rcvd.code if closed.rcvd else None), out

    code, messages = run(scenario())
    assert code == 1001
    assert [m["text"] for m in messages if m["type"] == "final"] == [expected]
    assert messages[-1]["code"] == "shutting_down"
    # uvicorn re-raises the signal after a graceful shutdown (uvicorn/server.py, capture_signals)
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in server.log()


def _long_file(seconds: float) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(5)
    sf.write(buf, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000, format="WAV")
    return buf.getvalue()


# A 40 s file in ~6 s chunks, one chunk on the GPU at a time, 0.5 s per batch.
CHUNKED = Serve({
    "FAKE_DELAY_S": "0.5",
    "FAKE_TUNING": json.dumps({"long_audio_threshold_s": 10, "long_audio_chunk_s": 6, "long_audio_search_s": 2,
                               "long_audio_context_s": 0.5, "long_audio_chunks_in_flight": 1}),
})  # fmt: skip


@pytest.mark.parametrize("server", [CHUNKED], indirect=True)
def test_long_audio_streams_each_chunk_as_it_finishes(server: ServerProcess) -> None:
    """The first delta reaches the client while most chunks have not run yet (asked of the fake engine's batch log
    at that moment)."""
    events: list[dict[str, Any]] = []
    batches_at_first_delta = None
    with httpx.stream(
        "POST", f"{server.url}/v1/audio/transcriptions", files={"file": ("long.wav", _long_file(40))},
        data={"model": "whisper-1", "stream": "true"}, timeout=120,
    ) as r:  # fmt: skip
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(json.loads(line[6:]))
            if batches_at_first_delta is None:
                batches_at_first_delta = len(server.fake_batches())
    total = len(server.fake_batches())
    assert total >= 6
    assert batches_at_first_delta is not None and batches_at_first_delta < total - 2, (batches_at_first_delta, total)
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert events[-1]["type"] == "transcript.text.done"
    assert "".join(deltas) == events[-1]["text"] and len(deltas) >= total - 1
