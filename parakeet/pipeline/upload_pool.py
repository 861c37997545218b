"""The upload pool: places for request bodies being received at once, apart from the GPU queue (slow uploads wait
here, cut off by the body limits, and cannot take the queue's places). README "How it works": one request
lifecycle."""

from __future__ import annotations

from collections.abc import Callable

from parakeet.core import errors


class UploadPool:
    """The places for request bodies being received at once, refused with `UploadsFull` when all are taken.

    Args:
        limit: places.
        retry_after_s: seconds a refused client should wait.
        source: how the limit is set, for the refusal's message.
    """

    def __init__(self, limit: int, retry_after_s: Callable[[], int], source: str) -> None:
        self.limit, self.taken, self.source = limit, 0, source
        self._retry_after_s = retry_after_s

    def take(self) -> Callable[[], None]:
        """A place; call the returned function to give it back (once; later calls do nothing).

        Raises:
            UploadsFull: `limit` places are taken (429 with Retry-After).
        """
        if self.taken >= self.limit:
            raise errors.UploadsFull(
                f"server busy: {self.taken} uploads in progress, the limit is {self.limit} ({self.source})",
                retry_after_s=max(1, self._retry_after_s()),
            )
        self.taken += 1
        held = True

        def give_back() -> None:
            nonlocal held
            if held:
                held = False
                self.taken -= 1

        return give_back
