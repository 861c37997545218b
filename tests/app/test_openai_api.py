"""The official `openai` package against the in-process digits app (its HTTP client is Starlette's TestClient):
every response_format, both granularities, streaming, the error classes for 400/413/429, /v1/models and
/v1/audio/translations; SRT and VTT bodies parsed by subtitle libraries; word timestamps against where each
utterance was placed in the file."""

from __future__ import annotations

import asyncio
import io
import random
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
import srt
import webvtt

from tests.support import speech

from fakes import FakeEngine
from helpers import app_client, post_wav, run, wav_of


@dataclass(frozen=True)
class PlacedFile:
    """Digit utterances laid out with known pauses: wav bytes, the words, and each utterance's speech span."""

    wav: bytes
    text: str
    spans: list[tuple[list[str], float, float]]  # (words, speech start s, speech end s) per utterance
    duration_s: float


def placed_file(seed: int, n: int = 4) -> PlacedFile:
    rng = random.Random(seed)
    parts, spans, t = [], [], 0
    for _ in range(n):
        gap = np.zeros(int(rng.uniform(0.6, 1.2) * 16000), dtype=np.float32)
        utt = speech.random_utterance(rng.randrange(10**8))
        voiced = np.nonzero(np.abs(utt.waveform) > 0.05 * np.abs(utt.waveform).max())[0]
        t += len(gap)
        spans.append((utt.text.split(), (t + voiced[0]) / 16000, (t + voiced[-1]) / 16000))
        parts += [gap, utt.waveform]
        t += len(utt.waveform)
    parts.append(np.zeros(8000, dtype=np.float32))
    wave = np.concatenate(parts)
    buf = io.BytesIO()
    sf.write(buf, wave, 16000, format="WAV", subtype="PCM_16")
    return PlacedFile(buf.getvalue(), " ".join(" ".join(w) for w, _, _ in spans), spans, len(wave) / 16000)


@pytest.fixture(scope="module")
def placed() -> PlacedFile:
    return placed_file(11)


@pytest.fixture(scope="module")
def client(digits_client: httpx.Client) -> openai.OpenAI:
    """The official SDK's client on the in-process digits app (its HTTP client is Starlette's TestClient)."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", max_retries=0, http_client=digits_client)


def create(client: openai.OpenAI, data: bytes, **kw: Any) -> Any:
    return client.audio.transcriptions.create(model=kw.pop("model", "whisper-1"), file=("a.wav", data), **kw)


def test_openai_json(client: openai.OpenAI, placed: PlacedFile) -> None:
    result = create(client, placed.wav)
    assert result.text == placed.text
    assert result.usage.type == "duration" and result.usage.seconds == pytest.approx(placed.duration_s, abs=0.01)


def test_openai_text(client: openai.OpenAI, placed: PlacedFile) -> None:
    assert create(client, placed.wav, response_format="text").strip() == placed.text


def test_openai_srt_parses_and_covers_the_speech(client: openai.OpenAI, placed: PlacedFile) -> None:
    body = create(client, placed.wav, response_format="srt")
    subs = list(srt.parse(body))
    assert subs and " ".join(s.content for s in subs).split() == placed.text.split()  # cues wrap into lines
    assert subs[0].start.total_seconds() <= placed.spans[0][1] + 0.3
    assert subs[-1].end.total_seconds() >= placed.spans[-1][2] - 0.3


def test_openai_vtt_parses(client: openai.OpenAI, placed: PlacedFile) -> None:
    body = create(client, placed.wav, response_format="vtt")
    assert body.startswith("WEBVTT\n\n")
    captions = webvtt.from_buffer(io.StringIO(body)).captions
    assert " ".join(c.text for c in captions).split() == placed.text.split()
    assert captions[-1].end_in_seconds <= placed.duration_s + 0.1


def test_openai_verbose_json_default_has_segments_only(client: openai.OpenAI, placed: PlacedFile) -> None:
    result = create(client, placed.wav, response_format="verbose_json")
    assert result.text == placed.text and result.task == "transcribe"
    assert result.duration == pytest.approx(placed.duration_s, abs=0.01)
    assert result.segments and result.words is None


def test_openai_verbose_json_words_land_where_they_were_placed(client: openai.OpenAI, placed: PlacedFile) -> None:
    result = create(client, placed.wav, response_format="verbose_json", timestamp_granularities=["word"])
    assert result.segments is None
    words = list(result.words)
    assert [w.word for w in words] == placed.text.split()
    starts = [w.start for w in words]
    assert starts == sorted(starts) and all(0 <= w.start <= w.end <= placed.duration_s for w in words)
    i = 0
    for utt_words, speech_start, speech_end in placed.spans:
        mine = words[i : i + len(utt_words)]
        i += len(utt_words)
        assert abs(mine[0].start - speech_start) <= 0.3, (mine[0], speech_start)
        assert abs(mine[-1].end - speech_end) <= 0.3, (mine[-1], speech_end)
        assert all(speech_start - 0.3 <= w.start and w.end <= speech_end + 0.3 for w in mine)


def test_openai_verbose_json_both_granularities(client: openai.OpenAI, placed: PlacedFile) -> None:
    result = create(
        client, placed.wav, response_format="verbose_json", timestamp_granularities=["word", "segment"], language="en"
    )
    assert result.words and result.segments and result.language == "en"
    segment = result.segments[0]
    assert {"id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob"} <= set(segment.model_dump())


def test_openai_streaming_deltas_then_done(client: openai.OpenAI, placed: PlacedFile) -> None:
    events = list(create(client, placed.wav, stream=True))
    assert [e.type for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1].type == "transcript.text.done" and events[-1].text == placed.text
    assert "".join(e.delta for e in events[:-1]) == placed.text


def test_openai_unbracketed_granularities_key_is_accepted(digits_client: httpx.Client, placed: PlacedFile) -> None:
    r = digits_client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", placed.wav)},
        data={"model": "whisper-1", "response_format": "verbose_json", "timestamp_granularities": "word"},
    )
    assert r.status_code == 200 and "words" in r.json() and "segments" not in r.json()


@pytest.mark.parametrize(
    ("kw", "param"),
    [
        ({"model": "no-such-model"}, "model"),
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": 1.5}, "temperature"),
        ({"timestamp_granularities": ["word"]}, "timestamp_granularities"),  # json + word: OpenAI answers 400
        ({"language": "english"}, "language"),
    ],
)
def test_openai_bad_fields_raise_bad_request(client: openai.OpenAI, placed: PlacedFile, kw: dict, param: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        create(client, placed.wav, **kw)
    assert info.value.status_code == 400
    assert info.value.body["param"] == param  # type: ignore[index]
    assert info.value.request_id  # x-request-id surfaced by the SDK


def test_openai_audio_too_long_is_413(client: openai.OpenAI) -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(16000 * 70, dtype=np.float32), 16000, format="FLAC", subtype="PCM_16")
    with pytest.raises(openai.APIStatusError) as info:
        create(client, buf.getvalue())
    assert info.value.status_code == 413 and "longer than the limit of 60 s" in info.value.message


def test_openai_models_and_translations(client: openai.OpenAI, placed: PlacedFile) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["digits_tdt"] and models.data[0].object == "model"
    with pytest.raises(openai.BadRequestError, match="does not translate|not supported"):
        client.audio.translations.create(model="whisper-1", file=("a.wav", placed.wav))
    # the served id itself is accepted as `model`
    assert create(client, placed.wav, model="digits_tdt").text == placed.text


def test_openai_queue_full_raises_rate_limit_error_with_retry_after() -> None:
    """The official SDK's async client, on the in-process app through httpx's ASGI transport."""
    engine = FakeEngine(delay_s=2.0)

    async def main() -> openai.RateLimitError:
        async with app_client(engine, max_batch_size=1, max_queue_requests=1) as http:
            first = asyncio.ensure_future(post_wav(http, 5))
            for _ in range(100):  # until the first request holds the only place
                if (await http.get("/health")).json()["queued_requests"] == 1:
                    break
                await asyncio.sleep(0.02)
            client = openai.AsyncOpenAI(
                base_url="http://parakeet.test/v1", api_key="x", max_retries=0, http_client=http
            )
            with pytest.raises(openai.RateLimitError) as info:
                await client.audio.transcriptions.create(model="whisper-1", file=("a.wav", wav_of(6)))
            assert (await first).status_code == 200
            return info.value

    error = run(main())
    assert error.status_code == 429 and error.body["code"] == "queue_full"  # type: ignore[index]
    assert 1 <= int(error.response.headers["retry-after"]) <= 120
    # the SDK reads retry-after-ms first (openai-python _base_client.py): the same delay, in ms
    assert int(error.response.headers["retry-after-ms"]) == 1000 * int(error.response.headers["retry-after"])
    assert engine.batches == [[5]]  # the refused request never reached the engine
