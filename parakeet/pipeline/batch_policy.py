"""The batching policy: its limits (from the settings), and which waiting items go into the next batch: the oldest
one (a priority one first) and its nearest neighbours in length, within the count and padded-audio caps. Less
padding than arrival order, and no item waits behind newer ones for ever (the oldest is always in the next batch).
Pure: no asyncio, no engine (the batcher that applies it: parakeet.pipeline.batching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from parakeet.core.keywords import KeyPhrases
from parakeet.core.settings import Settings
from parakeet.core.tuning import Tuning

Lane = Literal["live", "final", "background"]


@dataclass(frozen=True)
class ItemOptions:
    """What one waveform in the batcher asks of the engine (`Engine.transcribe`), and its lane.

    Attributes:
        timestamps: word/segment/char timestamps (they cost the GPU thread Python time).
        confidence: word/token confidence and token log-probabilities (implies timestamps: they sit on the words).
        keywords: phrases to boost in its decoding (custom vocabulary); None: none.
        lane: "live", a request a client waits for; "final", a live stream's utterance (the next batch forms
            around the oldest one, ahead of older live items: a speaker is waiting); "background", a stored job's
            audio (batches form around the oldest item that is not: a live request waits behind at most the
            batch already running, and background items fill batches' room).
    """

    timestamps: bool = True
    confidence: bool = False
    keywords: KeyPhrases | None = None
    lane: Lane = "live"


@dataclass(frozen=True)
class BatcherConfig:
    """Limits (README "Settings"; built from them by `from_settings`). `max_batch_size=1` is the original
    one-request-at-a-time design. `max_batch_audio_s` is padded audio: batch size x longest item."""

    max_batch_size: int
    max_batch_audio_s: float
    max_wait_ms: float
    max_queue_requests: int
    max_queue_audio_s: float
    request_timeout_s: float

    @classmethod
    def from_settings(cls, settings: Settings, tuning: Tuning) -> BatcherConfig:
        """The batching limits of `settings` (PARAKEET_MAX_BATCH_SIZE ... PARAKEET_MAX_QUEUE_REQUESTS); the queue's
        audio limit is `tuning.queue_audio_batches` full batches, its deadline `tuning.request_timeout_s`."""
        return cls(
            max_batch_size=settings.max_batch_size,
            max_batch_audio_s=settings.max_batch_audio_s,
            max_wait_ms=settings.max_wait_ms,
            max_queue_requests=settings.max_queue_requests,
            max_queue_audio_s=tuning.queue_audio_batches * settings.max_batch_audio_s,
            request_timeout_s=tuning.request_timeout_s,
        )


def nearest_in_length(lengths: Sequence[int], anchor: int, max_items: int, max_padded: int) -> list[int]:
    """Indices of the batch around `anchor`.

    Args:
        lengths: the waiting items' lengths, samples.
        anchor: the index of the item the batch forms around (it is always in it).
        max_items: at most this many items.
        max_padded: at most this much padded audio (items x the longest), samples; the anchor alone may pass it.

    Returns:
        Indices into `lengths`, shortest first: the anchor plus, one at a time, whichever neighbour in length is
        closer to it (ties go to the shorter), while both caps hold.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    pos = order.index(anchor)
    lo, hi = pos, pos + 1  # the batch is order[lo:hi]
    ref = lengths[anchor]
    while hi - lo < max_items:
        left = lengths[order[lo - 1]] if lo > 0 else None
        right = lengths[order[hi]] if hi < len(order) else None
        if left is None and right is None:
            break
        take_left = right is None or (left is not None and ref - left <= right - ref)
        new_lo, new_hi = (lo - 1, hi) if take_left else (lo, hi + 1)
        if (new_hi - new_lo) * lengths[order[new_hi - 1]] > max_padded:
            break
        lo, hi = new_lo, new_hi
    return order[lo:hi]
