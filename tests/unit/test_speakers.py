"""parakeet/core/speakers.py: each word's speaker (longest overlap, the nearest segment in a gap), labels A, B, ... in
order of first appearance, turns that never mix speakers and lose no word, speaking time per speaker."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from parakeet.core.speakers import SpeakerSegment, speaker_labels, speaker_turns, speaking_time, word_speakers
from parakeet.core.transcripts import TimedSpan


def w(start: float, end: float, text: str = "x") -> TimedSpan:
    return TimedSpan(text, start, end)


def test_word_speakers_longest_overlap_then_nearest_segment() -> None:
    segments = [SpeakerSegment(0.0, 1.0, 0), SpeakerSegment(0.8, 2.0, 1), SpeakerSegment(3.0, 4.0, 2)]
    words = [
        w(0.1, 0.5),  # inside speaker 0 only
        w(0.7, 1.0),  # 0.3 s of speaker 0, 0.2 s of speaker 1
        w(0.9, 1.6),  # 0.1 s of 0, 0.7 s of 1
        w(2.2, 2.4),  # a gap: 0.2 s from speaker 1's end, 0.6 s from speaker 2's start
        w(2.8, 2.9),  # a gap, nearer speaker 2
        w(5.0, 5.0),  # zero length after the last segment
    ]
    assert word_speakers(words, segments) == [0, 0, 1, 1, 2, 2]
    tie = [SpeakerSegment(0.0, 1.0, 3), SpeakerSegment(0.0, 1.0, 1)]
    assert word_speakers([w(0.2, 0.4), w(1.5, 1.6)], tie) == [1, 1]  # equal overlap or distance: the lower index
    assert word_speakers(words[:2], []) == [None, None]


def all_pairs(words: list[TimedSpan], segments: list[SpeakerSegment]) -> list[int | None]:
    """The definition, every word against every segment (the oracle for the sweep in `word_speakers`)."""
    out: list[int | None] = []
    for x in words:
        overlap: dict[int, float] = {}
        for s in segments:
            o = min(x.end_s, s.end_s) - max(x.start_s, s.start_s)
            if o > 0:
                overlap[s.speaker] = overlap.get(s.speaker, 0.0) + o
        if overlap:
            out.append(max(sorted(overlap), key=lambda k: overlap[k]))
        elif segments:
            out.append(
                min(segments, key=lambda s: (max(s.start_s - x.end_s, x.start_s - s.end_s, 0.0), s.speaker)).speaker
            )
        else:
            out.append(None)
    return out


times = st.integers(0, 40).map(lambda k: k / 4)  # a coarse grid: many ties, touching and zero-length spans


@given(
    st.lists(st.tuples(times, times).map(sorted), max_size=30),
    st.lists(st.tuples(times, times, st.integers(0, 3)), max_size=12),
)
def test_word_speakers_equals_the_all_pairs_definition(word_spans: list[list[float]], raw: list[Any]) -> None:
    words = [w(a, b) for a, b in sorted(word_spans)]
    segments = [SpeakerSegment(min(a, b), max(a, b), k) for a, b, k in raw if a != b]
    assert word_speakers(words, segments) == all_pairs(words, segments)


@given(st.lists(st.one_of(st.none(), st.integers(0, 40)), max_size=60))
def test_speaker_labels_in_order_of_first_appearance(indices: list[int | None]) -> None:
    labels = speaker_labels(indices)
    firsts = list(dict.fromkeys(k for k in indices if k is not None))
    names = {k: labels[indices.index(k)] for k in firsts}
    assert [names[k] for k in firsts] == [chr(65 + i) if i < 26 else f"S{i + 1}" for i in range(len(firsts))]
    assert all(
        (k is None) == (lab is None) and (k is None or names[k] == lab) for k, lab in zip(indices, labels, strict=True)
    )


@given(st.lists(st.one_of(st.none(), st.sampled_from("ABC")), max_size=40))
def test_speaker_turns_keep_every_word_and_never_mix_speakers(labels: list[str | None]) -> None:
    words = [w(i * 0.5, i * 0.5 + 0.3, f"w{i}") for i in range(len(labels))]
    turns = speaker_turns(words, labels)
    assert [x for t in turns for x in t.words] == words
    assert all(a.speaker != b.speaker for a, b in zip(turns, turns[1:], strict=False))
    for t in turns:
        assert t.start_s == t.words[0].start_s and t.end_s == t.words[-1].end_s
        assert t.text == " ".join(x.text for x in t.words)
    i = 0
    for t in turns:  # a labelled word is in a turn of its label
        for _ in t.words:
            assert labels[i] is None or labels[i] == t.speaker
            i += 1
    total = speaking_time(turns)
    assert list(total) == list(dict.fromkeys(t.speaker for t in turns))
    assert abs(sum(total.values()) - sum(t.end_s - t.start_s for t in turns)) < 1e-9
