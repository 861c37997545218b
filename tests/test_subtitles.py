"""SRT/VTT cues people can read (parakeet/api/subtitles.py): at most 2 lines x 42 characters and 7 s, cut at word
boundaries. Oracles: the `srt` and `webvtt-py` parsers, the words of the same transcript."""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import soundfile as sf
import srt
import webvtt

from parakeet.api.subtitles import CueLimits, cues
from parakeet.core.transcripts import TimedSpan

import speech
from helpers import run, running_app

LIMITS = CueLimits()


def assert_readable(cue_lines: list[list[str]], durations: list[float]) -> None:
    for lines, duration in zip(cue_lines, durations, strict=True):
        assert 1 <= len(lines) <= LIMITS.max_lines, lines
        assert all(len(line) <= LIMITS.max_line_chars for line in lines), lines
        assert duration <= LIMITS.max_cue_s + 1e-6, (lines, duration)


def test_cues_respect_the_limits_and_cut_at_sentence_ends() -> None:
    rng = random.Random(1)
    words, t = [], 0.0
    for i in range(200):
        text = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(1, 12)))
        text += "." if i % 37 == 36 else ""
        words.append(TimedSpan(text, round(t, 3), round(t + 0.3, 3)))
        t += 0.35 + (1.0 if i % 50 == 49 else 0.0)
    words.append(TimedSpan("x" * 50, t, t + 0.5))  # longer than a line: a cue of its own
    out = cues(words, LIMITS)
    assert " ".join(" ".join(c.lines) for c in out) == " ".join(w.text for w in words)
    assert_readable([list(c.lines) for c in out[:-1]], [c.end_s - c.start_s for c in out[:-1]])
    assert out[-1].lines == ("x" * 50,)
    sentence_ends = [c for c in out if c.lines[-1].endswith(".")]
    assert len(sentence_ends) == 5  # every sentence end closes its cue


def five_minutes_of_digits() -> bytes:
    pool = [speech.random_utterance(8_000_000 + i).waveform for i in range(30)]
    rng = np.random.default_rng(2)
    parts, total = [], 0
    while total < 300 * 16000:
        w = pool[int(rng.integers(len(pool)))]
        gap = np.zeros(int(rng.uniform(0.1, 0.5) * 16000), np.float32)  # short pauses: no sentence punctuation
        parts += [w, gap]
        total += len(w) + len(gap)
    buf = io.BytesIO()
    sf.write(buf, np.concatenate(parts)[: 300 * 16000], 16000, format="FLAC")
    return buf.getvalue()


def test_subtitles_of_a_five_minute_file_parse_and_are_readable(digits_engine: Any) -> None:
    audio = five_minutes_of_digits()

    async def main() -> tuple[str, str, dict[str, Any]]:
        async with running_app(digits_engine, model="digits") as (_, client):

            def post(fmt: str, **extra: Any) -> Any:
                return client.post(
                    "/v1/audio/transcriptions", files={"file": ("a.flac", audio)},
                    data={"model": "whisper-1", "response_format": fmt, **extra},
                )  # fmt: skip

            srt_text = (await post("srt")).text
            vtt_text = (await post("vtt")).text
            verbose = (await post("verbose_json", **{"timestamp_granularities[]": "word"})).json()
            return srt_text, vtt_text, verbose

    srt_text, vtt_text, verbose = run(main())
    subs = list(srt.parse(srt_text))
    vtt = webvtt.from_buffer(io.StringIO(vtt_text))
    words = [w["word"] for w in verbose["words"]]
    assert len(words) > 300 and len(subs) == len(vtt.captions) > 40
    assert_readable([s.content.split("\n") for s in subs], [(s.end - s.start).total_seconds() for s in subs])
    assert_readable(
        [c.text.split("\n") for c in vtt.captions], [c.end_in_seconds - c.start_in_seconds for c in vtt.captions]
    )  # noqa: E501
    assert " ".join(s.content.replace("\n", " ") for s in subs).split() == words  # every word, once, in order
    starts = [s.start.total_seconds() for s in subs]
    assert starts == sorted(starts) and all(a.end <= b.start for a, b in zip(subs, subs[1:], strict=False))
    print(f"5 min of digits: {len(words)} words in {len(subs)} cues")
