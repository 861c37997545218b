"""SRT and WebVTT subtitles people can read: cues of at most `max_lines` lines of `max_line_chars` characters and
`max_cue_s` seconds, cut at word boundaries from the word timestamps, and also at sentence ends.

The defaults, 2 lines x 42 characters and 7 s, are the common broadcast and streaming guidelines (e.g. Netflix's
timed-text style guide, https://partnerhelp.netflixstudios.com/hc/en-us/articles/217350977, and the BBC subtitle
guidelines, https://www.bbc.co.uk/accessibility/forproducts/guides/subtitles/). Lines are wrapped with the
standard library's `textwrap`. Formats: SRT as SubRip writes it, WebVTT per https://www.w3.org/TR/webvtt1/.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

from parakeet.core.transcripts import TimedSpan

SENTENCE_ENDS = (".", "!", "?")


@dataclass(frozen=True)
class CueLimits:
    max_line_chars: int = 42
    max_lines: int = 2
    max_cue_s: float = 7.0


@dataclass(frozen=True)
class Cue:
    """One subtitle: its span and lines; with speakers, the first line starts with `A: ` (counted in the line's
    length), which WebVTT writes as a voice span `<v A>`."""

    start_s: float
    end_s: float
    lines: tuple[str, ...]
    speaker: str | None = None


def _lines(words: Sequence[str], limits: CueLimits) -> list[str]:
    return textwrap.wrap(" ".join(words), width=limits.max_line_chars, break_long_words=False, break_on_hyphens=False)


def cues(words: Sequence[TimedSpan], limits: CueLimits, speakers: Sequence[str | None] | None = None) -> list[Cue]:
    """Cues from word timestamps (file time, seconds), in order. A cue ends at a sentence end, or before the word
    that would make it too long to show (more lines than `max_lines`) or to read (longer than `max_cue_s`). A single
    word longer than a line gets a cue of its own. With `speakers` (each word's label), a cue also ends where the
    speaker changes: a cue never mixes two speakers."""
    out: list[Cue] = []
    current: list[TimedSpan] = []
    labels = list(speakers) if speakers is not None else [None] * len(words)
    speaker: str | None = None

    def text_of(ws: Sequence[TimedSpan]) -> list[str]:
        return ([f"{speaker}:"] if speaker else []) + [w.text for w in ws]

    def flush() -> None:
        if current:
            out.append(Cue(current[0].start_s, current[-1].end_s, tuple(_lines(text_of(current), limits)), speaker))
            current.clear()

    for word, label in zip(words, labels, strict=True):
        if current and label != speaker:
            flush()
        speaker = label
        if current:
            lines = _lines(text_of([*current, word]), limits)
            too_big = len(lines) > limits.max_lines or any(len(line) > limits.max_line_chars for line in lines)
            too_long = word.end_s - current[0].start_s > limits.max_cue_s
            if too_big or too_long:
                flush()
        current.append(word)
        if word.text.endswith(SENTENCE_ENDS):
            flush()
    flush()
    return out


def fallback_cues(segments: Sequence[TimedSpan], limits: CueLimits) -> list[Cue]:
    """Without word timestamps: one cue per segment, wrapped (times cannot be split without words)."""
    return [Cue(s.start_s, s.end_s, tuple(_lines(s.text.split(), limits))) for s in segments if s.text]


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(items: Sequence[Cue]) -> str:
    return "".join(
        f"{i}\n{_clock(c.start_s, ',')} --> {_clock(c.end_s, ',')}\n" + "\n".join(c.lines) + "\n\n"
        for i, c in enumerate(items, 1)
    )


def to_vtt(items: Sequence[Cue]) -> str:
    """WebVTT; a speaker's cue opens with a voice span, `<v A>` (WebVTT section 4.2.2: it may stay unclosed when it
    covers the whole cue)."""
    return "WEBVTT\n\n" + "".join(
        f"{_clock(c.start_s, '.')} --> {_clock(c.end_s, '.')}\n" + "\n".join(_voiced(c)) + "\n\n" for c in items
    )


def _voiced(c: Cue) -> tuple[str, ...]:
    prefix = f"{c.speaker}: "
    if c.speaker is None or not c.lines or not c.lines[0].startswith(prefix):
        return c.lines
    return (f"<v {c.speaker}>{c.lines[0][len(prefix) :]}", *c.lines[1:])
