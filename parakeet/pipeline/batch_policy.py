"""The batching policy: its limits (from the settings), and which waiting items go into the next batch: the oldest
one (a priority one first) and its nearest neighbours in length, within the count and padded-audio caps. Less
padding than arrival order, and no item waits behind newer ones for ever (the oldest is always in the next batch).
Pure: no asyncio, no engine (the batcher that applies it: parakeet.pipeline.batching).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from parakeet.core.settings import Settings
from parakeet.core.tuning import Tuning


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
