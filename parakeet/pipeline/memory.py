"""The worker's audio memory budget (`max_inflight_audio_bytes`): what every admitted request holds, counted in bytes.

A request reserves its body's declared size before the body is read, then what it actually holds as it goes: the
bytes received, the waveform its decoder subprocess is producing (reserved before the samples exist: the length
is read from the file's header, or grows with the samples as they arrive), then the waveform alone. A reservation
that would pass the budget is refused with `MemoryBudgetFull` (429), so the budget bounds the audio held by the
worker and its decoders. This module counts; it allocates nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from parakeet.core import errors


class MemoryBudget:
    """Bytes of request audio held by one worker, against a limit.

    Args:
        limit_bytes: the budget (`PARAKEET_MAX_INFLIGHT_AUDIO_BYTES`).
        retry_after_s: seconds a refused client should wait (the batcher's estimate of the work ahead).
    """

    def __init__(self, limit_bytes: int, retry_after_s: Callable[[], int]) -> None:
        self.limit_bytes = limit_bytes
        self.held_bytes = 0
        self._retry_after_s = retry_after_s

    def reserve(self, nbytes: int, what: str) -> Reservation:
        """A new reservation of `nbytes`.

        Raises:
            MemoryBudgetFull: it would pass the budget (the message names `what`, the bytes and the budget).
        """
        reservation = Reservation(self)
        self.resize(reservation, nbytes, what)
        return reservation

    def resize(self, reservation: Reservation, nbytes: int, what: str | None = None) -> None:
        """Make `reservation` hold `nbytes` in all.

        Args:
            what: names the audio in a refusal; None: no check (shrinking, or replacing a reservation by one that
                is no larger).

        Raises:
            MemoryBudgetFull: `what` is given and growing to `nbytes` would pass the budget (nothing changes).
        """
        others = self.held_bytes - reservation.nbytes
        if what is not None and nbytes > reservation.nbytes and others + nbytes > self.limit_bytes:
            raise errors.MemoryBudgetFull(
                f"server busy: {what} is {nbytes} bytes, {others} bytes of other audio are held, the budget is "
                f"{self.limit_bytes} bytes (PARAKEET_MAX_INFLIGHT_AUDIO_BYTES)",
                retry_after_s=max(1, self._retry_after_s()),
            )
        self.held_bytes = others + nbytes
        reservation.nbytes = nbytes


@dataclass(eq=False)
class Reservation:
    """The bytes one request holds (see `MemoryBudget.resize`); `release` at the end (idempotent)."""

    budget: MemoryBudget
    nbytes: int = 0

    def grow_to(self, nbytes: int, what: str) -> None:
        """Hold `nbytes` in all.

        Raises:
            MemoryBudgetFull: that would pass the budget (the reservation is unchanged).
        """
        self.budget.resize(self, nbytes, what)

    def shrink_to(self, nbytes: int) -> None:
        """Hold `nbytes` in all, without a check."""
        self.budget.resize(self, nbytes)

    def release(self) -> None:
        self.budget.resize(self, 0)
