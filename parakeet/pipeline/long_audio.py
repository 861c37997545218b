"""Long audio: split a waveform at quiet points into chunks with acoustic context on both sides, and merge
the chunks' transcripts by their timestamps.

Full attention is O(T^2) in encoder frames (docs/nemo.md: ~10 GB per layer of scores at 24 min), so past
`long_audio_threshold_s` the server never runs the encoder over the whole file. Each cut is placed at the
quietest `QUIET_WINDOW_S` within `search_s` before the target length, so no word is cut in two; each chunk
also hears `context_s` of audio beyond its cuts, and only the words whose centre lies between its own cuts
are kept, so words in the overlaps are neither lost nor doubled. Pure numpy: no torch, no HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from parakeet.core.engine import SAMPLE_RATE_HZ
from parakeet.core.transcripts import TimedSpan, Transcript

QUIET_WINDOW_S = 0.1


@dataclass(frozen=True)
class Chunk:
    """Samples [start, end) of the file go to the model; words centred in [keep_start_s, keep_end_s) are kept.
    All in the file's own time base."""

    start: int
    end: int
    keep_start_s: float
    keep_end_s: float

    @property
    def offset_s(self) -> float:
        return self.start / SAMPLE_RATE_HZ


def plan_chunks(waveform: npt.NDArray[np.float32], chunk_s: float, context_s: float, search_s: float) -> list[Chunk]:
    """Cut points at quiet places about every `chunk_s` seconds.

    Args:
        waveform: float32 mono 16 kHz, shape [T].
        chunk_s: longest stretch between two cuts, seconds (> search_s).
        context_s: audio added on each side of a chunk beyond its cuts, seconds.
        search_s: how far before each target the quietest point is searched for, seconds.

    Returns:
        Chunks covering the file; one chunk (the whole file, nothing cut) if it is not longer than chunk_s.

    Raises:
        ValueError: `search_s` is not less than `chunk_s` (settings validation refuses that at start-up).
    """
    if not 0 < search_s < chunk_s:
        raise ValueError(f"search_s ({search_s:g}) must be positive and less than chunk_s ({chunk_s:g})")
    n = len(waveform)
    chunk, search, context = (int(x * SAMPLE_RATE_HZ) for x in (chunk_s, search_s, context_s))
    window = int(QUIET_WINDOW_S * SAMPLE_RATE_HZ)
    cuts = [0]
    while n - cuts[-1] > chunk:
        lo, hi = cuts[-1] + chunk - search, cuts[-1] + chunk
        # Energy of each `window`-long stretch in [lo, hi): the cut goes in the middle of the quietest one.
        power = np.convolve(waveform[lo:hi].astype(np.float64) ** 2, np.ones(window), mode="valid")
        cuts.append(lo + int(np.argmin(power)) + window // 2)
    cuts.append(n)
    return [
        Chunk(
            start=max(0, a - context),
            end=min(n, b + context),
            keep_start_s=a / SAMPLE_RATE_HZ if i > 0 else float("-inf"),
            keep_end_s=b / SAMPLE_RATE_HZ if i < len(cuts) - 2 else float("inf"),
        )
        for i, (a, b) in enumerate(zip(cuts[:-1], cuts[1:], strict=True))
    ]


def kept_spans(spans: Sequence[TimedSpan], chunk: Chunk) -> list[TimedSpan]:
    """The spans (words, segments, characters) a chunk keeps, shifted to file time: those whose centre lies
    between its cuts."""
    out = []
    for span in spans:
        shifted = span.shifted(chunk.offset_s)
        centre = (shifted.start_s + shifted.end_s) / 2
        if chunk.keep_start_s <= centre < chunk.keep_end_s:
            out.append(shifted)
    return out


def merge_transcripts(chunks: Sequence[Chunk], transcripts: Sequence[Transcript]) -> Transcript:
    """One transcript for the file: each chunk's words, segments and characters shifted to file time and
    kept where their centre lies between the chunk's cuts; text is the kept words joined by spaces."""
    if len(chunks) == 1:
        return transcripts[0]
    words, segments, chars = [], [], []
    for chunk, t in zip(chunks, transcripts, strict=True):
        words += kept_spans(t.words, chunk)
        segments += kept_spans(t.segments, chunk)
        chars += kept_spans(t.chars, chunk)
    return Transcript(
        text=" ".join(w.text for w in words),
        num_tokens=len(chars),
        encoder_frames=sum(t.encoder_frames for t in transcripts),
        words=tuple(words),
        segments=tuple(segments),
        chars=tuple(chars),
    )
