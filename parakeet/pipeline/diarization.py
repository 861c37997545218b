"""Diarization batched across requests, on the worker's GPU thread.

Requests that asked for speakers wait here for the diarizer (after their transcript); whenever the GPU arbiter
(parakeet.pipeline.gpu) gives the diarizer a turn, the waiting files go in one padded batch: the oldest one and its
nearest neighbours in length (`nearest_in_length`, the ASR batcher's policy), within a count and a padded-audio cap.
A batch runs in pieces of at most that padded audio (`Diarizer.diarize_steps`), one per turn, so a long file's
speakers never hold the GPU thread for more than one offline batch's worth at a time. Like the stream scheduler,
the queue has at most one job in the arbiter at a time, so a batch is formed from what waited while the previous
one ran: no waiting clock, and one file alone runs at once. A batch the device cannot hold is split in halves and
retried; a failure fails only its batch; a file whose request left is dropped before the GPU. A file's speakers do
not depend on its batch-mates (`parakeet.engine.diarizer.SortformerDiarizer`). This module knows nothing of HTTP
or torch: the diarizer is `parakeet.core.engine.Diarizer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

from parakeet.core import metrics
from parakeet.core.engine import Diarizer, Waveform
from parakeet.core.errors import DeviceOutOfMemory
from parakeet.core.speakers import SpeakerSegment
from parakeet.pipeline.batch_policy import nearest_in_length
from parakeet.pipeline.gpu import GpuArbiter

log = logging.getLogger("parakeet.diarization")


@dataclass(eq=False)
class _File:
    waveform: Waveform
    future: asyncio.Future[list[SpeakerSegment]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass(frozen=True)
class DiarizationConfig:
    """Batch caps: `max_batch_size` files, `max_batch_audio_s` of padded audio (files x the longest; one file alone
    may pass it). Defaults: parakeet.core.tuning.Tuning and PARAKEET_MAX_BATCH_AUDIO_S."""

    max_batch_size: int
    max_batch_audio_s: float


class DiarizationQueue:
    """Files waiting for the diarizer, batched across requests. Create and `start()` on the event loop;
    `await diarize(waveform)` per request; `close()` at shutdown."""

    def __init__(self, diarizer: Diarizer, gpu: GpuArbiter, config: DiarizationConfig) -> None:
        self.diarizer, self.gpu, self.config = diarizer, gpu, config
        self._waiting: list[_File] = []
        self._running: list[_File] = []  # the batch on the GPU thread (or waiting for its turn there)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="diarization-queue")

    @property
    def waiting_files(self) -> int:
        """Files queued for a later batch (not the running one), their callers still waiting."""
        return sum(not f.future.done() for f in self._waiting)

    async def diarize(self, waveform: Waveform) -> list[SpeakerSegment]:
        """The speaker segments of one 16 kHz mono float32 waveform [T], T >= 1 (`Diarizer.diarize`).

        Raises:
            DeviceOutOfMemory: it does not fit on the device even alone. RuntimeError: the queue is closed.
            asyncio.CancelledError: the caller was cancelled (a file not yet in a batch is dropped).
        """
        if self._task is None or self._task.done():
            raise RuntimeError("the diarization queue is not running (start() not called, or closed)")
        item = _File(waveform)
        self._waiting.append(item)
        self._wake.set()
        try:
            return await asyncio.shield(item.future)
        except asyncio.CancelledError:
            item.future.cancel()
            raise

    def _next_batch(self) -> list[_File]:
        self._waiting = [f for f in self._waiting if not f.future.done()]
        if not self._waiting:
            return []
        lengths = [len(f.waveform) for f in self._waiting]
        cap = int(self.config.max_batch_audio_s * 16_000)
        chosen = nearest_in_length(lengths, 0, self.config.max_batch_size, cap)  # around the oldest
        batch = [self._waiting[i] for i in chosen]
        taken = set(chosen)
        self._waiting = [f for i, f in enumerate(self._waiting) if i not in taken]
        return batch

    async def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if not batch:
                self._wake.clear()
                await self._wake.wait()
                continue
            self._running = batch
            await self._run(batch)
            self._running = []

    async def _run(self, batch: list[_File]) -> None:
        """Run one batch; on DeviceOutOfMemory, its halves (down to one file, whose error is its own)."""
        t0 = time.perf_counter()
        steps = self.diarizer.diarize_steps([f.waveform for f in batch], self.config.max_batch_audio_s)
        try:
            results = None
            while results is None:  # one piece per turn of the GPU thread: streams and batches run in between
                if all(f.future.done() for f in batch):
                    return  # every caller left
                results = await self.gpu.run("batch", next, steps)
        except DeviceOutOfMemory as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
                return
            log.warning("diarization batch of %d did not fit on the device; splitting it", len(batch))
            half = len(batch) // 2
            await self._run(batch[:half])
            await self._run(batch[half:])
            return
        except Exception as exc:
            log.exception("diarization batch of %d failed", len(batch))
            self._fail(batch, exc)
            return
        metrics.DIARIZATION_BATCH_SIZE.observe(len(batch))
        metrics.DIARIZATION_COMPUTE.observe(time.perf_counter() - t0)
        for f, segments in zip(batch, results, strict=True):
            if not f.future.done():
                f.future.set_result(segments)

    @staticmethod
    def _fail(batch: list[_File], exc: BaseException) -> None:
        for f in batch:
            if not f.future.done():
                f.future.set_exception(exc)

    async def close(self) -> None:
        """Stop, and fail the files not yet diarized (the worker drains its requests before it closes this)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._fail(self._running + self._waiting, RuntimeError("the worker is shutting down"))
        self._running, self._waiting = [], []
