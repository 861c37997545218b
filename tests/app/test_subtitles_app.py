"""SRT and VTT of a five-minute file through the in-process digits app: readable cues (at most 2 lines x 42
characters and 7 s by default, or the limits a request asks for), every word once and in order. Oracles: the `srt`
and `webvtt-py` parsers, the words of the same transcript in verbose_json."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import srt
import webvtt

from parakeet.api.subtitles import CueLimits
from tests.support import speech

from helpers import digits_app


@pytest.fixture(scope="module")
def client(digits_engine: Any, silero_vad: Any, digits_model_path: Any) -> Any:
    """The digits app with room for five minutes of audio (the session's app takes at most 60 s)."""
    with digits_app(digits_engine, silero_vad, digits_model_path, max_audio_duration_s=600) as c:
        yield c


def digits_file(seconds: int) -> bytes:
    pool = [speech.random_utterance(8_000_000 + i).waveform for i in range(30)]
    rng = np.random.default_rng(2)
    parts, total = [], 0
    while total < seconds * 16000:
        w = pool[int(rng.integers(len(pool)))]
        gap = np.zeros(int(rng.uniform(0.1, 0.5) * 16000), np.float32)  # short pauses: no sentence punctuation
        parts += [w, gap]
        total += len(w) + len(gap)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(parts)[: seconds * 16000], 16000, format="FLAC")
    return buf.getvalue()


@pytest.fixture(scope="module")
def five_minutes() -> bytes:
    return digits_file(300)


def assert_readable(cue_lines: list[list[str]], durations: list[float], limits: CueLimits) -> None:
    for lines, duration in zip(cue_lines, durations, strict=True):
        assert 1 <= len(lines) <= limits.max_lines, lines
        assert all(len(line) <= limits.max_line_chars for line in lines), lines
        assert duration <= limits.max_cue_s + 1e-6, (lines, duration)


def post(client: Any, audio: bytes, fmt: str, **extra: Any) -> Any:
    r = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
        data={"model": "whisper-1", "response_format": fmt, **extra},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    return r


def test_subtitles_of_a_five_minute_file_parse_and_are_readable(client: Any, five_minutes: bytes) -> None:
    subs = list(srt.parse(post(client, five_minutes, "srt").text))
    vtt = webvtt.from_buffer(io.StringIO(post(client, five_minutes, "vtt").text))
    verbose = post(client, five_minutes, "verbose_json", **{"timestamp_granularities[]": "word"}).json()
    words = [w["word"] for w in verbose["words"]]
    assert len(words) > 300 and len(subs) == len(vtt.captions) > 40
    limits = CueLimits()
    assert_readable([s.content.split("\n") for s in subs], [(s.end - s.start).total_seconds() for s in subs], limits)
    durations = [c.end_in_seconds - c.start_in_seconds for c in vtt.captions]
    assert_readable([c.text.split("\n") for c in vtt.captions], durations, limits)
    assert " ".join(s.content.replace("\n", " ") for s in subs).split() == words  # every word, once, in order
    starts = [s.start.total_seconds() for s in subs]
    assert starts == sorted(starts) and all(a.end <= b.start for a, b in zip(subs, subs[1:], strict=False))
    print(f"5 min of digits: {len(words)} words in {len(subs)} cues")


def test_a_request_sets_its_own_cue_limits(digits_client: Any) -> None:
    audio = digits_file(40)
    limits = CueLimits(max_line_chars=20, max_lines=1, max_cue_s=3.0)
    extra = {"subtitle_max_line_chars": "20", "subtitle_max_lines": "1", "subtitle_max_cue_s": "3"}
    subs = list(srt.parse(post(digits_client, audio, "srt", **extra).text))
    default = list(srt.parse(post(digits_client, audio, "srt").text))
    assert len(subs) > len(default)
    assert_readable([s.content.split("\n") for s in subs], [(s.end - s.start).total_seconds() for s in subs], limits)


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [("subtitle_max_line_chars", "5", "from 10 to 200"), ("subtitle_max_lines", "x", "got 'x'"),
     ("subtitle_max_cue_s", "0", "from 0.5 to 60")],
)  # fmt: skip
def test_bad_cue_limits_are_400_naming_the_field(client: Any, field: str, value: str, words: str) -> None:
    r = client.post(
        "/v1/audio/transcriptions", files={"file": ("a.wav", b"RIFF")},
        data={"model": "whisper-1", "response_format": "srt", field: value},
    )  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == field and words in r.json()["error"]["message"]
