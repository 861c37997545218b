"""Wyoming (Home Assistant's voice protocol) against a real worker: the `wyoming` package's own client gets the
server's description and the digits transcript, equal to /transcribe's for the same audio."""

from __future__ import annotations

import asyncio
import io
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info

import speech
from helpers import ServerProcess, free_port, run, start_server


@pytest.fixture(scope="module")
def wyoming_server(
    tmp_path_factory: pytest.TempPathFactory, digits_model_path: Path
) -> Iterator[tuple[ServerProcess, int]]:  # noqa: E501
    port = free_port()
    env = {"PARAKEET_MODEL": str(digits_model_path), "PARAKEET_WYOMING_PORT": str(port),
           "PARAKEET_WYOMING_HOST": "127.0.0.1", "PARAKEET_MAX_UPLOAD_BYTES": str(1024 * 1024)}  # fmt: skip
    server = start_server(tmp_path_factory.mktemp("wyoming"), env, workers=1)
    try:
        server.wait_ready(timeout_s=120)
        yield server, port
    finally:
        server.stop()


def pcm16(text: str) -> bytes:
    return (np.clip(speech.speak(text), -1, 1) * 32767).astype("<i2").tobytes()


async def utterance(
    client: AsyncTcpClient, pcm: bytes, rate: int = 16000, chunk_bytes: int = 2048
) -> Transcript | Error:  # noqa: E501
    """One transcribe / audio-start / audio-chunk... / audio-stop exchange on an open connection."""
    await client.write_event(Transcribe(language="en").event())
    await client.write_event(AudioStart(rate=rate, width=2, channels=1).event())
    for i in range(0, len(pcm), chunk_bytes):
        await client.write_event(AudioChunk(rate=rate, width=2, channels=1, audio=pcm[i : i + chunk_bytes]).event())
    await client.write_event(AudioStop().event())
    while True:
        event = await asyncio.wait_for(client.read_event(), 60)
        assert event is not None
        if Transcript.is_type(event.type):
            return Transcript.from_event(event)
        if Error.is_type(event.type):
            return Error.from_event(event)


async def transcribe(port: int, *utterances: tuple[bytes, int], chunk_bytes: int = 2048) -> list[Transcript | Error]:
    async with AsyncTcpClient("127.0.0.1", port) as client:
        return [await utterance(client, pcm, rate, chunk_bytes) for pcm, rate in utterances]


def http_text(server: ServerProcess, pcm: bytes, rate: int = 16000) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return str(
        httpx.post(f"{server.url}/transcribe", files={"file": ("a.wav", buf.getvalue())}, timeout=60).json()["text"]
    )


def test_wyoming_describe_lists_the_asr_program(wyoming_server: tuple[ServerProcess, int]) -> None:
    async def main() -> Info:
        async with AsyncTcpClient("127.0.0.1", wyoming_server[1]) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 30)
            assert event is not None and Info.is_type(event.type)
            return Info.from_event(event)

    info = run(main())
    (program,) = info.asr
    assert program.installed and program.models[0].name.endswith("digits_tdt.nemo")
    assert "en" in program.models[0].languages and "de" in program.models[0].languages


def test_wyoming_transcript_equals_transcribe(wyoming_server: tuple[ServerProcess, int]) -> None:
    server, port = wyoming_server
    pcm = pcm16("four two seven one nine")
    (result,) = run(transcribe(port, (pcm, 16000)))
    assert isinstance(result, Transcript)
    assert result.text == http_text(server, pcm) == "four two seven one nine"


def test_wyoming_other_rates_and_several_utterances_on_one_connection(
    wyoming_server: tuple[ServerProcess, int],
) -> None:  # noqa: E501
    import soxr

    server, port = wyoming_server
    x = speech.speak("three eight zero")
    pcm22 = (np.clip(soxr.resample(x, 16000, 22050), -1, 1) * 32767).astype("<i2").tobytes()
    first, second = run(transcribe(port, (pcm22, 22050), (pcm16("six five"), 16000)))
    assert isinstance(first, Transcript) and first.text == http_text(server, pcm22, 22050)
    assert isinstance(second, Transcript) and second.text == "six five"


def test_wyoming_audio_over_the_upload_cap_is_an_error_event(wyoming_server: tuple[ServerProcess, int]) -> None:
    (result,) = run(transcribe(wyoming_server[1], (b"\0" * (1024 * 1024 + 4096), 16000), chunk_bytes=65536))
    assert isinstance(result, Error) and result.code == "upload_too_large" and "1048576" in result.text
