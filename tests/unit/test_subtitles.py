"""SRT/VTT cues people can read (parakeet/api/subtitles.py): at most 2 lines x 42 characters and 7 s, cut at word
boundaries. Oracles: the `srt` and `webvtt-py` parsers, the words of the same transcript."""

from __future__ import annotations

import random

from parakeet.api.subtitles import CueLimits, cues
from parakeet.core.transcripts import TimedSpan

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
