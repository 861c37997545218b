"""Wyoming (Home Assistant's voice protocol) in-process: the app's lifespan starts the listener on a loopback port and
the `wyoming` package's own client talks to it. Oracles: the server's description, the digits transcript, equal to
`/transcribe`'s for the same audio (any rate, several utterances on one connection), the error events, and the
streaming transcript (transcript-start, chunks while the audio still arrives, the final, transcript-stop), whose
chunks add up to the final; `transcribe`'s `transcript_names` boost like `/transcribe`'s `keywords`."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import soxr
from starlette.testclient import TestClient
from wyoming.asr import Transcribe, Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from tests.support import speech

from helpers import digits_app, free_port, hard_utterance, run, until

MAX_UPLOAD = 1024 * 1024


@pytest.fixture(scope="module")
def wyoming(digits_engine: Any, silero_vad: Any, digits_model_path: Path) -> Iterator[tuple[TestClient, int]]:
    port = free_port()
    with digits_app(digits_engine, silero_vad, digits_model_path, wyoming_port=port, host="127.0.0.1",
                    max_upload_bytes=MAX_UPLOAD) as client:  # fmt: skip
        yield client, port


def pcm16(text: str) -> bytes:
    return (np.clip(speech.speak(text), -1, 1) * 32767).astype("<i2").tobytes()


async def utterance(
    client: AsyncTcpClient, pcm: bytes, rate: int = 16000, chunk_bytes: int = 2048, send_transcribe: bool = True
) -> Any:
    """One transcribe / audio-start / audio-chunk... / audio-stop exchange on an open connection: the Transcript or
    Error that answers it (the server may answer early and close: then the rest is not sent)."""
    try:
        if send_transcribe:
            await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
        for i in range(0, len(pcm), chunk_bytes):
            await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i : i + chunk_bytes]).event())
        await client.write_event(AudioStop().event())
    except ConnectionError:
        pass
    while True:
        event = await asyncio.wait_for(client.read_event(), 60)
        assert event is not None, "the server closed the connection without an answer"
        if Transcript.is_type(event.type):
            return Transcript.from_event(event)
        if Error.is_type(event.type):
            return Error.from_event(event)


async def transcribe(port: int, *utterances: tuple[bytes, int], chunk_bytes: int = 2048) -> list[Any]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        return [await utterance(client, pcm, rate, chunk_bytes) for pcm, rate in utterances]


def http_wav(pcm: bytes, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


def http_text(client: TestClient, pcm: bytes, rate: int = 16000) -> str:
    return str(client.post("/transcribe", files={"file": ("a.wav", http_wav(pcm, rate))}).json()["text"])


def test_wyoming_describe_lists_the_asr_program(wyoming: tuple[TestClient, int]) -> None:
    async def main() -> Info:
        async with AsyncTcpClient("127.0.0.1", wyoming[1]) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 30)
            assert event is not None and Info.is_type(event.type)
            return Info.from_event(event)

    (program,) = run(main()).asr
    assert program.installed and program.models[0].name.endswith("digits_tdt.nemo")
    assert program.supports_transcript_streaming
    assert "en" in program.models[0].languages and "de" in program.models[0].languages


def test_wyoming_transcript_equals_transcribe(wyoming: tuple[TestClient, int]) -> None:
    client, port = wyoming
    pcm = pcm16("four two seven one nine")
    (result,) = run(transcribe(port, (pcm, 16000)))
    assert isinstance(result, Transcript)
    assert result.text == http_text(client, pcm) == "four two seven one nine"


def test_wyoming_other_rates_and_several_utterances_on_one_connection(wyoming: tuple[TestClient, int]) -> None:
    client, port = wyoming
    x = speech.speak("three eight zero")
    pcm22 = (np.clip(soxr.resample(x, 16000, 22050), -1, 1) * 32767).astype("<i2").tobytes()
    first, second = run(transcribe(port, (pcm22, 22050), (pcm16("six five"), 16000)))
    assert isinstance(first, Transcript) and first.text == http_text(client, pcm22, 22050)
    assert isinstance(second, Transcript) and second.text == "six five"


def test_wyoming_audio_over_the_upload_cap_is_an_error_event(wyoming: tuple[TestClient, int]) -> None:
    (result,) = run(transcribe(wyoming[1], (b"\0" * (MAX_UPLOAD + 4096), 16000), chunk_bytes=65536))
    assert isinstance(result, Error) and result.code == "upload_too_large" and str(MAX_UPLOAD) in result.text


def test_wyoming_requests_share_the_memory_budget_and_release_it(wyoming: tuple[TestClient, int]) -> None:
    """An utterance holds its samples against the budget while it arrives and gives them back once answered."""
    client, port = wyoming
    (result,) = run(transcribe(port, (pcm16("nine one"), 16000)))
    assert isinstance(result, Transcript) and result.text == "nine one"
    health = client.get("/health").json()
    assert health["inflight_audio_bytes"] == 0 and health["uploads_in_progress"] == 0


async def streamed(
    port: int, pcm: bytes, names: list[str] | None = None, chunk_ms: int = 100
) -> tuple[list[Event], int]:
    """One utterance sent at real time (as a microphone does) while the events are read as they come: (every event
    up to transcript-stop, how many came before audio-stop was sent). Waits (bounded) for a first transcript-chunk
    before audio-stop: the chunks are the partials of audio that is still arriving."""
    events: list[Event] = []
    async with AsyncTcpClient("127.0.0.1", port) as client:

        async def read_all() -> None:
            while (event := await client.read_event()) is not None:
                events.append(event)
                if TranscriptStop.is_type(event.type):
                    return

        reader = asyncio.ensure_future(read_all())
        await client.write_event(Transcribe(language="en", transcript_names=names).event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        step = 16000 * 2 * chunk_ms // 1000
        for i in range(0, len(pcm), step):
            await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=pcm[i : i + step]).event())
            await asyncio.sleep(chunk_ms / 1000)
        await until(lambda: any(TranscriptChunk.is_type(e.type) for e in events), 60, "a transcript-chunk")
        before_stop = len(events)
        await client.write_event(AudioStop().event())
        await asyncio.wait_for(reader, 60)
    return events, before_stop


def test_wyoming_streams_transcript_chunks_before_audio_stop_and_they_add_up_to_the_final(
    wyoming: tuple[TestClient, int],
) -> None:
    client, port = wyoming
    pcm = pcm16("four two seven one nine three eight six five zero")
    assert len(pcm) / 32000 >= 3
    events, before_stop = run(streamed(port, pcm))
    types = [e.type for e in events]
    assert types[0] == "transcript-start" and types[-2:] == ["transcript", "transcript-stop"], types
    assert set(types[1:-2]) == {"transcript-chunk"}, types
    assert any(TranscriptChunk.is_type(e.type) for e in events[:before_stop])
    final = Transcript.from_event(events[-2]).text
    assert final == http_text(client, pcm) == "four two seven one nine three eight six five zero"
    assert "".join(TranscriptChunk.from_event(e).text for e in events[1:-2]) == final
    assert TranscriptStart.is_type(events[0].type)
    health = client.get("/health").json()
    assert health["inflight_audio_bytes"] == 0 and health["streams_open"] == 0, health


def test_wyoming_transcript_names_are_boosted_like_keywords(
    wyoming: tuple[TestClient, int], digits_engine: Any
) -> None:
    """`transcribe`'s `transcript_names` (Home Assistant's entity names) boost the final as `/transcribe`'s
    `keywords` do, on an utterance that boosting changes; a name over the length limit is an error event."""
    client, port = wyoming
    wav, spoken, _ = hard_utterance(digits_engine, 4)
    wave, _ = sf.read(io.BytesIO(wav), dtype="float32")
    pcm = (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()
    body = {"file": ("a.wav", http_wav(pcm))}
    boosted = client.post("/transcribe", files=body, data={"keywords": spoken}).json()["text"]
    assert boosted != http_text(client, pcm)
    events, _ = run(streamed(port, pcm, names=[spoken]))
    assert Transcript.from_event(events[-2]).text == boosted

    async def too_long() -> Any:
        async with AsyncTcpClient("127.0.0.1", port) as c:
            await c.write_event(Transcribe(transcript_names=["x" * 101]).event())
            return await utterance(c, pcm16("one"), send_transcribe=False)

    result = run(too_long())
    assert isinstance(result, Error) and result.code == "invalid_request" and "limit is 100" in result.text, result


def test_wyoming_without_room_for_a_stream_answers_with_the_transcript_alone(
    digits_engine: Any, silero_vad: Any, digits_model_path: Path
) -> None:
    """With the worker's stream limit reached, an utterance still gets its transcript, as from a non-streaming
    server (no transcript-start, no chunks, no transcript-stop)."""
    port = free_port()
    with digits_app(digits_engine, silero_vad, digits_model_path, wyoming_port=port, host="127.0.0.1",
                    stream_max_streams=0) as client:  # fmt: skip
        pcm = pcm16("six five")

        async def main() -> list[Event]:
            events: list[Event] = []
            async with AsyncTcpClient("127.0.0.1", port) as c:
                fmt = {"rate": 16000, "width": 2, "channels": 1}
                for event in (Transcribe(), AudioStart(**fmt), AudioChunk(audio=pcm, **fmt), AudioStop()):
                    await c.write_event(event.event())
                while not events or not Transcript.is_type(events[-1].type):
                    event = await asyncio.wait_for(c.read_event(), 60)
                    assert event is not None
                    events.append(event)
                await c.write_event(Describe().event())  # whatever came next would come before the info
                event = await asyncio.wait_for(c.read_event(), 60)
                assert event is not None
                events.append(event)
            return events

        events = run(main())
        assert [e.type for e in events] == ["transcript", "info"]
        assert Transcript.from_event(events[0]).text == http_text(client, pcm) == "six five"
