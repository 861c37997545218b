"""Wyoming (Home Assistant's voice protocol) in-process: the app's lifespan starts the listener on a loopback port and
the `wyoming` package's own client talks to it. Oracles: the server's description, the digits transcript, equal to
`/transcribe`'s for the same audio (any rate, several utterances on one connection), and the error events."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soxr
from starlette.testclient import TestClient
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info

import speech
from helpers import digits_app, free_port, run

MAX_UPLOAD = 1024 * 1024


@pytest.fixture(scope="module")
def wyoming(digits_engine: Any, silero_vad: Any, digits_model_path: Path) -> Iterator[tuple[TestClient, int]]:
    port = free_port()
    with digits_app(digits_engine, silero_vad, digits_model_path, wyoming_port=port, host="127.0.0.1",
                    max_upload_bytes=MAX_UPLOAD) as client:  # fmt: skip
        yield client, port


def pcm16(text: str) -> bytes:
    return (np.clip(speech.speak(text), -1, 1) * 32767).astype("<i2").tobytes()


async def utterance(client: AsyncTcpClient, pcm: bytes, rate: int = 16000, chunk_bytes: int = 2048) -> Any:
    """One transcribe / audio-start / audio-chunk... / audio-stop exchange on an open connection: the Transcript or
    Error that answers it (the server may answer early and close: then the rest is not sent)."""
    try:
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


def http_text(client: TestClient, pcm: bytes, rate: int = 16000) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return str(client.post("/transcribe", files={"file": ("a.wav", buf.getvalue())}).json()["text"])


def test_wyoming_describe_lists_the_asr_program(wyoming: tuple[TestClient, int]) -> None:
    async def main() -> Info:
        async with AsyncTcpClient("127.0.0.1", wyoming[1]) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 30)
            assert event is not None and Info.is_type(event.type)
            return Info.from_event(event)

    (program,) = run(main()).asr
    assert program.installed and program.models[0].name.endswith("digits_tdt.nemo")
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
